# Evaluations: per model, across models, and a critique of the method.
#
# Outputs are update(): a committed evaluation is kept until the new one is written, and
# put back if the job fails (an API that is down, say), instead of being deleted first.


rule evaluate_model:
    input:
        summary=unchanged_since_made(f"{EXPERIMENT}/output-{{model}}.json"),
        records=unchanged_since_made(f"{EXPERIMENT}/output-{{model}}-records.csv"),
        heatmaps=expand(f"{EXPERIMENT}/plots/{{{{model}}}}/heatmap-{{probe}}.png", probe=PROBE_IDS),
        template=checked_template("single-model", "prompts/single-model-evaluation.md"),
    output:
        evaluation=update(f"{EXPERIMENT}/evaluation-{{model}}.md"),
        provenance=update(f"{EXPERIMENT}/provenance/evaluation-{{model}}.prov.json"),
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
        template=checked_template("cross-model", "prompts/cross-model-evaluation.md"),
    output:
        evaluation=update(f"{EXPERIMENT}/evaluation-cross-model.md"),
        provenance=update(f"{EXPERIMENT}/provenance/evaluation-cross-model.prov.json"),
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
        template=checked_template("meta", "prompts/meta-evaluation.md"),
    output:
        evaluation=update(f"{EXPERIMENT}/evaluation-meta.md"),
        provenance=update(f"{EXPERIMENT}/provenance/evaluation-meta.prov.json"),
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
