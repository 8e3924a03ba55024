"""Experiment 005's offline analyst: the sections of its three evaluations.

Every sentence is a figure computed from the recorded outputs
(``workflow.experiments.exp005.analysis``) put into words by the rule stated there (and in
every evaluation, ``digest.rule_text``): where the concept is readable before its
target-language word, whether English dominates there, and where the lenses disagree.
"""

from __future__ import annotations

from collections.abc import Callable

from workflow.evaluation.text import counted, escaped, identity_text, table
from workflow.experiments.exp005.analysis import DISAGREE, ModelFacts, TaskFacts
from workflow.experiments.exp005.digest import layer_or_never, rule_text, span


def _readings(f: ModelFacts) -> list[tuple[TaskFacts, str]]:
    """The (task, lens) readings of the tasks the model does (the rule)."""
    return [(task, lens) for task in f.tasks if task.done for lens in task.readings]


def output_text(task: TaskFacts) -> str:
    return "no concept kept" if task.output is None else interval_text(task.output)


def _not_done(f: ModelFacts) -> str:
    missed = [t for t in f.tasks if not t.done]
    if not missed:
        return f"It does all {counted(len(f.tasks), 'task')} (its target word readable at its own output)."
    return (f"It does {len(f.tasks) - len(missed)} of {counted(len(f.tasks), 'task')}; in "
            + ", ".join(f"{escaped(t.id)} (target word at the output {output_text(t)})" for t in missed)
            + " its output's target word is not readable, so those tasks say nothing of concepts before words.")


def _ahead(f: ModelFacts) -> list[tuple[TaskFacts, str]]:
    """The (task, lens) readings where the concept is read before its target word."""
    return [(task, lens) for task, lens in _readings(f) if task.readings[lens].before_word()]


def _english_there(f: ModelFacts, task: TaskFacts, lens: str) -> list[int]:
    r = task.readings[lens]
    before = set(r.before_word())
    return [layer for layer in r.english_dominant() if layer in before]


ROLE_NAMES = {"target": "target-language", "english": "English", "source": "source-language"}


def carrier_text(r) -> str:
    """Which of the concept's words the lens reads in the layers before the target word (the
    mean probability of each over those layers), and each word's mean with its interval at
    the layer where the concept is likeliest among them."""
    layers = r.before_word()
    means = {role: sum(curve.at(layer)[0] for layer in layers) / len(layers)
             for role, curve in r.curves.items() if role != "concept"}
    first = max(means, key=lambda role: (means[role], role))
    peak = max(layers, key=lambda layer: (r.curves["concept"].at(layer)[0], -layer))
    at_peak = ", ".join(f"{ROLE_NAMES[role]} {interval_text(r.curves[role].at(peak))}" for role in means)
    return (f"mostly its {ROLE_NAMES[first]} word there (mean probability over those layers "
            + ", ".join(f"{ROLE_NAMES[role]} {mean:.2f}" for role, mean in means.items())
            + f"; at layer {peak}, where the concept is likeliest: {at_peak})")


def interval_text(value: tuple[float, float, float]) -> str:
    mean, low, high = value
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def answer(f: ModelFacts) -> str:
    """The experiment's question answered for one model, in plain words."""
    readings = _readings(f)
    ahead = _ahead(f)
    text = (f"In {escaped(f.model)} ({f.n_layers} layers), the concept is readable before its target-language word in "
            f"{len(ahead)} of {len(readings)} task-and-lens readings of the tasks it does (lenses {', '.join(f.lenses)}). "
            + _not_done(f))
    if not readings:
        text += (" This is a null result: with no task done, nothing here can show a concept read before its word.")
        return text
    if not ahead:
        never = [(t, lens) for t, lens in readings if t.readings[lens].word_layer is None]
        text += (" This is a null result: no lens reads the concept (in any of its words) at a layer before the one where it "
                 f"reads the target word; in {len(never)} of the {len(readings)} readings the lens never reads the target word "
                 "by the rule.")
        return text
    parts = []
    for task, lens in ahead:
        r = task.readings[lens]
        english = _english_there(f, task, lens)
        word = ("this lens never reads the target word" if r.word_layer is None
                else f"target word from layer {r.word_layer}")
        parts.append(f"{escaped(task.id)} through the {lens} lens at layers {span(r.before_word())} of {f.n_layers} ({word}), "
                     f"English dominating at {counted(len(english), 'layer')} of them, {carrier_text(r)}")
    text += " Where: " + "; ".join(parts) + "."
    dominant = sum(bool(_english_there(f, t, lens)) for t, lens in ahead)
    text += (f" English dominates the layers before the target word in {dominant} of these {len(ahead)} readings"
             + (": the latent-English pattern." if dominant == len(ahead) else "."))
    return text


def _single_summary(f: ModelFacts) -> str:
    return (
        answer(f) + "\n\n" + rule_text() + f" Words are scored by their {f.scoring} token. At the last layer the logit lens "
        f"reproduces the model's probabilities {identity_text(f.identity_max_prob_diff)}. Per task and lens: the sections "
        "'Where the concept is readable' and 'Lenses compared'."
    )


def _single_words(f: ModelFacts) -> str:
    rows = [[escaped(t.id), str(t.words["kept"]), str(t.words["scored"]), str(t.words["whole_words"]),
             "; ".join(f"{reason}: {n}" for reason, n in t.words.items() if reason not in ("kept", "scored", "whole_words")) or "none",
             output_text(t), "yes" if t.done else "no"]
            for t in f.tasks]
    return (
        table(["task", "concepts kept (of 100)", "scored", "every word one token", "dropped",
               "target word at the output (mean [95% interval])", "model does the task"], rows)
        + f"\n\nA word is scored by its {f.scoring} token as the prompt places it (after a quotation mark). A concept is dropped "
        "where its target word is its English or source word, or where their scored tokens are the same."
    )


def _single_layers(f: ModelFacts) -> str:
    rows = []
    for task in f.tasks:
        for lens, r in task.readings.items():
            rows.append([escaped(task.id), "yes" if task.done else "no", lens, layer_or_never(r.concept_layer), layer_or_never(r.word_layer),
                         span(r.before_word()) if task.done else "(task not done)", span(r.english_dominant())])
    return (
        table(["task", "model does it", "lens", "concept readable from", "target word readable from",
               "concept before word (layers)", "English dominates (layers)"], rows)
        + f"\n\nLayers count from 0 (the embeddings) to {f.n_layers} (the output)."
        + ("" if len(f.patchscope_layers) == f.n_layers + 1 else " The patchscope lens has no reading at the last layer: its state "
           "is written before the position it reads, and no block runs after the write there.")
    )


def _single_lenses(f: ModelFacts) -> str:
    lines = []
    for task in f.tasks:
        spread = f.disagreement(task)
        if spread is None:
            continue
        firsts = ", ".join(f"{lens} {layer_or_never(r.word_layer)}" for lens, r in task.readings.items())
        verdict = "the lenses disagree" if f.lenses_disagree(task) else "the lenses agree"
        lines.append(f"- {escaped(task.id)}: target word first readable at layer {firsts}: {verdict} ({spread} layers apart; more than "
                     f"{DISAGREE:.0%} of {f.n_layers} layers counts as disagreement).")
    return "\n".join(lines) if lines else "Only one lens was read."


def _caveats(facts) -> str:
    return (
        "- The embedded models are small (135M and 270M parameters): a null result here says nothing of 7B-70B models.\n"
        "- Words scored by their first token share it with other words that begin alike (the dropped counts say which "
        "concepts were told apart).\n"
        "- A concept is called readable through the probability of three words in three languages; a concept held in "
        "another form (another language, a synonym) is not counted.\n"
        "- The patchscope lens reads the state through the model's own continuation of an inspection prompt: what it reads "
        "also depends on that prompt."
    )


SINGLE: dict[str, Callable[[ModelFacts], str]] = {
    "summary": _single_summary,
    "words kept": _single_words,
    "where the concept is readable": _single_layers,
    "lenses compared": _single_lenses,
    "caveats": _caveats,
}


def _cross_summary(models: list[ModelFacts]) -> str:
    return " ".join(answer(m) for m in models) + "\n\n" + rule_text()


def _cross_table(models: list[ModelFacts]) -> str:
    rows = []
    for m in models:
        for task, lens in _readings(m):
            r = task.readings[lens]
            rows.append([escaped(m.model), escaped(task.id), lens, str(task.words["scored"]),
                         layer_or_never(r.concept_layer) + f" of {m.n_layers}", layer_or_never(r.word_layer),
                         str(len(r.before_word())), str(len(_english_there(m, task, lens)))])
    return table(["model", "task", "lens", "concepts", "concept readable from", "target word from", "layers concept before word",
                  "of them English-dominant"], rows)


def _cross_differences(models: list[ModelFacts]) -> str:
    found = [escaped(m.model) for m in models if _ahead(m)]
    english = [escaped(m.model) for m in models if any(_english_there(m, t, lens) for t, lens in _ahead(m))]
    return (
        f"The concept is read before its target word in at least one task and lens in {len(found)} of {len(models)} models"
        + (f" ({', '.join(found)})" if found else "")
        + f"; English dominates those layers in {len(english)}" + (f" ({', '.join(english)})" if english else "")
        + ". The models keep different concepts (their tokenizers differ), so the concept sets compared differ too."
    )


CROSS: dict[str, Callable[[list[ModelFacts]], str]] = {
    "summary": _cross_summary,
    "by model, task and lens": _cross_table,
    "differences between models": _cross_differences,
    "caveats": _caveats,
}


def _meta_summary(models: list[ModelFacts]) -> str:
    readings = sum(len(_readings(m)) for m in models)
    ahead = sum(len(_ahead(m)) for m in models)
    return (
        f"The answer this critique weighs: the concept is read before its target-language word in {ahead} of {readings} "
        f"task-and-lens readings over {counted(len(models), 'model')}. "
        + " ".join(answer(m) for m in models)
    )


def _meta_reading(models: list[ModelFacts]) -> str:
    ahead = sum(len(_ahead(m)) for m in models)
    english = sum(bool(_english_there(m, t, lens)) for m in models for t, lens in _ahead(m))
    if ahead == 0:
        verdict = ("These numbers cannot separate concepts from words on these models: no lens reads a concept before the "
                   "layer where it reads the word itself, so nothing here shows a representation of the concept that is not "
                   "already its output word.")
    elif english:
        verdict = (f"In {english} of the {ahead} readings where the concept is read before its word, the English word leads in "
                   "those layers: a representation that is neither the source nor the output language, as Wendler et al. "
                   "report for Llama 2.")
    else:
        verdict = (f"In {ahead} readings the concept is read before its word, but never with English leading: an "
                   "early concept without an English detour on these models.")
    return (
        verdict + " What this can say: where a lens reads the concept's words earlier than the target word, a state in "
        "those layers already predicts the concept in some language. What it cannot say: that the state is "
        "language-free ('realist concepts') or a template ('nominalist'); a lens reads what a fixed decoder makes of a "
        "state, and a concept held in a form no decoder here reads is invisible to it."
    )


def _meta_threats(models: list[ModelFacts]) -> str:
    return (
        "- The threshold of readability is a choice: lower thresholds move every layer earlier; the intervals make the "
        "choice explicit, not neutral.\n"
        "- First-token scoring confounds a word with others that begin alike.\n"
        "- The logit lens reads late where intermediate layers are in another basis; the tuned lens corrects only as far "
        "as its translators were trained; the patchscope depends on its inspection prompt.\n"
        "- Few-shot prompts teach the task in the context; the same concept with other demonstrations may read differently."
    )


def _meta_next(models: list[ModelFacts]) -> str:
    return (
        "- Run the same tasks on a 7B-70B model (a GGUF on llama.cpp, docs/large-models.md): the latent-English result was "
        "reported at that scale.\n"
        "- Score every token of a word (its full probability by teacher forcing) instead of the first.\n"
        "- Patch the middle-layer state of one language's prompt into another's (experiment 002) to ask whether it is used."
    )


META: dict[str, Callable[[list[ModelFacts]], str]] = {
    "summary": _meta_summary,
    "what the numbers can say about concepts and words": _meta_reading,
    "threats to validity": _meta_threats,
    "next experiments": _meta_next,
}
