# Dequantise GGUF and packaged models once into resources/models/{model}/.


MODEL_RULES.add("prepare_model")  # reads the model's source, and no lens setting


rule prepare_model:
    input:
        get_gguf_input,
    # update(): a prepared model is kept until the new one is complete, and put back if the
    # job fails (Snakemake copies it aside while the job runs).
    output:
        update(directory("resources/models/{model}")),
    log:
        "logs/models/prepare_model-{model}.log",
    conda:
        CONDA_ENV
    benchmark:
        "benchmarks/models/prepare_model-{model}.tsv"
    threads: MODEL_THREADS
    resources:
        mem_mb=prepare_resource("mem_mb"),
        runtime=prepare_resource("runtime"),
    params:
        entry=get_model_source,
        source=get_source_fingerprint,
        code=code_version("scripts/prepare_model.py"),
    script:
        "../scripts/prepare_model.py"
