# Evaluations: per model, across models, and a critique of the method.


rule evaluate_model:
    input:
        summary=f"{EXPERIMENT}/output-{{model}}.json",
        records=f"{EXPERIMENT}/output-{{model}}-records.csv",
        heatmaps=expand(f"{EXPERIMENT}/plots/{{{{model}}}}/heatmap-{{probe}}.png", probe=PROBE_IDS),
        template="prompts/single-model-evaluation.md",
    output:
        evaluation=f"{EXPERIMENT}/evaluation-{{model}}.md",
        provenance=f"{EXPERIMENT}/provenance/evaluation-{{model}}.prov.json",
    log:
        "logs/001/evaluate_model-{model}.log",
    conda:
        CONDA_ENV
    params:
        evaluation=stage_settings(config["evaluation"], "single-model"),
        code=code_version("scripts/evaluate_model.py"),
    localrule: True
    script:
        "../scripts/evaluate_model.py"


rule evaluate_cross:
    input:
        unpack(get_model_outputs),
        evaluations=expand(f"{EXPERIMENT}/evaluation-{{model}}.md", model=MODELS),
        trajectories=f"{EXPERIMENT}/plots/cross-model-trajectories.png",
        template="prompts/cross-model-evaluation.md",
    output:
        evaluation=f"{EXPERIMENT}/evaluation-cross-model.md",
        provenance=f"{EXPERIMENT}/provenance/evaluation-cross-model.prov.json",
    log:
        "logs/001/evaluate_cross.log",
    conda:
        CONDA_ENV
    params:
        evaluation=stage_settings(config["evaluation"], "cross-model"),
        code=code_version("scripts/evaluate_cross.py"),
    localrule: True
    script:
        "../scripts/evaluate_cross.py"


rule evaluate_meta:
    input:
        unpack(get_model_outputs),
        cross=f"{EXPERIMENT}/evaluation-cross-model.md",
        template="prompts/meta-evaluation.md",
    output:
        evaluation=f"{EXPERIMENT}/evaluation-meta.md",
        provenance=f"{EXPERIMENT}/provenance/evaluation-meta.prov.json",
    log:
        "logs/001/evaluate_meta.log",
    conda:
        CONDA_ENV
    params:
        evaluation=stage_settings(config["evaluation"], "meta"),
        code=code_version("scripts/evaluate_meta.py"),
    localrule: True
    script:
        "../scripts/evaluate_meta.py"
