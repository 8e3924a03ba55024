# Experiment 003, generation: greedy generation after the first generation.max_probes probes
# of every model, the lens on every generated token, its pictures, and what its evaluations
# read (register_experiment).
from workflow.experiments.exp003.probes import generation_probes

E003 = "results/003"
MODELS_003 = models_of("003")  # the models that run it (models.{model}.experiments)
GENERATION_PROBES = generation_probes(PROBES, config["generation"])
GENERATION_IDS = [p["id"] for p in GENERATION_PROBES]

register_experiment(
    "003",
    model_inputs=lambda model: {"summary": f"{E003}/output-{model}.json", "records": f"{E003}/output-{model}-records.csv"},
    model_figures=lambda model: expand(f"{E003}/plots/{model}/generation-{{probe}}.png", probe=GENERATION_IDS),
    cross_figures=[f"{E003}/plots/cross-model-settling.png"],
    explorer_probes=GENERATION_IDS,
    # With generation.max_probes 0, `snakemake` leaves experiment 003 out.
    default=bool(GENERATION_PROBES),
    artefacts=[
        *expand(f"{E003}/output-{{model}}.json", model=MODELS_003),
        *expand(f"{E003}/output-{{model}}-records.csv", model=MODELS_003),
        *expand(f"{E003}/provenance/output-{{model}}.prov.json", model=MODELS_003),
        *expand(f"{E003}/plots/{{model}}/generation-{{probe}}.png", model=MODELS_003, probe=GENERATION_IDS),
        *expand(f"{E003}/provenance/generation-plots-{{model}}.prov.json", model=MODELS_003),
        f"{E003}/plots/cross-model-settling.png",
        f"{E003}/provenance/plot-cross-model.prov.json",
    ],
)


rule run_generation:
    input:
        # The model's weights, and its trained tuned lens where config lenses has it.
        unpack(model_input("003", tuned=True)),
    output:
        summary=update(f"{E003}/output-{{model}}.json"),
        records=update(f"{E003}/output-{{model}}-records.csv"),
        provenance=update(f"{E003}/provenance/output-{{model}}.prov.json"),
    log:
        "logs/003/run_generation-{model}.log",
    conda:
        CONDA_ENV
    benchmark:
        "benchmarks/003/run_generation-{model}.tsv"
    threads: MODEL_THREADS
    resources:
        **model_resources("run_generation"),
    params:
        **MODEL_PARAMS,
        lens=loads_model("run_generation", ("use_norm_lens", "use_fp32_unembed", "top_k", "identity_tolerance", "working_memory_mb")),
        generation=config["generation"],
        probes=GENERATION_PROBES,
        code=code_version("scripts/run_generation.py"),
    script:
        "../scripts/run_generation.py"


rule plot_generation:
    input:
        summary=f"{E003}/output-{{model}}.json",
        records=f"{E003}/output-{{model}}-records.csv",
    output:
        figures=[
            update(report(
                f"{E003}/plots/{{model}}/generation-{probe}.png",
                caption="../workflow/report/generation-heatmap.rst",
                category="{model}",
                subcategory="Generation",
                labels={"probe": probe},
            ))
            for probe in GENERATION_IDS
        ],
        provenance=update(f"{E003}/provenance/generation-plots-{{model}}.prov.json"),
    log:
        "logs/003/plot_generation-{model}.log",
    conda:
        CONDA_ENV
    params:
        probes=GENERATION_IDS,
        code=code_version("scripts/plot_generation.py"),
    localrule: True
    script:
        "../scripts/plot_generation.py"


rule plot_generation_cross:
    input:
        unpack(model_outputs(E003)),
    output:
        figure=update(report(
            f"{E003}/plots/cross-model-settling.png",
            caption="../workflow/report/generation-settling.rst",
            category="Cross-model",
            subcategory="Figures",
            labels={"figure": "generated tokens: settling depth by word class"},
        )),
        provenance=update(f"{E003}/provenance/plot-cross-model.prov.json"),
    log:
        "logs/003/plot_generation_cross.log",
    conda:
        CONDA_ENV
    params:
        code=code_version("scripts/plot_generation_cross.py"),
    localrule: True
    script:
        "../scripts/plot_generation_cross.py"
