# Experiment 004, components: for every pair of experiment 002 (PAIRS, rules/exp002.smk),
# which block's attention, MLP and head writes the answer (direct logit attribution), and
# what patching each of them from the clean run into the corrupted one recovers, exactly and
# by attribution patching; its pictures, and what its evaluations read (register_experiment).
E004 = "results/004"
MODELS_004 = models_of("004")  # the models that run it (models.{model}.experiments)

register_experiment(
    "004",
    model_inputs=lambda model: {"summary": f"{E004}/output-{model}.json", "records": f"{E004}/output-{model}-records.csv"},
    model_figures=lambda model: expand(f"{E004}/plots/{model}/components-{{pair}}.png", pair=PAIR_IDS),
    cross_figures=[f"{E004}/plots/cross-model-components.png"],
    # Its records are components x positions, not the lens's layers x positions grid.
    # Without patching pairs, `snakemake` leaves experiment 004 out too.
    default=bool(PAIRS),
    artefacts=[
        *expand(f"{E004}/output-{{model}}.json", model=MODELS_004),
        *expand(f"{E004}/output-{{model}}-records.csv", model=MODELS_004),
        *expand(f"{E004}/provenance/output-{{model}}.prov.json", model=MODELS_004),
        *expand(f"{E004}/plots/{{model}}/components-{{pair}}.png", model=MODELS_004, pair=PAIR_IDS),
        *expand(f"{E004}/provenance/component-plots-{{model}}.prov.json", model=MODELS_004),
        f"{E004}/plots/cross-model-components.png",
        f"{E004}/provenance/plot-cross-model.prov.json",
    ],
)


rule run_components:
    input:
        unpack(model_input("004")),
    output:
        summary=update(f"{E004}/output-{{model}}.json"),
        records=update(f"{E004}/output-{{model}}-records.csv"),
        provenance=update(f"{E004}/provenance/output-{{model}}.prov.json"),
    log:
        "logs/004/run_components-{model}.log",
    conda:
        CONDA_ENV
    benchmark:
        "benchmarks/004/run_components-{model}.tsv"
    threads: MODEL_THREADS
    resources:
        **model_resources("run_components"),
    params:
        # Not the config's backend: the experiment always reads the model's own modules.
        **{k: v for k, v in MODEL_PARAMS.items() if k != "backend"},
        lens=loads_model("run_components", ("use_fp32_unembed", "identity_tolerance", "working_memory_mb")),
        components=config["components"],
        pairs=PAIRS,
        code=code_version("scripts/run_components.py"),
    script:
        "../scripts/run_components.py"


rule plot_components:
    input:
        summary=f"{E004}/output-{{model}}.json",
        records=f"{E004}/output-{{model}}-records.csv",
    output:
        figures=[
            update(report(
                f"{E004}/plots/{{model}}/components-{pair}.png",
                caption="../workflow/report/components-pair.rst",
                category="{model}",
                subcategory="Components",
                labels={"pair": pair},
            ))
            for pair in PAIR_IDS
        ],
        provenance=update(f"{E004}/provenance/component-plots-{{model}}.prov.json"),
    log:
        "logs/004/plot_components-{model}.log",
    conda:
        CONDA_ENV
    params:
        pairs=PAIR_IDS,
        code=code_version("scripts/plot_components.py"),
    localrule: True
    script:
        "../scripts/plot_components.py"


rule plot_components_cross:
    input:
        unpack(model_outputs(E004)),
    output:
        figure=update(report(
            f"{E004}/plots/cross-model-components.png",
            caption="../workflow/report/components-cross.rst",
            category="Cross-model",
            subcategory="Figures",
            labels={"figure": "components: attention and MLP by relative depth, AtP against exact patching"},
        )),
        provenance=update(f"{E004}/provenance/plot-cross-model.prov.json"),
    log:
        "logs/004/plot_components_cross.log",
    conda:
        CONDA_ENV
    params:
        code=code_version("scripts/plot_components_cross.py"),
    localrule: True
    script:
        "../scripts/plot_components_cross.py"
