"""Prompt pairs, for every experiment that patches (002's residual patching, 004's
components): made from the probe set, checked against it, resolved and tokenised per model,
and described in a model's JSON. Read while planning (rules/exp002.smk), so nothing here
imports torch: a dry run stays quick."""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workflow.base.errors import UserError, listed
from workflow.config.probes import check_answer_joins, check_answer_space

if TYPE_CHECKING:
    from workflow.model.load import LoadedModel

log = logging.getLogger(__name__)


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


def check_pair_answers(pair: dict[str, Any], where: str) -> dict[str, Any]:
    """``pair`` without its ``answer_joins``, after refusing an answer written joined to its
    prompt's last word (``workflow.config.probes.joins_prompt``) unless the flag says it is meant."""
    label = f"{where}: pair {pair['id']!r}"
    if not check_answer_joins(pair.get("answer_joins"), label):
        for prompt, answer in (("clean", "clean_answer"), ("corrupted", "corrupted_answer")):
            check_answer_space(pair[prompt], pair[answer], label, answer)
    return {k: v for k, v in pair.items() if k != "answer_joins"}


def check_pairs(pairs: list[dict[str, Any]], probes: list[dict[str, Any]], configfile: str) -> list[dict[str, Any]]:
    """``pairs`` checked against what the schema cannot say, each linked to the probe of
    experiment 001 its evaluation compares with: unique ids; a pair's ``probe`` must name a
    probe of the set, wherever the set comes from (a name that is not there is a mistake,
    not a pair without a lens run); a pair that names none is linked to the probe with its
    clean prompt and answer, if the set has one (so the shipped pairs keep their lens
    comparison with the shipped probes, and run without it on a probe set from a file); no
    answer written joined to its prompt's last word unless the pair says so."""
    ids = [p["id"] for p in pairs]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise UserError(f"{configfile}: pair ids under patching.pairs must be unique; repeated: {listed(repeated)}")
    probe_ids = [p["id"] for p in probes]
    known = set(probe_ids)
    by_text = {(p["prompt"], p["answer"]): p["id"] for p in reversed(probes)}
    linked = []
    for pair in pairs:
        if "corrupted" in pair:  # written under patching.pairs; those made from the probe set have checked answers
            pair = check_pair_answers(pair, f"{configfile}, patching.pairs")
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

@dataclass
class TokenisedPair:
    id: str
    clean_ids: list[int]
    corrupted_ids: list[int]
    clean_answer_id: int
    corrupted_answer_id: int
    subject_positions: list[int]  # where the two prompts' tokens differ
    warnings: list[str] = field(default_factory=list)


def _answer_id(tokenizer, pair: dict[str, Any], key: str, warnings: list[str]) -> int:
    ids = tokenizer(pair[key], add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError(f"pair {pair['id']!r}: {key} {pair[key]!r} tokenises to nothing (config key patching.pairs)")
    if len(ids) > 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        warnings.append(f"{key} {pair[key]!r} tokenises into {len(ids)} tokens {pieces}; the first, {pieces[0]!r}, is used")
    return int(ids[0])


def tokenise_pair(tokenizer, pair: dict[str, Any], model_key: str = "") -> TokenisedPair:
    """The pair's token ids; a clear error naming the pair where it cannot be patched."""
    where = f"pair {pair['id']!r}" + (f" on model {model_key!r}" if model_key else "")
    for key in ("clean", "corrupted"):
        if not pair[key].strip():
            raise UserError(f"{where}: the {key} prompt is empty (config key patching.pairs)")
    clean = list(tokenizer(pair["clean"], add_special_tokens=True)["input_ids"])
    corrupted = list(tokenizer(pair["corrupted"], add_special_tokens=True)["input_ids"])
    if len(clean) != len(corrupted):
        show = lambda ids: [tokenizer.decode([i]) for i in ids]  # noqa: E731
        raise UserError(
            f"{where}: the clean prompt {pair['clean']!r} tokenises to {len(clean)} tokens {show(clean)} but the "
            f"corrupted prompt {pair['corrupted']!r} to {len(corrupted)} {show(corrupted)}; patching needs the same "
            "length (position by position). Choose a corrupted prompt whose subject has as many tokens "
            "(config key patching.pairs)"
        )
    subject = [i for i, (a, b) in enumerate(zip(clean, corrupted)) if a != b]
    if not subject:
        raise UserError(f"{where}: the clean and corrupted prompts tokenise the same; nothing to patch (config key patching.pairs)")
    warnings: list[str] = []
    clean_answer = _answer_id(tokenizer, pair, "clean_answer", warnings)
    corrupted_answer = _answer_id(tokenizer, pair, "corrupted_answer", warnings)
    if clean_answer == corrupted_answer:
        raise UserError(
            f"{where}: both answers begin with the same token {tokenizer.decode([clean_answer])!r}, so their logit "
            "difference is 0 whatever is patched; choose answers whose first tokens differ (config key patching.pairs)"
        )
    return TokenisedPair(pair["id"], clean, corrupted, clean_answer, corrupted_answer, subject, warnings)


def resolved_pairs(model: LoadedModel, pairs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the pairs patched on this model, those left out). A pair made from the probe set
    whose probe has no partner of its token length on this model is left out (said in the
    JSON, the log and its figure); any other problem stops."""
    resolved, skipped = [], []
    for pair in pairs:
        try:
            resolved.append(resolve_pair(model.tokenizer, pair, model.key))
        except UserError as error:
            if "corrupted_candidates" not in pair:
                raise
            log.warning("%s", error)
            skipped.append({"id": pair["id"], "probe": pair.get("probe"), "reason": str(error)})
    if not resolved:
        raise UserError(f"model {model.key!r}: no pair can be patched ({len(skipped)} made from the probe set, none with a partner)")
    return resolved, skipped


def pair_identity(pair: dict[str, Any], tp) -> dict[str, Any]:
    """What a pair's JSON entry says of it whatever the experiment (002's, 004's): its id,
    prompts, answers, probe, and the token ids run."""
    return {
        "id": pair["id"],
        "clean_prompt": pair["clean"],
        "corrupted_prompt": pair["corrupted"],
        "clean_answer": pair["clean_answer"],
        "corrupted_answer": pair["corrupted_answer"],
        "probe": pair.get("probe"),
        **({"from_probes": True} if pair.get("from_probes") else {}),
        "clean_input_ids": tp.clean_ids,
        "corrupted_input_ids": tp.corrupted_ids,
    }


def described_pairs(summary: dict[str, Any]) -> str:
    """The pairs of a model's JSON (002's, or 004's: the same pairs) as the meta template's ``${pairs}``."""
    pairs = [
        {k: p[k] for k in ("id", "clean_prompt", "clean_answer", "corrupted_prompt", "corrupted_answer")}
        for p in summary["pairs"]
    ]
    return json.dumps(pairs, indent=2, ensure_ascii=False)
