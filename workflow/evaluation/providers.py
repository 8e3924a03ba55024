"""Who writes an evaluation: the provider interface and its implementations.

A provider turns an ``EvaluationRequest`` (the rendered prompt, the headings the
template requires, and the computed facts) into markdown. The rules never see
which provider runs: ``make_provider`` picks it from ``evaluation.provider``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from workflow.errors import UserError
from workflow.evaluation import offline


@dataclass(frozen=True)
class EvaluationRequest:
    stage: str  # single-model | cross-model | meta
    title: str
    system: str
    prompt: str
    headings: tuple[str, ...]
    facts: Any = field(compare=False, repr=False)


class Provider(Protocol):
    name: str

    def describe(self) -> dict[str, Any]:
        """Settings that determine the output (recorded; never secrets)."""

    def complete(self, request: EvaluationRequest) -> str:
        """The markdown for ``request``."""


class OfflineProvider:
    """The deterministic offline analyst (no network, no LLM)."""

    name = "offline"

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name}

    def complete(self, request: EvaluationRequest) -> str:
        return offline.write(request.stage, request.title, request.headings, request.facts)


def make_provider(settings: dict[str, Any]) -> Provider:
    name = settings.get("provider", "offline")
    if name == "offline":
        return OfflineProvider()
    raise UserError(f"evaluation.provider {name!r} is not available; use one of: offline")
