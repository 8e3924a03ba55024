# Dequantise GGUF and packaged models once into resources/models/{model}/.


rule prepare_model:
    input:
        get_gguf_input,
    output:
        directory("resources/models/{model}"),
    log:
        "logs/models/prepare_model-{model}.log",
    benchmark:
        "benchmarks/models/prepare_model-{model}.tsv"
    # Snakemake sets OMP_NUM_THREADS (and MKL's) to a job's threads, 1 by default: torch
    # would then compute on one core. These jobs take every core they are given.
    threads: max(1, workflow.cores or 1)
    resources:
        mem_mb=prepare_resource("mem_mb"),
        runtime=prepare_resource("runtime"),
    params:
        entry=get_model,
        code=code_version("prepare"),
    script:
        "../scripts/prepare_model.py"
