"""Limits on the size of what a user's YAML holds, checked before anything walks it."""

from __future__ import annotations

from typing import Any

from workflow.errors import UserError

# A config holds hundreds of values (thousands with an inline probe set). YAML's anchors and
# aliases let a few lines stand for billions (`b: [*a, *a, ...]` nested): the parser shares
# them, but every later walk (defaults, the schema, its error messages) expands them. A config
# is measured first, with a budget, and refused past it.
MAX_CONFIG_VALUES = 1_000_000
MAX_CONFIG_DEPTH = 50


def check_size(value: Any, where: str) -> None:
    """Refuse a config (or a file read like one) that expands to more than MAX_CONFIG_VALUES
    values or nests deeper than MAX_CONFIG_DEPTH, naming the top-level key that does, before
    anything walks it. Counts values as a walk sees them (an alias once per use), stopping at
    the budget: quick whatever the file claims."""
    count = 0
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        node, depth, top = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise UserError(
                f"{where}: key {top or '(top level)'!r} holds more than {MAX_CONFIG_VALUES:,} values once its YAML "
                "aliases (*name) are expanded, far more than a config or a probe set needs; remove the aliases or the key"
            )
        if depth > MAX_CONFIG_DEPTH:
            raise UserError(f"{where}: key {top or '(top level)'!r} nests deeper than {MAX_CONFIG_DEPTH} levels; flatten it")
        if isinstance(node, dict):
            stack.extend((child, depth + 1, top or str(key)) for key, child in node.items())
        elif isinstance(node, list):
            stack.extend((child, depth + 1, top) for child in node)
