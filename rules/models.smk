# Dequantise GGUF and packaged models once into resources/models/{model}/.


rule prepare_model:
    input:
        get_gguf_input,
    output:
        directory("resources/models/{model}"),
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
        code=code_version("scripts/prepare_model.py"),
    script:
        "../scripts/prepare_model.py"
