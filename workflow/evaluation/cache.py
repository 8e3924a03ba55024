"""Content-addressed cache of LLM responses, kept in the repository's tree.

The key is the sha256 of the provider, model, generation parameters, endpoint and
the full conversation (system prompt and messages). A re-run with unchanged
inputs therefore reads every response from here and makes no API call, and the
written evaluation is byte-identical. Entries are small JSON files meant to be
committed with the results; they never hold an API key or an endpoint's credentials
(the request names the endpoint without them: workflow/base/secrets.py).

On another machine the same pipeline computes the same figures up to float rounding,
and a figure in a prompt can come out one unit higher or lower in its last digit. When
no entry has the exact key, ``get`` therefore also accepts an entry whose request is the
same but for such numbers (``same_but_rounding``), and says so in the log: a newcomer's
run then uses the committed response instead of paying for a new one that would read
differently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

from workflow.base.atomic import dumps_json, write_text
from workflow.base.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "results/cache/evaluations"


def cache_key(request: dict[str, Any]) -> str:
    canonical = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# A decimal number as the digests write them (0.803, 1.2e-05, 12.50); integers are
# matched as part of the text, exactly (layers, ranks and counts are not rounding).
DECIMAL = re.compile(r"(?<![\w.])-?\d+\.\d+(?:[eE][-+]?\d+)?|(?<![\w.])-?\d+[eE][-+]?\d+")


def _last_unit(number: str) -> Decimal:
    """One unit in the last written digit of ``number`` (0.803 -> 0.001, 1.2e-05 -> 1e-06)."""
    return Decimal(1).scaleb(Decimal(number).as_tuple().exponent)


def same_but_rounding(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are the same text but for decimal numbers that differ by at
    most one unit in the last digit written (of the more precise one)."""
    if a == b:
        return True
    numbers_a, numbers_b = DECIMAL.findall(a), DECIMAL.findall(b)
    if len(numbers_a) != len(numbers_b) or DECIMAL.split(a) != DECIMAL.split(b):
        return False
    for x, y in zip(numbers_a, numbers_b):
        if x != y and abs(Decimal(x) - Decimal(y)) > min(_last_unit(x), _last_unit(y)):
            return False
    return True


def _same_request_but_rounding(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if {k: v for k, v in a.items() if k != "messages"} != {k: v for k, v in b.items() if k != "messages"}:
        return False
    if len(a.get("messages", [])) != len(b.get("messages", [])):
        return False
    return all(
        x.get("role") == y.get("role") and same_but_rounding(x.get("content", ""), y.get("content", ""))
        for x, y in zip(a["messages"], b["messages"])
    )


def _entry(path: Path) -> dict[str, Any] | None:
    """A cache entry, or None when the file is damaged (then it is a miss, and the answer
    asked for again replaces it) or cannot be read (``check_storable`` stops a call)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        log.warning("unreadable response-cache entry %s (%s): skipped", path, error)
        return None
    try:
        entry = json.loads(text)
        if isinstance(entry, dict) and isinstance(entry.get("response"), str) and isinstance(entry.get("request"), dict):
            return entry
        problem = "it lacks its request or response"
    except ValueError as error:
        problem = str(error)
    log.warning("damaged response-cache entry %s (%s): taken as a miss; the answer asked for again replaces it", path, problem)
    return None


class ResponseCache:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str, request: dict[str, Any] | None = None) -> str | None:
        """The cached response for ``key``; failing that, with ``request``, the response to
        a request that differs from it only in the last digit of some numbers."""
        path = self.path(key)
        entry = _entry(path) if path.is_file() else None
        if entry is not None:
            log.info("cache hit %s (%s)", key[:16], path)
            return entry["response"]
        if request is not None and self.directory.is_dir():
            for candidate in sorted(self.directory.glob("*/*.json")):
                entry = _entry(candidate)
                if entry is not None and _same_request_but_rounding(entry["request"], request):
                    log.info("cache hit %s for %s: the same request but for numbers one unit apart in their last "
                             "digit (float rounding on another machine)", entry["key"][:16], key[:16])
                    return entry["response"]
        log.info("cache miss %s", key[:16])
        return None

    def check_storable(self, key: str) -> None:
        """That the answer to ``key`` can be stored, checked before it is asked for: a paid
        answer that cannot be kept would be paid for again on every run."""
        path = self.path(key)
        if path.exists() and not path.is_file():
            raise UserError(
                f"the response-cache entry {path} is a directory (or another thing that is not a file), where the answer "
                f"to this request is to be stored: remove it (rm -r '{path}') and re-run. No request was made"
            )
        if path.exists():
            try:
                open(path, "rb").close()
            except OSError as error:  # it may hold this very answer: not asked for again
                raise UserError(
                    f"the response-cache entry {path} cannot be read ({error.strerror or error}): make it readable "
                    f"(chmod u+rw '{path}') or remove it to ask again, and re-run. No request was made"
                ) from None
        folder = path.parent
        while not folder.exists() and folder != folder.parent:  # the nearest folder there is
            folder = folder.parent
        problem = ("is not a folder" if not folder.is_dir()
                   else "is not writable" if not os.access(folder, os.W_OK | os.X_OK) else None)
        if problem:
            raise UserError(
                f"the response cache {self.directory} cannot store answers: {folder} {problem}. Set evaluation.cache_dir "
                "to a folder you can write (or fix that one), and re-run. No request was made"
            )

    def put(self, key: str, request: dict[str, Any], response: str, usage: dict[str, Any] | None) -> None:
        entry = {"key": key, "request": request, "response": response, "usage": usage or {}}
        write_text(self.path(key), dumps_json(entry))
