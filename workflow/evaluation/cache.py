"""Content-addressed cache of LLM responses, kept in the repository's tree.

The key is the sha256 of the provider, model, generation parameters, endpoint and
the full conversation (system prompt and messages). A re-run with unchanged
inputs therefore reads every response from here and makes no API call, and the
written evaluation is byte-identical. Entries are small JSON files meant to be
committed with the results; they never hold an API key.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from workflow.atomic import dumps_json, write_text

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "results/cache/evaluations"


def cache_key(request: dict[str, Any]) -> str:
    canonical = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            log.info("cache miss %s", key[:16])
            return None
        self.hits += 1
        log.info("cache hit %s (%s)", key[:16], path)
        return json.loads(path.read_text(encoding="utf-8"))["response"]

    def put(self, key: str, request: dict[str, Any], response: str, usage: dict[str, Any] | None) -> None:
        entry = {"key": key, "request": request, "response": response, "usage": usage or {}}
        write_text(self.path(key), dumps_json(entry))
