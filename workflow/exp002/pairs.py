"""Experiment 002's pairs: made from the probe set, checked against it, and resolved per
model's tokenizer. Read while planning (rules/exp002.smk), so nothing here imports torch:
a dry run stays quick."""

from __future__ import annotations

from typing import Any

from workflow.errors import UserError


def derive_pairs(probes: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Pairs made from a probe set (config patching.from_probes): the first ``count`` probes
    that have a partner, each patched against another probe of its relation and direction
    (the same template, another subject) whose answer differs. The partner is picked per
    model (``resolve_pair``): the first candidate whose prompt has as many tokens."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for probe in probes:
        if probe.get("relation"):
            groups.setdefault((probe["relation"], probe.get("direction"), bool(probe.get("reverse_of"))), []).append(probe)
    pairs = []
    for probe in probes:
        if len(pairs) >= count:
            break
        group = groups.get((probe.get("relation"), probe.get("direction"), bool(probe.get("reverse_of"))), [])
        start = next((i for i, p in enumerate(group) if p is probe), None)
        if start is None:
            continue
        # The probes after it first, then those before: partners differ from probe to probe.
        others = [p for p in group[start + 1 :] + group[:start] if p["answer"] != probe["answer"]]
        if others:
            pairs.append({
                "id": probe["id"], "clean": probe["prompt"], "clean_answer": probe["answer"], "probe": probe["id"],
                "corrupted_candidates": [[p["prompt"], p["answer"]] for p in others],
            })
    return pairs


def resolve_pair(tokenizer, pair: dict[str, Any], model_key: str = "") -> dict[str, Any]:
    """``pair`` itself, or for a pair made from the probe set, with its partner for this
    model's tokenizer: the first candidate whose prompt has as many tokens as the clean one,
    differs from it, and whose answer starts with another token."""
    if "corrupted" in pair:
        return pair
    clean = tokenizer(pair["clean"], add_special_tokens=True)["input_ids"]
    answer = tokenizer(pair["clean_answer"], add_special_tokens=False)["input_ids"][:1]
    for prompt, other_answer in pair["corrupted_candidates"]:
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if len(ids) == len(clean) and ids != clean and tokenizer(other_answer, add_special_tokens=False)["input_ids"][:1] != answer:
            return {k: v for k, v in pair.items() if k != "corrupted_candidates"} | {"corrupted": prompt, "corrupted_answer": other_answer, "from_probes": True}
    raise UserError(
        f"pair {pair['id']!r} on model {model_key!r} (made from the probe set): none of the {len(pair['corrupted_candidates'])} "
        f"other probes of its relation has a prompt of {len(clean)} tokens with another answer, so it cannot be patched "
        "position by position; it is left out on this model"
    )


def check_pairs(pairs: list[dict[str, Any]], probe_ids: list[str], configfile: str, strict: bool = True) -> None:
    """What the schema cannot say about patching.pairs: unique ids, and a ``probe`` that is
    one of experiment 001's probes. With ``strict`` off (the probe set comes from a file or
    the shipped relations, not the config's list), a pair may name a probe the set does not
    have: it is patched all the same, and its evaluation says it has no lens run to compare."""
    ids = [p["id"] for p in pairs]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise UserError(f"{configfile}: pair ids under patching.pairs must be unique; repeated: {', '.join(repeated)}")
    for pair in pairs:
        probe = pair.get("probe")
        if strict and probe is not None and probe not in probe_ids:
            raise UserError(
                f"{configfile}: pair {pair['id']!r} names probe {probe!r}, which is not one of the probes "
                f"({', '.join(probe_ids)}); fix patching.pairs or drop the key"
            )
