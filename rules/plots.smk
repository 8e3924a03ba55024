# Pictures: the logit-lens heatmap per model and probe, and cross-model trajectories.
# update(): the previous pictures stay until new ones are drawn, and come back if drawing fails.


rule plot_heatmaps:
    input:
        records=unchanged_since_made(f"{EXPERIMENT}/output-{{model}}-records.csv"),
        summary=unchanged_since_made(f"{EXPERIMENT}/output-{{model}}.json"),
    output:
        heatmaps=[
            update(report(
                f"{EXPERIMENT}/plots/{{model}}/heatmap-{probe}.png",
                caption="../workflow/report/heatmap.rst",
                category="{model}",
                subcategory="Heatmaps",
                labels={"probe": probe},
            ))
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
        update(report(
            f"{EXPERIMENT}/plots/cross-model-trajectories.png",
            caption="../workflow/report/trajectories.rst",
            category="Cross-model",
            subcategory="Figures",
            labels={"figure": "trajectories by relative depth"},
        )),
    log:
        "logs/001/plot_cross.log",
    conda:
        CONDA_ENV
    params:
        code=code_version("scripts/plot_cross.py"),
    localrule: True
    script:
        "../scripts/plot_cross.py"
