"""The three evaluation stages of any experiment: gather facts, render the template, ask
the provider, write. What the facts and digests are is the experiment's
(``workflow/evaluation/experiment.py``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflow.base.atomic import write_text
from workflow.base.errors import UserError
from workflow.lens.records import rounded
from workflow.evaluation.figures import Evidence, Verification, marked, user_texts, verify
from workflow.evaluation.providers import EvaluationRequest, OfflineProvider, Provider, make_provider
from workflow.evaluation.text import escaped
from workflow.evaluation.templates import MIN_SECTION_CHARS, PromptTemplate, failing_sections, load_template, merged, without_title
from workflow.evaluation.experiment import Experiment, experiment

log = logging.getLogger(__name__)

DEFAULT_MAX_CHARS = 24_000  # the digests' size budget (evaluation.digest_max_chars)


class EvaluationError(UserError):
    """The provider's output does not meet the template's contract, even after one repair,
    or (``figures: strict``) cites a figure the data it was given does not hold."""


@dataclass(frozen=True)
class Written:
    """A written evaluation and what made it."""

    text: str
    template_sha256: str
    prompt_sha256: str
    evaluator: dict[str, Any]
    cache_keys: tuple[str, ...]
    # The content contract's repair, where one was needed: what failed, which sections came
    # from the repair answer.
    repair: dict[str, Any] | None = None
    # The figure check of an LLM-written evaluation (None for the offline analyst's).
    figures: dict[str, Any] | None = None

    def provenance(self) -> dict[str, Any]:
        return {
            "template_sha256": self.template_sha256,
            "prompt_sha256": self.prompt_sha256,
            "evaluator": self.evaluator,
            "cache_keys": list(self.cache_keys),
            **({"repair": self.repair} if self.repair else {}),
            **({"figures": self.figures} if self.figures is not None else {}),
        }


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def footer(template: PromptTemplate, prompt: str, provider: Provider) -> str:
    """A last line that ties the document to what made it (no timestamps)."""
    settings = ", ".join(f"{k} {escaped(str(v))}" for k, v in sorted(provider.describe().items()) if v is not None)
    return (
        f"\n---\n<sub>Template `{Path(template.path).name}` (sha256 {template.sha256[:12]}); rendered prompt "
        f"sha256 {_sha(prompt)[:12]}; {settings}.</sub>\n"
    )


def figures_section(figures: list[str], output_path: str) -> str:
    """Links to the plots, relative to the document so they render on GitHub.

    Added by the pipeline after the provider's text (whatever the provider), under a
    heading of its own after the template's required ones.
    """
    if not figures:
        return ""
    base = Path(output_path).parent
    lines = ["## Figures", ""]
    for figure in figures:
        name = Path(figure).stem.removeprefix("heatmap-")
        lines += [f"**{name}**", "", f"![{name}]({Path(os.path.relpath(figure, base)).as_posix()})", ""]
    return "\n" + "\n".join(lines)


@dataclass(frozen=True)
class Completion:
    text: str
    repair: dict[str, Any] | None = None


def complete(request: EvaluationRequest, provider: Provider, min_chars: int = MIN_SECTION_CHARS) -> Completion:
    """The provider's text, meeting the content contract: every required heading, in order,
    with at least ``min_chars`` characters of content under it. Where the first answer
    fails, one repair request asks for the failing sections only, and they are merged
    into the first answer's good ones; what still fails is an EvaluationError."""
    text = provider.complete(request)
    failing = failing_sections(text, request.headings, min_chars)
    repair = None
    if failing:
        answer = provider.repair(request, text, failing)
        if answer is not None:
            repaired = failing_sections(answer, tuple(failing), min_chars)
            text = merged(text, answer, request.headings, set(failing))
            repair = {"problems": list(failing.values()), "sections_repaired": [h for h in failing if h not in repaired]}
            failing = failing_sections(text, request.headings, min_chars)
    if failing:
        raise EvaluationError(
            f"{provider.name} wrote a {request.stage} evaluation that breaks the template's content contract "
            "(every required heading, in order, with content under it; after one repair request where the provider "
            "allows it): " + "; ".join(failing.values()) + ". Nothing was written"
            + (f"; the answers are kept in the response cache ({cache.directory}/, keys {', '.join(k[:12] for k in provider.cache_keys)})."
               if (cache := getattr(provider, "cache", None)) is not None else ".")
        )
    return Completion(text, repair)


def checked_figures(text: str, prompt: str, request: EvaluationRequest, template: PromptTemplate, provider: Provider) -> tuple[str, Verification]:
    """Every figure of an LLM-written ``text`` looked up in its ``prompt`` and in the offline
    analyst's document for the same facts; unsupported ones marked (``figures: mark``) or,
    with ``figures: strict``, an EvaluationError naming them."""
    offline = OfflineProvider().complete(request)
    verification = verify(text, Evidence(prompt, offline, user=user_texts(request.facts)))
    if verification.unsupported and template.figures == "strict":
        named = ", ".join(f"{f.text} (section '{f.section}')" for f in verification.unsupported)
        raise EvaluationError(
            f"{provider.name} wrote a {request.stage} evaluation citing {len(verification.unsupported)} figure(s) that the "
            f"digest and metadata it was given do not hold: {named}. The template {template.path} sets `figures: strict`; "
            "nothing was written (set `figures: mark` to have them marked in the text instead)."
        )
    if verification.unsupported:
        log.warning("%d of %d figures not found in the data: %s", len(verification.unsupported), verification.checked,
                    ", ".join(f.text for f in verification.unsupported))
    text = marked(text, verification.unsupported).rstrip("\n") + "\n\n" + verification.section(template.figures)
    return text, verification


# more than 6 parameters: the parts of one evaluation file, each used once: a carrier would only rename them
def _write(
    exp: Experiment,
    stage: str,
    title: str,
    template_path: str,
    variables: dict[str, Any],
    facts: Any,
    settings: dict[str, Any],
    output_path: str,
    figures: list[str] | None = None,
) -> Written:
    template = load_template(template_path)
    provider = make_provider(settings)
    prompt = template.render(variables)
    request = EvaluationRequest(stage, title, template.system, prompt, template.headings, facts, exp.sections[stage])
    log.info("writing the %s evaluation with %s (prompt %d characters)", stage, provider.name, len(prompt))
    completion = complete(request, provider, template.min_section_chars)
    # The title is the pipeline's, the same whoever writes (an LLM's own title line is replaced).
    body = without_title(completion.text)
    verification = None
    if provider.name != "offline":
        body, verification = checked_figures(body, prompt, request, template, provider)
    text = (
        f"# {title}\n\n"
        + body.rstrip("\n")
        + "\n"
        + figures_section(figures or [], output_path)
        + footer(template, prompt, provider)
    )
    write_text(output_path, text)
    log.info("wrote %s", output_path)
    keys = tuple(getattr(provider, "cache_keys", ()))
    return Written(text, template.sha256, _sha(prompt), provider.describe(), keys, completion.repair,
                   verification.record() if verification else None)


def _digests(exp: Experiment, facts: list[Any], settings: dict[str, Any]) -> str:
    budget = int(settings.get("digest_max_chars", DEFAULT_MAX_CHARS)) // max(1, len(facts))
    return "\n\n".join(exp.digest(f, budget) for f in facts)


def model_inputs(inputs: Any, keys: list[str]) -> list[dict[str, str]]:
    """Per model, its input paths by name, from a rule's named inputs (each a path, or a
    list with one path per model in the same order)."""
    columns = {k: [inputs[k]] if isinstance(inputs[k], str) else list(inputs[k]) for k in keys}
    counts = {len(v) for v in columns.values()}
    if len(counts) != 1:
        raise UserError(f"each model needs every one of its inputs {keys}; got {', '.join(f'{k}: {len(v)}' for k, v in columns.items())}")
    return [dict(zip(keys, paths)) for paths in zip(*columns.values())]


# more than 6 parameters: the rule's inputs and outputs as Snakemake names them, passed through from the script
def evaluate(
    stage: str,
    experiment_id: str,
    models: list[dict[str, str]],
    template: str,
    settings: dict[str, Any],
    output: str,
    figures: list[str] | None = None,
    evaluations: list[str] | None = None,
    cross: str | None = None,
) -> Written:
    """Write the ``stage`` evaluation of experiment ``experiment_id``.

    ``models``: per model, the paths of its inputs by name (``summary``, ``records`` and
    whatever else the experiment's facts read); ``evaluations``: the single-model
    evaluations (cross-model stage); ``cross``: the cross-model evaluation (meta stage).
    """
    exp = experiment(experiment_id)
    if not models:
        raise UserError(f"the {stage} evaluation of experiment {exp.id} needs the outputs of at least one model")
    facts = [exp.model_facts(**paths) for paths in models]
    summaries = [json.loads(Path(paths["summary"]).read_text(encoding="utf-8")) for paths in models]
    variables = exp.variables(stage, facts, summaries)
    if stage == "single-model":
        (model_facts,), (summary,) = facts, summaries
        # Figures to three significant digits (float rounding must not change the prompt).
        metadata = rounded({k: v for k, v in summary.items() if k not in exp.summary_details}, 3)
        variables = {
            "model": model_facts.model,
            "metadata": json.dumps(metadata, indent=2, sort_keys=True, ensure_ascii=False),
            "digest": _digests(exp, facts, settings),
            **variables,
        }
        title = exp.title(stage, model_facts.model)
        facts_arg: Any = model_facts
    else:
        variables = {"models": ", ".join(f.model for f in facts), "digests": _digests(exp, facts, settings), **variables}
        if stage == "cross-model":
            variables["evaluations"] = "\n\n".join(Path(p).read_text(encoding="utf-8") for p in evaluations or [])
        elif stage == "meta":
            if cross is None:
                raise UserError(f"the meta evaluation of experiment {exp.id} needs the cross-model evaluation")
            variables["cross_evaluation"] = Path(cross).read_text(encoding="utf-8")
        else:
            raise UserError(f"no evaluation stage {stage!r}: the stages are single-model, cross-model and meta")
        title = exp.title(stage)
        facts_arg = facts
    return _write(exp, stage, title, template, variables, facts_arg, settings, output, figures)
