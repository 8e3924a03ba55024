# Pictures: the logit-lens heatmap per model and probe, and cross-model trajectories.


rule plot_heatmaps:
    input:
        records=f"{EXPERIMENT}/output-{{model}}-records.csv",
    output:
        heatmaps=[
            report(
                f"{EXPERIMENT}/plots/{{model}}/heatmap-{probe}.png",
                caption="../workflow/report/heatmap.rst",
                category="{model}",
                subcategory="Heatmaps",
                labels={"probe": probe},
            )
            for probe in PROBE_IDS
        ],
    log:
        "logs/001/plot_heatmaps-{model}.log",
    conda:
        CONDA_ENV
    params:
        probes=PROBE_IDS,
        code=code_version("scripts/plot_heatmaps.py"),
    localrule: True
    script:
        "../scripts/plot_heatmaps.py"


rule plot_cross:
    input:
        unpack(get_model_outputs),
    output:
        report(
            f"{EXPERIMENT}/plots/cross-model-trajectories.png",
            caption="../workflow/report/trajectories.rst",
            category="Cross-model",
            subcategory="Figures",
            labels={"figure": "trajectories by relative depth"},
        ),
    log:
        "logs/001/plot_cross.log",
    conda:
        CONDA_ENV
    params:
        code=code_version("scripts/plot_cross.py"),
    localrule: True
    script:
        "../scripts/plot_cross.py"
