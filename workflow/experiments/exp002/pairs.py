"""Experiment 002's pairs: made from the probe set, checked against it, and resolved per
model's tokenizer. Read while planning (rules/exp002.smk), so nothing here imports torch:
a dry run stays quick."""

from __future__ import annotations

import difflib
from typing import Any

from workflow.base.errors import UserError, listed


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


def check_pairs(pairs: list[dict[str, Any]], probes: list[dict[str, Any]], configfile: str) -> list[dict[str, Any]]:
    """``pairs`` checked against what the schema cannot say, each linked to the probe of
    experiment 001 its evaluation compares with: unique ids; a pair's ``probe`` must name a
    probe of the set, wherever the set comes from (a name that is not there is a mistake,
    not a pair without a lens run); a pair that names none is linked to the probe with its
    clean prompt and answer, if the set has one (so the shipped pairs keep their lens
    comparison with the shipped probes, and run without it on a probe set from a file)."""
    ids = [p["id"] for p in pairs]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise UserError(f"{configfile}: pair ids under patching.pairs must be unique; repeated: {listed(repeated)}")
    probe_ids = [p["id"] for p in probes]
    known = set(probe_ids)
    by_text = {(p["prompt"], p["answer"]): p["id"] for p in reversed(probes)}
    linked = []
    for pair in pairs:
        probe = pair.get("probe")
        if probe is None:
            found = by_text.get((pair.get("clean"), pair.get("clean_answer")))
            linked.append(pair if found is None else {**pair, "probe": found})
            continue
        if probe not in known:
            close = difflib.get_close_matches(str(probe), probe_ids, n=1, cutoff=0.6)
            raise UserError(
                f"{configfile}: pair {pair['id']!r} names probe {probe!r}, which is not one of the probes "
                f"({listed(probe_ids)}){f'; did you mean {close[0]!r}?' if close else ''}; fix patching.pairs or drop the "
                "key (a pair without it is linked to the probe with its clean prompt and answer, if there is one)"
            )
        linked.append(pair)
    return linked
