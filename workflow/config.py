"""Config checks beyond the JSON schema, and readable schema errors."""

from __future__ import annotations

from typing import Any

from workflow.errors import UserError

RESERVED_MODEL_KEYS = ("cross-model", "meta")


def config_path_of(error) -> str:
    """'models.gemma.source'-style path of a jsonschema ValidationError."""
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def schema_violation(error: BaseException):
    """The jsonschema ValidationError behind snakemake.utils.validate's WorkflowError, if any."""
    from jsonschema.exceptions import ValidationError

    cause = error.__cause__ or error.__context__
    return cause if isinstance(cause, ValidationError) else None


def describe_validation_error(error, configfile: str) -> str:
    """One readable sentence naming the file, the key and what is wrong."""
    from jsonschema.exceptions import best_match

    if getattr(error, "context", None):
        error = best_match(error.context) or error
    key = config_path_of(error)
    hint = ""
    if error.validator == "additionalProperties" or error.validator == "unevaluatedProperties":
        hint = " (unknown key: check its spelling against config/schema.yaml)"
    elif error.validator == "pattern" and key.endswith("prompt"):
        hint = " (the prompt is empty or blank)"
    return f"{configfile}: invalid value at key {key!r}: {error.message}{hint}"


def check_config(config: dict[str, Any], configfile: str) -> None:
    """Cross-field checks the schema cannot express."""
    for key in config["models"]:
        if key in RESERVED_MODEL_KEYS:
            raise UserError(f"{configfile}: model key {key!r} is reserved for a file name; rename it")
    ids = [p["id"] for p in config["probes"]]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UserError(f"{configfile}: probe ids must be unique; repeated: {', '.join(duplicates)}")
    for probe in config["probes"]:
        target = probe.get("reverse_of")
        if target is not None and target not in ids:
            raise UserError(
                f"{configfile}: probe {probe['id']!r} has reverse_of {target!r}, which is not a probe id"
            )


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
