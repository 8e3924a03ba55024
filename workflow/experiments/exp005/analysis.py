"""Figures computed from experiment 005's outputs, shared by its digests, offline analyst and
plots: per task and lens, at every layer, the mean probability over concepts of the target
word, the English word, the source word and the concept (any of its words), each with a
bootstrap interval over concepts; and, by the rule below, where the concept is readable
before its target-language word and whether English dominates there.

The rule (stated in every evaluation):
- a word (or the concept) is *readable* at a layer where the lower end of the 95% bootstrap
  interval of its mean probability is at least READABLE;
- the concept's probability is the sum of the probabilities of its distinct scored tokens
  (target, English and, translating, source);
- the model *does the task* where its target word is readable at the last layer through the
  logit lens (the model's own output); a task it does not do says nothing of concepts before
  words (an English answer is not a latent one) and is reported as such;
- in a task the model does, the concept is read *before its word* in the layers from the
  first where the concept is readable up to (not including) the first where the target word
  is, or to the output where this lens never reads the target word;
- *English dominates* at a layer where the English word is readable and the lower end of its
  interval is above the upper end of the target word's;
- lenses *disagree* on a task where the first layers at which they read the target word
  (or fail to) differ by more than DISAGREE of the depth.

Everything here is a deterministic function of ``results/005/output-{model}.json`` and its
records (the bootstrap's generator is seeded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workflow.evaluation.facts import ModelDescription
from workflow.experiments.exp005.records import ROLES, read_word_records

READABLE = 0.05
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
DISAGREE = 0.1
MEASURES = (*ROLES, "concept")


@dataclass
class Curve:
    """Per layer (``layers``): the mean over concepts and its bootstrap interval."""

    layers: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]

    def readable(self) -> list[int]:
        return [layer for layer, low in zip(self.layers, self.low) if low >= READABLE]

    def first_readable(self) -> int | None:
        readable = self.readable()
        return readable[0] if readable else None

    def at(self, layer: int) -> tuple[float, float, float]:
        i = self.layers.index(layer)
        return self.mean[i], self.low[i], self.high[i]


@dataclass
class LensReading:
    """One task through one lens: the curves and what the rule finds in them."""

    lens: str
    curves: dict[str, Curve]  # measure (target, english, source, concept) -> curve
    mean_rank: dict[str, list[float]]  # role -> per layer, the mean rank over concepts

    @property
    def word_layer(self) -> int | None:
        return self.curves["target"].first_readable()

    @property
    def concept_layer(self) -> int | None:
        return self.curves["concept"].first_readable()

    def before_word(self) -> list[int]:
        """The layers where the concept is read before its target word (the rule): to the
        output where this lens never reads the word."""
        start, end = self.concept_layer, self.word_layer
        if start is None:
            return []
        return [layer for layer in self.curves["concept"].layers if start <= layer and (end is None or layer < end)]

    def english_dominant(self) -> list[int]:
        english, target = self.curves["english"], self.curves["target"]
        return [layer for layer, low, high in zip(english.layers, english.low, target.high) if low >= READABLE and low > high]


@dataclass
class TaskFacts:
    id: str
    kind: str
    source: str
    target: str
    words: dict[str, int]  # kept, scored, whole_words and the reasons for dropping
    concepts: list[str]
    readings: dict[str, LensReading] = field(default_factory=dict)
    # The target word's mean probability at the last layer through the logit lens (the
    # model's own output) and its interval; None without concepts.
    output: tuple[float, float, float] | None = None

    @property
    def translation(self) -> bool:
        return self.kind == "translation"

    @property
    def done(self) -> bool:
        """Whether the model does the task: its target word readable at its own output."""
        return self.output is not None and self.output[1] >= READABLE


@dataclass
class ModelFacts(ModelDescription):
    lenses: list[str]
    scoring: str
    demonstrations: int
    patchscope: dict
    patchscope_layers: list[int]
    identity_max_prob_diff: float
    tasks: list[TaskFacts]

    def relative(self, layer: int | None) -> float | None:
        return None if layer is None else layer / self.n_layers

    def disagreement(self, task: TaskFacts) -> int | None:
        """How many layers apart the lenses' first target-readable layers are (a lens that never
        reads the word counts as one past the last layer); None with one lens."""
        if len(task.readings) < 2:
            return None
        firsts = [self.n_layers + 1 if r.word_layer is None else r.word_layer for r in task.readings.values()]
        return max(firsts) - min(firsts)

    def lenses_disagree(self, task: TaskFacts) -> bool:
        spread = self.disagreement(task)
        return spread is not None and spread > DISAGREE * self.n_layers


def bootstrap(values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over concepts (rows of ``values`` [n, layers]) and its percentile bootstrap
    interval at LEVEL, resampling concepts BOOTSTRAP_SAMPLES times."""
    n = values.shape[0]
    mean = values.mean(0)
    if n < 2:
        return mean, mean.copy(), mean.copy()
    draws = rng.integers(0, n, size=(BOOTSTRAP_SAMPLES, n))
    means = values[draws].mean(1)  # [samples, layers]
    tail = (1 - LEVEL) / 2 * 100
    return mean, np.percentile(means, tail, axis=0), np.percentile(means, 100 - tail, axis=0)


def _curve(layers: list[int], values: np.ndarray, rng: np.random.Generator) -> Curve:
    mean, low, high = bootstrap(values, rng)
    return Curve(layers, [float(v) for v in mean], [float(v) for v in low], [float(v) for v in high])


def model_facts(summary: str | Path, records: str | Path) -> ModelFacts:
    document = json.loads(Path(summary).read_text(encoding="utf-8"))
    frame = read_word_records(str(records), document)
    lenses = list(document["lenses"])
    tasks = []
    for task in document["tasks"]:
        prompts = task["prompts"]
        facts = TaskFacts(task["id"], task["kind"], task["source"], task["target"], dict(task["words"]),
                          [p["concept"] for p in prompts])
        rows = frame[frame["task"] == task["id"]]
        for lens in lenses if prompts else []:  # a task that kept no concept has no readings
            part = rows[rows["lens"] == lens]
            if part.empty:
                continue
            layers = sorted(int(v) for v in part["layer"].unique())
            # Seeded per task and lens, so a task's intervals do not depend on the others'.
            rng = np.random.default_rng([BOOTSTRAP_SEED, lenses.index(lens), *task["id"].encode()])

            def table(column: str) -> np.ndarray:  # [concepts, layers]
                return part.pivot(index="concept", columns="layer", values=column).loc[facts.concepts, layers].to_numpy(float)

            curves, ranks = {}, {}
            roles = [role for role in ROLES if role in prompts[0]["token_ids"]]
            values = {role: table(f"{role}_prob") for role in roles}
            for role in roles:
                curves[role] = _curve(layers, values[role], rng)
                ranks[role] = [float(v) for v in table(f"{role}_rank").mean(0)]
            # The concept: its distinct tokens' probabilities summed (a token two roles share counts once).
            concept = np.zeros((len(prompts), len(layers)))
            for i, p in enumerate(prompts):
                seen = set()
                for role in roles:
                    if p["token_ids"][role] not in seen:
                        seen.add(p["token_ids"][role])
                        concept[i] += values[role][i]
            curves["concept"] = _curve(layers, concept, rng)
            facts.readings[lens] = LensReading(lens, curves, ranks)
            if lens == "logit":
                facts.output = curves["target"].at(layers[-1])
        tasks.append(facts)
    words = document["words"]
    return ModelFacts(
        **ModelDescription.read(document),
        lenses=lenses,
        scoring=words["scoring"],
        demonstrations=int(words["demonstrations"]),
        patchscope=dict(document["patchscope"]),
        patchscope_layers=[int(layer) for layer in document["patchscope_layers"]],
        identity_max_prob_diff=float(document["identity_check"].get("max_abs_prob_diff", 0.0)),
        tasks=tasks,
    )
