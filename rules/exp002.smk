# Experiment 002, activation patching: every pair of config patching.pairs patched at every
# layer x position of every model, its pictures, and what its evaluations read
# (register_experiment): its own outputs and experiment 001's for the same model.
from workflow.lens.pairs import check_pairs, derive_pairs

E002 = "results/002"
MODELS_002 = models_of("002")  # the models that run it (models.{model}.experiments)
# The config's pairs, and patching.from_probes pairs made from the probe set (each probe
# against another of its relation: docs/experiments.md, "Probe sets").
# Each is linked to its probe of experiment 001 (its `probe:`, which must be in the probe set,
# or the probe with its clean prompt and answer).
PAIRS = _user_errors(
    check_pairs, config["patching"]["pairs"] + derive_pairs(PROBES, config["patching"]["from_probes"]), PROBES, CONFIGFILE
)
PAIR_IDS = [p["id"] for p in PAIRS]

register_experiment(
    "002",
    model_inputs=lambda model: {
        "summary": f"{E002}/output-{model}.json",
        "records": f"{E002}/output-{model}-records.csv",
        # Where experiment 001's lens reads the answer, beside where patching restores it.
        "lens_summary": f"results/001/output-{model}.json",
    },
    model_figures=lambda model: expand(f"{E002}/plots/{model}/patching-{{pair}}.png", pair=PAIR_IDS),
    cross_figures=[f"{E002}/plots/cross-model-patching.png"],
    # With no pairs configured, `snakemake` leaves experiment 002 out.
    default=bool(PAIRS),
    artefacts=[
        *expand(f"{E002}/output-{{model}}.json", model=MODELS_002),
        *expand(f"{E002}/output-{{model}}-records.csv", model=MODELS_002),
        *expand(f"{E002}/provenance/output-{{model}}.prov.json", model=MODELS_002),
        *expand(f"{E002}/plots/{{model}}/patching-{{pair}}.png", model=MODELS_002, pair=PAIR_IDS),
        *expand(f"{E002}/provenance/patching-plots-{{model}}.prov.json", model=MODELS_002),
        f"{E002}/plots/cross-model-patching.png",
        f"{E002}/provenance/plot-cross-model.prov.json",
    ],
)


rule run_patching:
    input:
        unpack(model_input("002")),
    output:
        summary=update(f"{E002}/output-{{model}}.json"),
        records=update(f"{E002}/output-{{model}}-records.csv"),
        provenance=update(f"{E002}/provenance/output-{{model}}.prov.json"),
    log:
        "logs/002/run_patching-{model}.log",
    conda:
        CONDA_ENV
    benchmark:
        "benchmarks/002/run_patching-{model}.tsv"
    threads: MODEL_THREADS
    resources:
        **model_resources("run_patching"),
    params:
        **MODEL_PARAMS,
        lens=loads_model("run_patching", ("use_fp32_unembed", "identity_tolerance", "working_memory_mb")),
        patching={**config["patching"], "pairs": PAIRS},
        code=code_version("scripts/run_patching.py"),
    script:
        "../scripts/run_patching.py"


rule plot_patching:
    input:
        summary=f"{E002}/output-{{model}}.json",
        records=f"{E002}/output-{{model}}-records.csv",
    output:
        figures=[
            update(report(
                f"{E002}/plots/{{model}}/patching-{pair}.png",
                caption="../workflow/report/patching-heatmap.rst",
                category="{model}",
                subcategory="Patching",
                labels={"pair": pair},
            ))
            for pair in PAIR_IDS
        ],
        provenance=update(f"{E002}/provenance/patching-plots-{{model}}.prov.json"),
    log:
        "logs/002/plot_patching-{model}.log",
    conda:
        CONDA_ENV
    params:
        pairs=PAIR_IDS,
        code=code_version("scripts/plot_patching.py"),
    localrule: True
    script:
        "../scripts/plot_patching.py"


rule plot_patching_cross:
    input:
        unpack(model_outputs(E002)),
        lens=expand("results/001/output-{model}.json", model=MODELS_002),
    output:
        figure=update(report(
            f"{E002}/plots/cross-model-patching.png",
            caption="../workflow/report/patching-depth.rst",
            category="Cross-model",
            subcategory="Figures",
            labels={"figure": "patching by relative depth"},
        )),
        provenance=update(f"{E002}/provenance/plot-cross-model.prov.json"),
    log:
        "logs/002/plot_patching_cross.log",
    conda:
        CONDA_ENV
    params:
        code=code_version("scripts/plot_patching_cross.py"),
    localrule: True
    script:
        "../scripts/plot_patching_cross.py"
