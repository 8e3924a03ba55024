"""Limits on the size of what a user's YAML holds, checked before anything walks it."""

from __future__ import annotations

from typing import Any

from workflow.base.errors import UserError

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


def check_yaml_file(path: str, where: str | None = None) -> None:
    """``check_size`` of a YAML file read as its node graph, before anything builds its values:
    Snakemake's own reading of the config file copies every mapping an alias names once per
    use, so a few lines of aliased mappings grow to gigabytes before the config can be
    measured. Each node's expanded size is counted once (aliases share nodes)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            root = yaml.compose(fh)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # Snakemake reads it next and says what is wrong with it
    where = where or path
    sizes: dict[int, int] = {}

    def size(node, depth: int, top: str) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if depth > MAX_CONFIG_DEPTH:
            raise UserError(f"{where}: key {top or '(top level)'!r} nests deeper than {MAX_CONFIG_DEPTH} levels; flatten it")
        total = 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                total += size(value, depth + 1, top or str(getattr(key, "value", "")))
        elif isinstance(node, yaml.SequenceNode):
            for value in node.value:
                total += size(value, depth + 1, top)
        if total > MAX_CONFIG_VALUES:
            raise UserError(
                f"{where}: key {top or '(top level)'!r} holds more than {MAX_CONFIG_VALUES:,} values once its YAML "
                "aliases (*name) are expanded, far more than a config or a probe set needs; remove the aliases or the key"
            )
        sizes[id(node)] = total
        return total

    if root is not None:
        size(root, 0, "")
