"""Who writes an evaluation: the provider interface and its implementations.

A provider turns an ``EvaluationRequest`` (the rendered prompt, the headings the
template requires, and the computed facts) into markdown. The rules never see
which provider runs: ``make_provider`` picks it from the stage's evaluation
settings.

- ``offline``: the deterministic analyst (no network, no LLM).
- ``openai``: the official ``openai`` SDK, Chat Completions; with ``base_url`` it
  talks to any OpenAI-compatible server (llama.cpp, vLLM, Ollama).
- ``anthropic``: the official ``anthropic`` SDK, Messages API.

API keys come from the environment only (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``),
and so do an endpoint's credentials (``OPENAI_BASE_URL``, ``ANTHROPIC_BASE_URL``: the
whole URL; ``base_url`` names it without them). None is recorded: ``describe()`` lists
what determines the output, not credentials (workflow/base/secrets.py).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from workflow.base.errors import UserError
from workflow.base.secrets import KEY_VARIABLES, api_key, check_endpoint, endpoint, redact
from workflow.evaluation import analyst
from workflow.evaluation.cache import DEFAULT_CACHE_DIR, ResponseCache, cache_key

log = logging.getLogger(__name__)

PROVIDERS = ("offline", "openai", "anthropic")
STAGES = ("single-model", "cross-model", "meta")


@dataclass(frozen=True)
class EvaluationRequest:
    stage: str  # single-model | cross-model | meta
    title: str
    system: str
    prompt: str
    headings: tuple[str, ...]
    facts: Any = field(compare=False, repr=False)
    # The offline analyst's writer of each heading (the experiment's; workflow/evaluation/experiment.py).
    sections: Any = field(default=None, compare=False, repr=False)


class ProviderError(UserError):
    """An API call that failed for good (after the SDK's bounded retries)."""


class Provider(Protocol):
    name: str

    def describe(self) -> dict[str, Any]:
        """Settings that determine the output (recorded; never secrets)."""

    def complete(self, request: EvaluationRequest) -> str:
        """The markdown for ``request``."""

    def repair(self, request: EvaluationRequest, draft: str, problems: dict[str, str]) -> str | None:
        """The sections of ``problems`` (heading -> what is wrong) written again, after
        ``draft`` broke the content contract; None if not possible."""


class OfflineProvider:
    """The deterministic offline analyst (no network, no LLM)."""

    name = "offline"

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name}

    def complete(self, request: EvaluationRequest) -> str:
        return analyst.write(request.stage, request.title, request.headings, request.facts, request.sections or {})

    def repair(self, request: EvaluationRequest, draft: str, problems: dict[str, str]) -> str | None:
        return None  # its output is fixed by its rules; a broken contract is a bug


def repair_instruction(request: EvaluationRequest, problems: dict[str, str]) -> str:
    """Ask for the failing sections only: the good ones of the first answer are kept (a
    small model asked to rewrite everything answered with the headings alone)."""
    headings = "\n".join(f"## {h}" for h in problems)
    return (
        "Your answer does not meet the required structure: "
        + "; ".join(problems.values())
        + ". Write only these sections now, each under its level-2 heading, in this order, each with several "
        "sentences of content that cite figures from the digest (the other sections of your answer are kept):\n"
        + headings
    )


class ChatProvider:
    """Shared logic of the LLM providers: settings, key, cache, repair conversation."""

    name = "chat"

    def __init__(self, settings: dict[str, Any]):
        check_settings(settings)
        self._api_key = api_key(self.name)
        self.model = settings["model"]
        self.temperature = settings.get("temperature")
        self.max_tokens = int(settings.get("max_tokens", 4096))
        self.seed = settings.get("seed")
        self.timeout = float(settings.get("timeout", 300))
        self.max_retries = int(settings.get("max_retries", 4))
        self.base_url = settings.get("base_url")  # without credentials (check_settings)
        self.cache = ResponseCache(settings.get("cache_dir") or DEFAULT_CACHE_DIR)
        self.cache_keys: list[str] = []  # every request of this run, for provenance

    def describe(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "base_url": self.base_url,
        }

    def complete(self, request: EvaluationRequest) -> str:
        return self.chat(request.system, [{"role": "user", "content": request.prompt}])

    def repair(self, request: EvaluationRequest, draft: str, problems: dict[str, str]) -> str | None:
        log.warning("%s evaluation breaks the content contract (%s); asking once for those sections",
                    request.stage, "; ".join(problems.values()))
        messages = [
            {"role": "user", "content": request.prompt},
            {"role": "assistant", "content": draft},
            {"role": "user", "content": repair_instruction(request, problems)},
        ]
        return self.chat(request.system, messages)

    def chat(self, system: str, messages: list[dict[str, str]]) -> str:
        request = {**self.describe(), "system": system, "messages": messages}
        key = cache_key(request)
        self.cache_keys.append(key)
        cached = self.cache.get(key, request)
        if cached is not None:
            return cached
        self.cache.check_storable(key)  # before the call: an answer paid for must be kept
        text, usage = self._call(system, messages)
        log.info("%s %s answered: %d characters, usage %s", self.name, self.model, len(text), usage)
        if text.strip():
            self.cache.put(key, request, text, usage)
        else:  # the contract check refuses it; the next run asks again
            log.warning("%s %s answered with nothing; not cached", self.name, self.model)
        return text

    @property
    def where(self) -> str:
        return self.base_url or f"the {self.name} API"

    def _failure(self, error: Exception) -> ProviderError:
        status = getattr(error, "status_code", None)
        what = f"HTTP {status}" if status else type(error).__name__
        body = getattr(error, "body", None)
        if body and str(body) not in str(error):  # a compatible server's reason ({'detail': ...}) is in the body
            what += f" ({body})"
        # A server may echo the request's credentials in its error text: never pass them on.
        return ProviderError(redact(
            f"{self.name} request to {self.where} (model {self.model!r}) failed with {what} after up to "
            f"{self.max_retries} retries: {str(error).rstrip('.')}. Nothing was written; re-run when the service is back "
            "(responses already received are cached)."
        ))

    def _incomplete(self, why: str) -> ProviderError:
        """An answer that did not end as a complete one: an error, never cached."""
        return ProviderError(redact(f"{self.name} answer from {self.where} (model {self.model!r}) {why}. Nothing was "
                                    "written or cached; re-run to ask again."))

    def _cut_by_limit(self) -> ProviderError:
        return ProviderError(
            f"{self.name} answer from {self.where} (model {self.model!r}) was cut off at its token limit "
            f"(evaluation.max_tokens = {self.max_tokens}): raise evaluation.max_tokens (for this stage: "
            "evaluation.stages.<stage>.max_tokens). Nothing was written or cached."
        )

    def _client_endpoint(self) -> dict[str, Any]:
        """The SDK client's ``base_url`` and ``default_query``: the URL to call, credentials
        included, with its query apart (the SDKs append their paths to the whole
        ``base_url``, a query included, which breaks it)."""
        url = endpoint(self.name, self.base_url)
        if url is None:
            return {"base_url": None}
        split = urlsplit(url)
        return {"base_url": urlunsplit(split._replace(query="")),
                "default_query": dict(parse_qsl(split.query, keep_blank_values=True)) or None}

    def _call(self, system: str, messages: list[dict[str, str]]) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError


class ProviderTimeout(Exception):
    """The whole answer took longer than the ``timeout`` setting."""


class Progress:
    """Log lines while an answer streams in (every PROGRESS_EVERY seconds), and the
    deadline of the whole answer."""

    def __init__(self, provider: ChatProvider, timeout: float):
        self.provider, self.timeout = provider, timeout
        self.started = self.last = time.monotonic()

    def received(self, pieces: int) -> None:
        now = time.monotonic()
        if now - self.started > self.timeout:
            raise ProviderTimeout(
                f"the answer took longer than evaluation.timeout ({self.timeout:g} s; {pieces} pieces received): raise "
                "timeout for a slow local model"
            )
        if now - self.last >= PROGRESS_EVERY:
            self.last = now
            log.info("%s %s: %d pieces of the answer in %.0f s", self.provider.name, self.provider.model, pieces, now - self.started)

    def done(self, pieces: int) -> None:
        log.info("%s %s: answer complete, %d pieces in %.1f s", self.provider.name, self.provider.model, pieces,
                 time.monotonic() - self.started)


PROGRESS_EVERY = 10.0  # seconds between progress lines in the job's log


class Waiting:
    """While an answer that is not streamed is awaited: a log line every PROGRESS_EVERY
    seconds with the time waited (the SDK's ``timeout`` ends the wait)."""

    def __init__(self, provider: ChatProvider):
        self.provider = provider
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="waiting", daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self.stop.wait(PROGRESS_EVERY):
            log.info("%s %s: waiting for the answer, %.0f s of at most %g s", self.provider.name, self.provider.model,
                     time.monotonic() - started, self.provider.timeout)

    def __enter__(self) -> Waiting:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


class OpenAIProvider(ChatProvider):
    name = "openai"

    def _call(self, system, messages):
        import openai

        client = openai.OpenAI(
            api_key=self._api_key, timeout=self.timeout, max_retries=self.max_retries, **self._client_endpoint()
        )
        kwargs: dict[str, Any] = {"model": self.model}
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        # The official API takes max_completion_tokens (max_tokens is deprecated there);
        # compatible servers (llama.cpp, vLLM, Ollama) take max_tokens.
        kwargs["max_tokens" if self.base_url else "max_completion_tokens"] = self.max_tokens
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if not self.base_url:  # the official API sends usage at the end of a stream only when asked
            kwargs["stream_options"] = {"include_usage": True}
        chat = [{"role": "system", "content": system}] if system else []
        progress = Progress(self, self.timeout)
        parts: list[str] = []
        usage: dict[str, Any] = {}
        finish = None
        stream = None
        try:
            # Streamed: a local model can take many minutes for one answer; the log shows it
            # coming, and ``timeout`` bounds the whole answer, not only the wait between tokens.
            stream = client.chat.completions.create(messages=chat + messages, stream=True, **kwargs)
            for chunk in stream:
                if not hasattr(chunk, "choices"):  # a body that is not a Chat Completions stream
                    raise ValueError(f"the server answered with something that is not a chat completion: {str(chunk)[:200]!r}")
                if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
                    progress.received(len(parts))
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
                if getattr(chunk, "usage", None):
                    usage = chunk.usage.model_dump()
        except openai.APIError as error:
            raise self._failure(error) from None
        except (ProviderTimeout, ValueError) as error:  # ValueError: an event that is not JSON
            if stream is not None:
                stream.close()
            raise self._failure(error) from None
        progress.done(len(parts))
        if finish == "length":
            raise self._cut_by_limit()
        if finish is None:
            raise self._incomplete(f"ended before the answer was complete (no finish reason after {len(parts)} pieces: "
                                   "the connection was cut or the body was not a stream)")
        return "".join(parts), {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens")}


class AnthropicProvider(ChatProvider):
    name = "anthropic"

    def _call(self, system, messages):
        import anthropic

        client = anthropic.Anthropic(
            api_key=self._api_key, timeout=self.timeout, max_retries=self.max_retries, **self._client_endpoint()
        )
        kwargs: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens}
        if system:
            kwargs["system"] = system
        if self.temperature is not None:
            # SDK 1.0 dropped sampling parameters from the signature; the API still takes
            # them on models that support them (the newest accept only the default).
            kwargs["extra_body"] = {"temperature": self.temperature}
        try:
            with Waiting(self):
                response = client.messages.create(messages=messages, **kwargs)
        except (anthropic.APIError, ValueError) as error:  # ValueError: a body that is not JSON
            raise self._failure(error) from None
        if not hasattr(response, "content") or not hasattr(response, "stop_reason"):
            raise self._incomplete(f"is not a Messages API response: {str(response)[:200]!r}")
        if response.stop_reason == "max_tokens":
            raise self._cut_by_limit()
        if response.stop_reason is None:
            raise self._incomplete("ended before the answer was complete (no stop reason)")
        text = "".join(block.text for block in response.content if getattr(block, "type", "") == "text")

        usage = {"input_tokens": response.usage.input_tokens, "output_tokens": response.usage.output_tokens}
        return text, usage


def check_settings(settings: dict[str, Any], stage: str | None = None) -> None:
    """What an LLM provider needs before any request: its key in the environment, a model,
    and an endpoint named without credentials (checked whatever the provider: the settings
    are recorded).

    Called when the workflow is planned, so that a missing key fails before any job runs
    (and before Snakemake removes an evaluation it would have rewritten), and again by the
    provider itself.
    """
    name = settings.get("provider", "offline")
    which = f" (the {stage} evaluation)" if stage else ""
    check_endpoint(name, settings.get("base_url"), which)
    if name == "offline":
        return
    if name not in KEY_VARIABLES:
        raise UserError(f"evaluation.provider {name!r}{which} is not available; use one of: {', '.join(PROVIDERS)}")
    variable = KEY_VARIABLES[name]
    if not api_key(name):
        raise UserError(
            f"evaluation.provider is {name!r}{which} but the environment variable {variable} is not set; "
            f"export it (for a local OpenAI-compatible server any non-empty value works), "
            "or use --config evaluation='{provider: offline}'"
        )
    if not settings.get("model"):
        raise UserError(
            f"evaluation.model is required for provider {name!r}{which}: name the model to ask "
            "(see docs/configuration.md, 'Evaluations written by an LLM')"
        )


def stage_settings(evaluation: dict[str, Any], stage: str) -> dict[str, Any]:
    """The evaluation settings for one stage: the base settings with that stage's overrides."""
    if stage not in STAGES:
        raise ValueError(stage)
    base = {k: v for k, v in evaluation.items() if k != "stages"}
    return {**base, **(evaluation.get("stages") or {}).get(stage, {})}


def make_provider(settings: dict[str, Any]) -> Provider:
    name = settings.get("provider", "offline")
    if name == "offline":
        return OfflineProvider()
    if name == "openai":
        return OpenAIProvider(settings)
    if name == "anthropic":
        return AnthropicProvider(settings)
    raise UserError(f"evaluation.provider {name!r} is not available; use one of: {', '.join(PROVIDERS)}")
