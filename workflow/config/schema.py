"""Config checks beyond the JSON schema, and readable schema errors."""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import yaml

from workflow.base.errors import UserError
from workflow.config.probes import load

RESERVED_MODEL_KEYS = ("cross-model", "meta")
# Keys of a model entry that say where its weights come from: all that prepare_model reads.
SOURCE_KEYS = ("source", "repo", "revision", "trust_remote_code", "path", "package", "file", "assemble", "weights")
# Keys that change no result: a label, and what a scheduler is asked for.
# Keys of a model entry that decide no result: its description, what its jobs ask a scheduler
# for, and which experiments it runs (each experiment's jobs run the same whatever the others).
LABEL_KEYS = ("description", "resources", "experiments")


def check_top_level_keys(config: dict[str, Any], schema: dict[str, Any], where: str) -> None:
    """Every top-level key unknown to the schema, named at once (with the known key spelt like
    each), before anything reads their values."""
    import difflib

    known = list(schema.get("properties", {}))
    unknown = [str(k) for k in config if k not in known]
    if unknown:
        hints = [f"{k!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, known, n=1, cutoff=0.6)) else "")
                 for k in unknown]
        raise UserError(f"{where}: unknown top-level key{'s' if len(unknown) > 1 else ''} {', '.join(hints[:10])}; "
                        f"the keys are {', '.join(known)} (config/schema.yaml)")


def config_path_of(error) -> str:
    """'models.gemma.source'-style path of a jsonschema ValidationError."""
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def schema_violation(error: BaseException):
    """The jsonschema ValidationError behind snakemake.utils.validate's WorkflowError, if any."""
    from jsonschema.exceptions import ValidationError

    cause = error.__cause__ or error.__context__
    return cause if isinstance(cause, ValidationError) else None


def describe_validation_error(error, configfile: str, overrides: dict[str, Any] | None = None) -> str:
    """One readable sentence naming the file (or ``--config``), the key and what is wrong.

    ``overrides``: the values given with ``--config``; a key among them is blamed on it.
    """
    from jsonschema.exceptions import best_match

    if getattr(error, "context", None):
        # One of several forms (oneOf): leave out the forms whose type the value does not
        # have ("is not of type 'object'" of a list), then name the deepest error.
        relevant = [e for e in error.context if not (e.validator == "type" and not e.relative_path)]
        if relevant:
            deepest = max(len(e.absolute_path) for e in relevant)
            error = best_match([e for e in relevant if len(e.absolute_path) == deepest]) or error
        else:
            error = best_match(error.context) or error
    key = config_path_of(error)
    if overrides and _given_in(overrides, list(error.absolute_path)):
        configfile = "--config on the command line"
    hint = ""
    if error.validator == "additionalProperties" or error.validator == "unevaluatedProperties":
        hint = _unknown_key(error)
    elif error.validator == "pattern" and key.endswith("prompt"):
        hint = " (the prompt is empty or blank)"
    elif error.validator == "pattern" and key.endswith("max_memory"):
        hint = " (a device: cpu, mps, cuda or cuda:N)"
    elif error.validator == "pattern" and ".max_memory." in key:
        hint = " (a memory size: bytes, or a number with a unit: 300MB, 20GiB)"
    elif error.validator == "required" and isinstance(error.instance, dict):
        hint = _misspelt(error)
    elif error.validator == "not" and key == "models":
        hint = (" (a model key names its files, results/NNN/evaluation-KEY.md: cross-model and meta, with or without "
                "a suffix, are the cross-model and meta-evaluations' names; choose another key)")
    return f"{configfile}: invalid value at key {key!r}: {error.message}{hint}"


def _unknown_key(error) -> str:
    """For a key the schema does not know: the known key spelt like it, if any."""
    import difflib

    known = list(error.schema.get("properties", {}))
    for key in (k for k in error.instance if isinstance(k, str) and k not in known):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            return f" (unknown key {key!r}: did you mean {close[0]!r}?)"
    return " (unknown key: check its spelling against config/schema.yaml)"


def _misspelt(error) -> str:
    """For a required key that is missing: the key given instead, where one is spelt like it
    (``sorce:`` for ``source:``)."""
    import difflib

    known = set(error.schema.get("properties", {}))
    given = [k for k in error.instance if isinstance(k, str) and k not in known]
    for missing in (k for k in error.validator_value if k not in error.instance):
        close = difflib.get_close_matches(missing, given, n=1, cutoff=0.6)
        if close:
            return f" (the key {close[0]!r} is given instead: did you mean {missing!r}?)"
    return ""


def check_config(config: dict[str, Any], configfile: str, base: str = ".") -> None:
    """Cross-field checks the schema cannot express; ``base``: the workflow directory."""
    for key in config["models"]:
        if key in RESERVED_MODEL_KEYS:
            raise UserError(f"{configfile}: model key {key!r} is reserved for a file name; rename it")
        entry = config["models"][key]
        if "weights" in entry and entry["source"] not in ("gguf", "package"):
            raise UserError(
                f"{configfile}: models.{key}.weights applies to GGUF files (source: gguf or package), and "
                f"model {key!r} has source {entry['source']!r}; remove the key"
            )
        backend = entry.get("backend", config.get("backend", "auto"))
        if backend == "llamacpp" and entry["source"] not in ("gguf", "package"):
            where = f"models.{key}.backend" if "backend" in entry else "backend"
            raise UserError(
                f"{configfile}: {where} is llamacpp, which runs GGUF files, and model {key!r} has source "
                f"{entry['source']!r}; give the model a backend of its own (models.{key}.backend: auto)"
            )
        if "llamacpp" in entry and backend != "llamacpp":
            raise UserError(f"{configfile}: models.{key}.llamacpp applies to backend: llamacpp, and model {key!r} runs "
                            f"with backend {backend}; remove the key or set models.{key}.backend: llamacpp")
        if backend == "llamacpp":
            if importlib.util.find_spec("llama_cpp") is None:
                raise UserError(f"{configfile}: model {key!r} runs with backend llamacpp, and llama-cpp-python is not "
                                "installed: run `make llamacpp` (docs/large-models.md, \"The engine you chat with\")")

    # The probe set, loaded and checked (unique ids, reverse_of naming a probe, ...).
    load(config["probes"], base, configfile)


def model_entry(config: dict[str, Any], key: str) -> dict[str, Any]:
    """The catalog entry of model ``key``, or a clear error listing the known keys."""
    try:
        return config["models"][key]
    except KeyError:
        known = ", ".join(config["models"]) or "(none)"
        raise UserError(
            f"unknown model {key!r}: config/config.yaml lists {known}. "
            "Add it under `models:` or fix the target's file name."
        ) from None


def _given_in(overrides: dict[str, Any], path: list) -> bool:
    """Whether the value at ``path`` was set by ``overrides`` (itself or a map or list holding it)."""
    node: Any = overrides
    for part in path:
        if isinstance(node, list):
            return True
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return bool(path)


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> list[dict[str, Any]]:
    """``schema`` and the schemas it includes by ``$ref``, ``allOf`` and the alternatives of
    ``oneOf`` and ``anyOf`` (a probe set is a list of probes or a mapping), flattened."""
    found = []
    pending = [schema]
    while pending:
        node = pending.pop()
        if not isinstance(node, dict):
            continue
        if "$ref" in node:
            target: Any = root
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            pending.append(target)
        for key in ("allOf", "oneOf", "anyOf"):
            pending.extend(node.get(key, []))
        found.append(node)
    return found


def _accepts_string(schemas: list[dict[str, Any]], value: str) -> bool:
    types: set[str] = set()
    for node in schemas:
        kind = node.get("type")
        types.update([kind] if isinstance(kind, str) else kind or [])
        if "enum" in node and value in node["enum"]:
            return True
        if node.get("const") == value:
            return True
    return not types or "string" in types


def coerce_strings(config: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """Values of ``config`` read as YAML where the schema expects no string there.

    ``snakemake --config lens='{top_k: 10}'`` hands nested values over as strings
    ('10'); where the schema wants an integer, number, boolean or null, the string is
    read as YAML (10). A value the schema accepts as a string stays a string.
    """
    root = root if root is not None else schema
    schemas = _resolve(schema, root)
    if isinstance(config, dict):
        for key in list(config):
            child: dict[str, Any] = {}
            for node in schemas:
                if key in node.get("properties", {}):
                    child = {"allOf": [child, node["properties"][key]]}
                elif isinstance(node.get("additionalProperties"), dict):
                    child = {"allOf": [child, node["additionalProperties"]]}
            config[key] = coerce_strings(config[key], child, root)
        return config
    if isinstance(config, list):
        items = [node["items"] for node in schemas if isinstance(node.get("items"), dict)]
        return [coerce_strings(item, {"allOf": items}, root) for item in config]
    if isinstance(config, str) and not _accepts_string(schemas, config):
        try:
            parsed = yaml.safe_load(config)
        except yaml.YAMLError:
            return config
        return parsed if not isinstance(parsed, (dict, list)) else config
    return config


def source_params(entry: dict[str, Any]) -> dict[str, Any]:
    """What of a model entry decides its prepared weights (a rule's params: nothing else
    re-runs the dequantisation)."""
    return {k: entry[k] for k in SOURCE_KEYS if k in entry}


def run_params(entry: dict[str, Any]) -> dict[str, Any]:
    """What of a model entry decides a lens run's results: the source, device, dtype and
    backend, not its description or scheduler resources."""
    return {k: v for k, v in entry.items() if k not in LABEL_KEYS}


DEFAULT_OFFLOAD_FOLDER = "resources/offload"


def effective_placement(entry: dict[str, Any], placement: dict[str, Any] | None) -> dict[str, Any]:
    """The top-level ``placement`` config with the model's own ``placement`` over it."""
    merged = {"max_memory": {}, "offload_folder": DEFAULT_OFFLOAD_FOLDER, **(placement or {})}
    merged.update(entry.get("placement") or {})
    return merged


SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(value: Any, key: str) -> int:
    """Bytes of ``value``: an integer, or a number with a unit ("300MB", "20GiB")."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*", str(value), flags=re.IGNORECASE)
    if not match:
        raise UserError(
            f"config key {key}: {value!r} is not a memory size; write bytes (300000000) or a number with a unit "
            "(300MB, 20GiB, 1.5GB)"
        )
    return int(float(match.group(1)) * SIZE_UNITS[(match.group(2) or "B").upper()])


def device_key(name: str, key: str) -> int | str:
    """accelerate's name for a device of ``max_memory``: a GPU index, cpu or mps."""
    name = str(name).strip().lower()
    if name in ("cpu", "mps"):
        return name
    if name == "cuda":
        return 0
    if name.startswith("cuda:") and name[5:].isdigit():
        return int(name[5:])
    raise UserError(f"config key {key}: {name!r} is not a device; use cpu, mps, cuda or cuda:N")
