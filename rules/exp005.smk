# Experiment 005, words or concepts: translation, repetition and cloze prompts between
# languages (data/words.tsv, data/cloze.tsv) read at every layer through the logit, tuned
# and patchscope lenses; its pictures, and what its evaluations read (register_experiment).
from workflow.experiments.exp005.prompts import Task

E005 = "results/005"
MODELS_005 = models_of("005")  # the models that run it (models.{model}.experiments)
WORD_TASKS = _user_errors(lambda: [Task.of(entry).id for entry in config["words"]["tasks"]])

register_experiment(
    "005",
    model_inputs=lambda model: {"summary": f"{E005}/output-{model}.json", "records": f"{E005}/output-{model}-records.csv"},
    model_figures=lambda model: expand(f"{E005}/plots/{model}/words-{{task}}.png", task=WORD_TASKS),
    cross_figures=[f"{E005}/plots/cross-model-words.png"],
    artefacts=[
        *expand(f"{E005}/output-{{model}}.json", model=MODELS_005),
        *expand(f"{E005}/output-{{model}}-records.csv", model=MODELS_005),
        *expand(f"{E005}/provenance/output-{{model}}.prov.json", model=MODELS_005),
        *expand(f"{E005}/plots/{{model}}/words-{{task}}.png", model=MODELS_005, task=WORD_TASKS),
        *expand(f"{E005}/provenance/word-plots-{{model}}.prov.json", model=MODELS_005),
        f"{E005}/plots/cross-model-words.png",
        f"{E005}/provenance/plot-cross-model.prov.json",
    ],
)


rule run_words:
    input:
        # The model's weights, and its trained tuned lens where config lenses has it.
        unpack(model_input("005", tuned=True)),
        words="data/words.tsv",
        cloze="data/cloze.tsv",
    output:
        summary=update(f"{E005}/output-{{model}}.json"),
        records=update(f"{E005}/output-{{model}}-records.csv"),
        provenance=update(f"{E005}/provenance/output-{{model}}.prov.json"),
    log:
        "logs/005/run_words-{model}.log",
    conda:
        CONDA_ENV
    benchmark:
        "benchmarks/005/run_words-{model}.tsv"
    threads: MODEL_THREADS
    resources:
        **model_resources("run_words"),
    params:
        **MODEL_PARAMS,
        lens=loads_model("run_words", ("use_norm_lens", "use_fp32_unembed", "identity_tolerance")),
        words=config["words"],
        patchscope=config["patchscope"],
        code=code_version("scripts/run_words.py"),
    script:
        "../scripts/run_words.py"


rule plot_words:
    input:
        summary=f"{E005}/output-{{model}}.json",
        records=f"{E005}/output-{{model}}-records.csv",
    output:
        figures=[
            update(report(
                f"{E005}/plots/{{model}}/words-{task}.png",
                caption="../workflow/report/words-task.rst",
                category="{model}",
                subcategory="Words or concepts",
                labels={"task": task},
            ))
            for task in WORD_TASKS
        ],
        provenance=update(f"{E005}/provenance/word-plots-{{model}}.prov.json"),
    log:
        "logs/005/plot_words-{model}.log",
    conda:
        CONDA_ENV
    params:
        tasks=WORD_TASKS,
        code=code_version("scripts/plot_words.py"),
    localrule: True
    script:
        "../scripts/plot_words.py"


rule plot_words_cross:
    input:
        unpack(model_outputs(E005)),
    output:
        figure=update(report(
            f"{E005}/plots/cross-model-words.png",
            caption="../workflow/report/words-cross.rst",
            category="Cross-model",
            subcategory="Figures",
            labels={"figure": "words or concepts: target, English and concept by relative depth"},
        )),
        provenance=update(f"{E005}/provenance/plot-cross-model.prov.json"),
    log:
        "logs/005/plot_words_cross.log",
    conda:
        CONDA_ENV
    params:
        code=code_version("scripts/plot_words_cross.py"),
    localrule: True
    script:
        "../scripts/plot_words_cross.py"
