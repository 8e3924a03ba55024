# The tuned lens: trained once per model on the shipped corpus, then applied by
# experiment 001's run_lens (when config lenses includes tuned) and judged on held-out
# text (its rule lens_quality, rules/exp001.smk).


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
        **model_resources("train_tuned_lens"),
    params:
        **MODEL_PARAMS,
        lens=loads_model("train_tuned_lens", ("use_fp32_unembed", "working_memory_mb")),
        settings=config["tuned_lens"],
        code=code_version("scripts/train_tuned_lens.py"),
    script:
        "../scripts/train_tuned_lens.py"
