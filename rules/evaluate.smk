# Evaluations of every experiment: per model, across models, and a critique of the method.
# Generic: {exp} is the experiment (results/{exp}/), and what its evaluations read is what
# its rules file registered (rules/common.smk, register_experiment).
#
# Outputs are update(): a committed evaluation is kept until the new one is written, and
# put back if the job fails (an API that is down, say), instead of being deleted first.


rule evaluate_model:
    input:
        unpack(evaluation_inputs("single-model")),
    output:
        evaluation=update("results/{exp}/evaluation-{model}.md"),
        provenance=update("results/{exp}/provenance/evaluation-{model}.prov.json"),
    log:
        "logs/{exp}/evaluate_model-{model}.log",
    conda:
        CONDA_ENV
    params:
        evaluation=stage_settings(config["evaluation"], "single-model"),
        model_inputs=model_input_names,
        code=evaluation_code("scripts/evaluate_model.py"),
        code_also=experiment_package,
    localrule: True
    script:
        "../scripts/evaluate_model.py"


rule evaluate_cross:
    input:
        unpack(evaluation_inputs("cross-model")),
    output:
        evaluation=update("results/{exp}/evaluation-cross-model.md"),
        provenance=update("results/{exp}/provenance/evaluation-cross-model.prov.json"),
    log:
        "logs/{exp}/evaluate_cross.log",
    conda:
        CONDA_ENV
    params:
        evaluation=stage_settings(config["evaluation"], "cross-model"),
        model_inputs=model_input_names,
        code=evaluation_code("scripts/evaluate_cross.py"),
        code_also=experiment_package,
    localrule: True
    script:
        "../scripts/evaluate_cross.py"


rule evaluate_meta:
    input:
        unpack(evaluation_inputs("meta")),
    output:
        evaluation=update("results/{exp}/evaluation-meta.md"),
        provenance=update("results/{exp}/provenance/evaluation-meta.prov.json"),
    log:
        "logs/{exp}/evaluate_meta.log",
    conda:
        CONDA_ENV
    params:
        evaluation=stage_settings(config["evaluation"], "meta"),
        model_inputs=model_input_names,
        code=evaluation_code("scripts/evaluate_meta.py"),
        code_also=experiment_package,
    localrule: True
    script:
        "../scripts/evaluate_meta.py"
