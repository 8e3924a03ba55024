# Experiment 001, layers and logits: the normalised (and tuned) logit lens at every layer
# of every model, its pictures, and what its evaluations read (register_experiment).

from workflow.experiments.exp001.files import heatmap_file

E001 = "results/001"
MODELS_001 = models_of("001")  # the models that run it (models.{model}.experiments)
PROBE_IDS = [p["id"] for p in PROBES]
# A heatmap for each of the first lens.heatmap_probes probes (a probe set can have thousands),
# through each lens (heatmap_file, in workflow/experiments/exp001/files.py).
HEATMAP_IDS = PROBE_IDS[: config["lens"]["heatmap_probes"]]
HEATMAP_LENSES = [lens for lens in ("logit", "tuned", "patchscope") if lens in LENSES]

# The records file: CSV, or Parquet for large probe sets (lens.records_format; docs/experiments.md, "Probe sets").
RECORDS_001 = f"{E001}/output-{{model}}-records.{records_format(config['lens']['records_format'], len(PROBES))}"


register_experiment(
    "001",
    model_inputs=lambda model: {"summary": f"{E001}/output-{model}.json", "records": RECORDS_001.format(model=model)},
    model_figures=lambda model: [
        f"{E001}/plots/{model}/statistics.png",
        *expand(f"{E001}/plots/{model}/heatmap-{{probe}}.png", probe=HEATMAP_IDS),
    ],
    # The answer by layer first: the figure that answers the experiment's question.
    cross_figures=[f"{E001}/plots/answer-by-layer.png", f"{E001}/plots/cross-model-trajectories.png"],
    explorer_probes=HEATMAP_IDS,
    artefacts=[
        *expand(f"{E001}/output-{{model}}.json", model=MODELS_001),
        *expand(RECORDS_001, model=MODELS_001),
        *expand(f"{E001}/provenance/output-{{model}}.prov.json", model=MODELS_001),
        *[heatmap_file(model, probe, lens) for model in MODELS_001 for probe in HEATMAP_IDS for lens in HEATMAP_LENSES],
        *expand(f"{E001}/plots/{{model}}/statistics.png", model=MODELS_001),
        *expand(f"{E001}/provenance/{{plot}}-{{model}}.prov.json", plot=["heatmaps", "statistics"], model=MODELS_001),
        f"{E001}/plots/answer-by-layer.png",
        f"{E001}/plots/cross-model-trajectories.png",
        f"{E001}/provenance/plot-cross-model.prov.json",
        # The tuned lens's quality on held-out text, where config lenses has it.
        *expand(f"{E001}/lens-quality-{{model}}.csv", model=MODELS_001 if "tuned" in LENSES else []),
        *expand(f"{E001}/plots/{{model}}/lens-quality.png", model=MODELS_001 if "tuned" in LENSES else []),
        *expand(f"{E001}/provenance/lens-quality-{{model}}.prov.json", model=MODELS_001 if "tuned" in LENSES else []),
    ],
)


rule run_lens:
    input:
        # The model's weights, and its trained tuned lens where config lenses has it.
        unpack(model_input("001", tuned=True)),
    # update(): Snakemake keeps the previous outputs until the job succeeds and puts them
    # back if it fails (docs/reproducibility.md, "When something fails"), instead of deleting them first.
    output:
        summary=update(f"{E001}/output-{{model}}.json"),
        records=update(RECORDS_001),
        provenance=update(f"{E001}/provenance/output-{{model}}.prov.json"),
    log:
        "logs/001/run_lens-{model}.log",
    conda:
        CONDA_ENV
    benchmark:
        "benchmarks/001/run_lens-{model}.tsv"
    threads: MODEL_THREADS
    resources:
        **model_resources("run_lens"),
    params:
        **MODEL_PARAMS,
        lens=loads_model("run_lens", EVERY_LENS_KEY),
        probes=PROBES,
        lenses=LENSES,
        # The patchscope lens's settings, where config lenses has it (else they change nothing here).
        patchscope=config["patchscope"] if "patchscope" in LENSES else {},
        code=code_version("scripts/run_lens.py"),
    script:
        "../scripts/run_lens.py"


rule plot_heatmaps:
    input:
        records=RECORDS_001,
        summary=f"{E001}/output-{{model}}.json",
    output:
        heatmaps=[
            update(report(
                heatmap_file("{model}", probe, lens),
                caption="../workflow/report/heatmap.rst",
                category="{model}",
                subcategory="Heatmaps",
                labels={"probe": probe, "lens": lens},
            ))
            for probe in HEATMAP_IDS
            for lens in HEATMAP_LENSES
        ],
        provenance=update(f"{E001}/provenance/heatmaps-{{model}}.prov.json"),
    log:
        "logs/001/plot_heatmaps-{model}.log",
    conda:
        CONDA_ENV
    params:
        figures=[(probe, lens) for probe in HEATMAP_IDS for lens in HEATMAP_LENSES],
        code=code_version("scripts/plot_heatmaps.py"),
    localrule: True
    script:
        "../scripts/plot_heatmaps.py"


rule plot_statistics:
    input:
        records=RECORDS_001,
        summary=f"{E001}/output-{{model}}.json",
    output:
        figure=update(report(
            f"{E001}/plots/{{model}}/statistics.png",
            caption="../workflow/report/statistics.rst",
            category="{model}",
            subcategory="Statistics",
            labels={"figure": "probe-set statistics"},
        )),
        provenance=update(f"{E001}/provenance/statistics-{{model}}.prov.json"),
    log:
        "logs/001/plot_statistics-{model}.log",
    conda:
        CONDA_ENV
    params:
        code=code_version("scripts/plot_statistics.py"),
    localrule: True
    script:
        "../scripts/plot_statistics.py"


rule plot_cross:
    input:
        unpack(model_outputs(E001, RECORDS_001)),
    output:
        # The report's first category, which its overview (workflow/report/workflow.rst) opens with.
        answer=update(report(
            f"{E001}/plots/answer-by-layer.png",
            caption="../workflow/report/answer-by-layer.rst",
            category=START_CATEGORY,
            subcategory="Answer by layer",
            labels={"figure": "the answer by layer, every lens and model"},
        )),
        figure=update(report(
            f"{E001}/plots/cross-model-trajectories.png",
            caption="../workflow/report/trajectories.rst",
            category="Cross-model",
            subcategory="Figures",
            labels={"figure": "trajectories by relative depth"},
        )),
        provenance=update(f"{E001}/provenance/plot-cross-model.prov.json"),
    log:
        "logs/001/plot_cross.log",
    conda:
        CONDA_ENV
    params:
        code=code_version("scripts/plot_cross.py"),
    localrule: True
    script:
        "../scripts/plot_cross.py"


rule lens_quality:
    input:
        lens="resources/lenses/{model}",
    output:
        csv=update(f"{E001}/lens-quality-{{model}}.csv"),
        plot=update(report(
            f"{E001}/plots/{{model}}/lens-quality.png",
            caption="../workflow/report/lens-quality.rst",
            category="{model}",
            subcategory="Lens quality",
            labels={"figure": "held-out KL and top-1 agreement"},
        )),
        provenance=update(f"{E001}/provenance/lens-quality-{{model}}.prov.json"),
    log:
        "logs/001/lens_quality-{model}.log",
    conda:
        CONDA_ENV
    params:
        code=code_version("scripts/lens_quality.py"),
    localrule: True
    script:
        "../scripts/lens_quality.py"
