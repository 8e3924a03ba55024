# Pictures: the logit-lens heatmap per model and probe, and cross-model trajectories.


rule plot_heatmaps:
    input:
        records=f"{EXPERIMENT}/output-{{model}}-records.csv",
    output:
        heatmaps=expand(f"{EXPERIMENT}/plots/{{{{model}}}}/heatmap-{{probe}}.png", probe=PROBE_IDS),
    log:
        "logs/001/plot_heatmaps-{model}.log",
    params:
        probes=PROBE_IDS,
        code=code_version("plots"),
    script:
        "../scripts/plot_heatmaps.py"


rule plot_cross:
    input:
        unpack(get_model_outputs),
    output:
        f"{EXPERIMENT}/plots/cross-model-trajectories.png",
    log:
        "logs/001/plot_cross.log",
    params:
        code=code_version("plots"),
    script:
        "../scripts/plot_cross.py"
