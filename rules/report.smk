# Evaluations of every experiment as HTML pages, each experiment's explorer page per model, and what `snakemake --report report.html` shows.
#
# Results are grouped by category: START_CATEGORY first (experiment 001's answer by layer),
# one per model (its heatmaps and its evaluation), "Cross-model" and "Method". Captions are
# in workflow/report/; the overview, the report's first screen, is workflow/report/workflow.rst.


rule evaluation_page:
    input:
        unpack(get_page_inputs),
    output:
        page=update(report(
            "results/{exp}/html/evaluation-{name}.html",
            caption="../workflow/report/evaluation.rst",
            category=page_category,
            subcategory="Evaluation",
            labels={"experiment": "{exp}", "document": "evaluation-{name}"},
        )),
        provenance=update("results/{exp}/provenance/page-{name}.prov.json"),
    log:
        "logs/{exp}/evaluation_page-{name}.log",
    conda:
        CONDA_ENV
    wildcard_constraints:
        name=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    params:
        code=code_version("scripts/evaluation_page.py"),
    localrule: True
    script:
        "../scripts/evaluation_page.py"


rule explorer:
    input:
        unpack(get_explorer_inputs),
    output:
        page=update(report(
            "results/{exp}/html/explorer-{model}.html",
            caption="../workflow/report/explorer.rst",
            category="{model}",
            subcategory="Explorer",
            labels={"experiment": "{exp}", "page": "explorer"},
        )),
        provenance=update("results/{exp}/provenance/explorer-{model}.prov.json"),
    log:
        "logs/{exp}/explorer-{model}.log",
    conda:
        CONDA_ENV
    params:
        probes=lambda wildcards: experiment_rules(wildcards.exp).explorer_probes,
        # The experiment's own page (its Experiment.explorer) is code the script runs that no import names.
        code=evaluation_code("scripts/explorer.py"),
        code_also=experiment_package,
    localrule: True
    script:
        "../scripts/explorer.py"
