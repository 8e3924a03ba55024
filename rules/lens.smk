# Experiment 001: the normalised logit lens at every layer of every model.


rule run_lens:
    input:
        unpack(get_run_lens_input),
    # update(): Snakemake keeps the previous outputs until the job succeeds and puts them
    # back if it fails (README, "When a job fails"), instead of deleting them first.
    output:
        summary=update(f"{EXPERIMENT}/output-{{model}}.json"),
        records=update(f"{EXPERIMENT}/output-{{model}}-records.csv"),
        provenance=update(f"{EXPERIMENT}/provenance/output-{{model}}.prov.json"),
    log:
        "logs/001/run_lens-{model}.log",
    conda:
        CONDA_ENV
    benchmark:
        "benchmarks/001/run_lens-{model}.tsv"
    threads: MODEL_THREADS
    resources:
        # From the parameter count and dtype (workflow/resources.py); models.{model}.resources overrides.
        mem_mb=lens_resource("mem_mb"),
        runtime=lens_resource("runtime"),
        gpu=lens_resource("gpu"),
    params:
        entry=get_model_settings,
        device=config["device"],
        dtype=config["dtype"],
        backend=config["backend"],
        lens=get_lens_settings,
        probes=config["probes"],
        lenses=LENSES,
        code=code_version("scripts/run_lens.py"),
    script:
        "../scripts/run_lens.py"
