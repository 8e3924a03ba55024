"""The three evaluation stages: gather facts, render the template, ask the provider, write."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflow.atomic import write_text
from workflow.errors import UserError
from workflow.records import rounded
from workflow.evaluation.analysis import ModelFacts, model_facts
from workflow.evaluation.digest import DEFAULT_MAX_CHARS, model_digest
from workflow.evaluation.providers import EvaluationRequest, Provider, make_provider
from workflow.evaluation.templates import PromptTemplate, heading_problems, load_template

log = logging.getLogger(__name__)


class EvaluationError(UserError):
    """The provider's output does not meet the template's contract, even after one repair."""


@dataclass(frozen=True)
class Written:
    """A written evaluation and what made it."""

    text: str
    template_sha256: str
    prompt_sha256: str
    evaluator: dict[str, Any]
    cache_keys: tuple[str, ...]

    def provenance(self) -> dict[str, Any]:
        return {
            "template_sha256": self.template_sha256,
            "prompt_sha256": self.prompt_sha256,
            "evaluator": self.evaluator,
            "cache_keys": list(self.cache_keys),
        }


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def footer(template: PromptTemplate, prompt: str, provider: Provider) -> str:
    """A last line that ties the document to what made it (no timestamps)."""
    settings = ", ".join(f"{k} {v}" for k, v in sorted(provider.describe().items()) if v is not None)
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


def complete(request: EvaluationRequest, provider: Provider) -> str:
    """The provider's text, repaired once if it breaks the heading contract."""
    text = provider.complete(request)
    problems = heading_problems(text, request.headings)
    if problems:
        repaired = provider.repair(request, text, problems)
        if repaired is not None:
            text = repaired
            problems = heading_problems(text, request.headings)
    if problems:
        raise EvaluationError(
            f"{provider.name} wrote a {request.stage} evaluation that breaks the template's heading contract "
            "(after one repair request where the provider allows it): " + "; ".join(problems) + ". Nothing was written."
        )
    return text


def _write(
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
    request = EvaluationRequest(stage, title, template.system, prompt, template.headings, facts)
    log.info("writing the %s evaluation with %s (prompt %d characters)", stage, provider.name, len(prompt))
    text = (
        complete(request, provider).rstrip("\n")
        + "\n"
        + figures_section(figures or [], output_path)
        + footer(template, prompt, provider)
    )
    write_text(output_path, text)
    log.info("wrote %s", output_path)
    keys = tuple(getattr(provider, "cache_keys", ()))
    return Written(text, template.sha256, _sha(prompt), provider.describe(), keys)


def _facts(summary_paths: list[str], records_paths: list[str]) -> list[ModelFacts]:
    if len(summary_paths) != len(records_paths):
        raise UserError("each model needs both its output JSON and its records CSV")
    return [model_facts(s, r) for s, r in zip(summary_paths, records_paths)]


def _digests(facts: list[ModelFacts], settings: dict[str, Any]) -> str:
    budget = int(settings.get("digest_max_chars", DEFAULT_MAX_CHARS)) // max(1, len(facts))
    return "\n\n".join(model_digest(f, budget) for f in facts)


def evaluate_model(
    summary: str, records: str, template: str, settings: dict[str, Any], output: str, figures: list[str] | None = None
) -> Written:
    (facts,) = _facts([summary], [records])
    metadata = json.loads(Path(summary).read_text(encoding="utf-8"))
    # Figures to three significant digits (float rounding must not change the prompt); the
    # identity check's float-noise figures are in the digest, as orders of magnitude.
    metadata = rounded({k: v for k, v in metadata.items() if k not in ("probes", "timings", "packages", "identity_check")}, 3)
    variables = {
        "model": facts.model,
        "metadata": json.dumps(metadata, indent=2, sort_keys=True, ensure_ascii=False),
        "digest": _digests([facts], settings),
    }
    title = f"{facts.model}: layers and logits (experiment 001)"
    return _write("single-model", title, template, variables, facts, settings, output, figures)


def evaluate_cross(
    summaries: list[str],
    records: list[str],
    evaluations: list[str],
    template: str,
    settings: dict[str, Any],
    output: str,
    figures: list[str] | None = None,
) -> Written:
    facts = _facts(summaries, records)
    variables = {
        "models": ", ".join(f.model for f in facts),
        "digests": _digests(facts, settings),
        "evaluations": "\n\n".join(Path(p).read_text(encoding="utf-8") for p in evaluations),
    }
    return _write("cross-model", "Cross-model comparison (experiment 001)", template, variables, facts, settings, output, figures)


def evaluate_meta(
    summaries: list[str], records: list[str], cross: str, template: str, settings: dict[str, Any], output: str
) -> Written:
    facts = _facts(summaries, records)
    probes = [{k: p[k] for k in ("id", "prompt", "answer")} for p in json.loads(Path(summaries[0]).read_text())["probes"]]
    variables = {
        "models": ", ".join(f.model for f in facts),
        "digests": _digests(facts, settings),
        "cross_evaluation": Path(cross).read_text(encoding="utf-8"),
        "lens_settings": json.dumps(facts[0].lens, sort_keys=True),
        "probes": json.dumps(probes, indent=2, ensure_ascii=False),
    }
    return _write("meta", "Methodology critique (experiment 001)", template, variables, facts, settings, output)
