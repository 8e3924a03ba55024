# The tuned lens: trained once per model on the shipped corpus, then applied by run_lens
# (when config lenses includes tuned) and judged on held-out text.


rule train_tuned_lens:
    input:
        unpack(get_lens_model_input),
        corpus=CORPUS,
    # update(): a trained lens is kept until the new one is complete, and put back if the
    # job fails.
    output:
        update(directory("resources/lenses/{model}")),
    log:
        "logs/lenses/train_tuned_lens-{model}.log",
    conda:
        CONDA_ENV
    benchmark:
        "benchmarks/lenses/train_tuned_lens-{model}.tsv"
    threads: MODEL_THREADS
    resources:
        mem_mb=lens_resource("mem_mb"),
        runtime=lens_resource("runtime"),
        gpu=lens_resource("gpu"),
    params:
        entry=get_model_settings,
        device=config["device"],
        dtype=config["dtype"],
        backend=config["backend"],
        lens=get_lens_settings,
        settings=config["tuned_lens"],
        code=code_version("scripts/train_tuned_lens.py"),
    script:
        "../scripts/train_tuned_lens.py"


rule lens_quality:
    input:
        lens="resources/lenses/{model}",
    output:
        csv=update(f"{EXPERIMENT}/lens-quality-{{model}}.csv"),
        plot=report(
            f"{EXPERIMENT}/plots/{{model}}/lens-quality.png",
            caption="../workflow/report/lens-quality.rst",
            category="{model}",
            subcategory="Lens quality",
            labels={"figure": "held-out KL and top-1 agreement"},
        ),
        provenance=update(f"{EXPERIMENT}/provenance/lens-quality-{{model}}.prov.json"),
    log:
        "logs/001/lens_quality-{model}.log",
    conda:
        CONDA_ENV
    params:
        code=code_version("scripts/lens_quality.py"),
    localrule: True
    script:
        "../scripts/lens_quality.py"
