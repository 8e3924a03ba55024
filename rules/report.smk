# Evaluations as HTML pages, and what `snakemake --report report.html` shows.
#
# Results are grouped by category: one per model (its heatmaps and its evaluation),
# "Cross-model" and "Method". Captions are in workflow/report/.


def get_page_inputs(wildcards):
    """The evaluation and the figures it links (embedded into the page)."""
    name = wildcards.name
    if name in MODELS:
        figures = expand(f"{EXPERIMENT}/plots/{name}/heatmap-{{probe}}.png", probe=PROBE_IDS)
    elif name == "cross-model":
        figures = [f"{EXPERIMENT}/plots/cross-model-trajectories.png"]
    elif name == "meta":
        figures = []
    else:
        raise WorkflowError(
            f"no evaluation named {name!r}: pages exist for the models in {CONFIGFILE} "
            f"({', '.join(MODELS)}), 'cross-model' and 'meta'"
        )
    return {"evaluation": f"{EXPERIMENT}/evaluation-{name}.md", "figures": figures}


def page_category(wildcards):
    return {"cross-model": "Cross-model", "meta": "Method"}.get(wildcards.name, wildcards.name)


rule evaluation_page:
    input:
        unpack(get_page_inputs),
    output:
        report(
            f"{EXPERIMENT}/html/evaluation-{{name}}.html",
            caption="../workflow/report/evaluation.rst",
            category=page_category,
            subcategory="Evaluation",
            labels={"document": "evaluation-{name}"},
        ),
    log:
        "logs/001/evaluation_page-{name}.log",
    wildcard_constraints:
        name=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    params:
        code=code_version("pages"),
    localrule: True
    script:
        "../scripts/evaluation_page.py"
