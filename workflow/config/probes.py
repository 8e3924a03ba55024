"""Probe sets: the probes an experiment runs, from the config, a file, or the shipped LRE
relations (data/lre-relations, Hernandez et al. 2024, MIT licence).

Config key ``probes`` is either a list of probes (id, prompt, answer, optional reverse_of,
style, relation) or a probe set:

- ``{file: path}``: a YAML file (a list of probes, or ``{probes: [...]}``), a CSV file
  (a header row naming the same keys) or a JSON Lines file (one probe per line);
- ``{relations: [name, ...]}``: relations of the shipped data, each sample a probe
  ``prompt = template.format(subject)``, ``answer = " " + object``; ``directions: forward |
  reverse | both`` (reverse: ``object -> subject`` with the template in
  data/lre-reverse.yaml, for samples whose object is unique in the relation), ``template``
  (index into the relation's prompt_templates, default 0) and ``limit`` (the first N samples
  of each relation, in file order; null: all).

``load`` turns either into the list of probes, checked: unique ids, a reverse_of that names
a probe, non-blank prompts and answers, and no answer written joined to the prompt's last
word where running text has a space (``answer_joins``). Errors name the file, line or key.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from pathlib import Path
from typing import Any

import yaml

from workflow.base.errors import UserError, listed, shown
from workflow.base.limits import check_size

LRE_DIR = Path("data/lre-relations/data")
REVERSE_FILE = Path("data/lre-reverse.yaml")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # as config/schema.yaml: it names files
PROBE_KEYS = ("id", "prompt", "answer", "reverse_of", "style", "relation", "answer_joins")
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
# After these, running text puts a space before the next word (a question-and-answer prompt's "A:").
SPACED_AFTER = ",;:!?"
# Scripts written without spaces between words: there an answer joins the prompt as written.
UNSPACED_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "HALFWIDTH KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


def _unescape(text: str) -> str:
    """The LRE files keep some non-ASCII letters as literal ``\\u00ed`` escapes; decode them."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def slug(text: str) -> str:
    """A probe-id-safe form of ``text`` (lower case, runs of other characters as one '-')."""
    value = re.sub(r"[^a-z0-9]+", "-", _unescape(text).lower()).strip("-")
    return value or "x"


def relation_names(base: Path) -> dict[str, Path]:
    """Every shipped relation by name, with its file."""
    return {path.stem: path for path in sorted((base / LRE_DIR).glob("*/*.json"))}


def reverse_templates(base: Path) -> dict[str, str]:
    with open(base / REVERSE_FILE, encoding="utf-8") as fh:
        return yaml.safe_load(fh)["relations"]


def relation_probes(
    name: str, base: Path, directions: str = "forward", template: int = 0, limit: int | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Probes of one shipped relation, and notes on what was left out."""
    # Kept as one function: one shipped relation file read and checked field by field, each
    # check naming the config key it concerns.
    known = relation_names(base)
    if name not in known:
        raise UserError(
            f"config key probes.relations: no shipped relation {name!r}; the relations in {LRE_DIR} are "
            + ", ".join(known)
        )
    data = json.loads(known[name].read_text(encoding="utf-8"))
    templates = data["prompt_templates"]
    if not 0 <= template < len(templates):
        raise UserError(
            f"config key probes.template: relation {name!r} has {len(templates)} prompt templates "
            f"({templates}); template {template} does not exist (use 0..{len(templates) - 1})"
        )
    reverse_template = None
    if directions in ("reverse", "both"):
        reverses = reverse_templates(base)
        reverse_template = reverses.get(name)
        if reverse_template is None:
            raise UserError(
                f"config key probes.directions: relation {name!r} has no reverse template in {REVERSE_FILE} "
                f"(relations with one: {', '.join(sorted(reverses))}); use directions: forward, or add one there"
            )
    samples = [(_unescape(s["subject"]).strip(), _unescape(s["object"]).strip()) for s in data["samples"]]
    notes: list[str] = []
    # A subject with several objects (a landmark in two countries) has no single answer:
    # its first sample is kept.
    seen: set[str] = set()
    unique = []
    for subject, obj in samples:
        if subject not in seen:
            seen.add(subject)
            unique.append((subject, obj))
    if len(unique) < len(samples):
        notes.append(f"{name}: {len(samples) - len(unique)} samples repeat a subject; the first of each is kept")
    samples = unique[:limit] if limit is not None else unique
    object_count: dict[str, int] = {}
    for _, obj in unique:
        object_count[obj] = object_count.get(obj, 0) + 1
    probes: list[dict[str, Any]] = []
    ambiguous = 0
    ids: set[str] = set()
    for subject, obj in samples:
        base_id = f"{name}.{slug(subject)}"
        while base_id in ids:  # two subjects with the same slug
            base_id += "-2"
        ids.add(base_id)
        forward = {
            "id": base_id,
            "prompt": templates[template].format(subject),
            "answer": " " + obj,
            "relation": name,
            "direction": "forward",
        }
        if directions in ("forward", "both"):
            probes.append(forward)
        if reverse_template is not None:
            if object_count[obj] > 1:  # "Paris is the capital of" has one answer; "French is spoken in" has many
                ambiguous += 1
                continue
            reverse = {
                "id": f"{base_id}.reverse",
                "prompt": reverse_template.format(obj),
                "answer": " " + subject,
                "relation": name,
                "direction": "reverse",
            }
            if directions == "both":
                reverse["reverse_of"] = base_id
            probes.append(reverse)
    if ambiguous:
        notes.append(f"{name}: {ambiguous} objects belong to several subjects; they have no reverse probe")
    return probes, notes


def _read_text(path: Path) -> str:
    """The file's text as UTF-8, without a leading byte-order mark (spreadsheets write one)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise UserError(
            f"{path}: not UTF-8 text (line {line}, byte {data[error.start]:#04x}); save it as UTF-8 "
            "(a spreadsheet's 'CSV UTF-8' format)"
        ) from None
    return text.removeprefix("\ufeff")


def _read_csv(path: Path, text: str) -> list[dict[str, Any]]:
    reader = csv.reader(text.splitlines(keepends=True))
    header = next(reader, None) or []
    if not {"id", "prompt", "answer"} <= set(header):
        raise UserError(f"{path}: the header must name id, prompt and answer; it has {shown(header)}")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise UserError(f"{path}: the header names {listed(repeated)} more than once; each column once, please")
    rows = []
    for fields in reader:
        if not fields:
            continue
        if len(fields) > len(header):
            raise UserError(
                f"{path}, line {reader.line_num}: {len(fields)} fields but the header has {len(header)} "
                f"({shown(fields)}); a comma inside a prompt or answer needs the field in double quotes"
            )
        rows.append(dict(zip(header, fields)))
    # Empty cells of optional columns are absent, not empty strings; a flag's cell reads as YAML's.
    flags = {"true": True, "false": False}
    return [
        {k: flags.get(v.lower(), v) if k == "answer_joins" else v for k, v in row.items() if v != "" or k in ("prompt", "answer")}
        for row in rows
    ]


def _read_file(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    text = _read_text(path)
    if suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise UserError(f"{path}: not valid YAML ({error})") from None
        check_size(data, str(path))
        if isinstance(data, dict) and "probes" in data:
            data = data["probes"]
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a list of probes (or a mapping with key probes), found {type(data).__name__}")
        return data
    if suffix == ".csv":
        return _read_csv(path, text)
    if suffix in (".jsonl", ".ndjson"):
        probes = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    probes.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise UserError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
        return probes
    raise UserError(f"{path}: unknown probe file type {suffix!r}; use .yaml, .csv or .jsonl")


def _spaced_word_character(char: str) -> bool:
    return char.isalnum() and not unicodedata.name(char, "").startswith(UNSPACED_SCRIPTS)


def joins_prompt(prompt: str, answer: str) -> bool:
    """Whether ``answer`` as written starts a word with no space after a prompt that running
    text would follow with one: the answer starts with a letter or digit, and the prompt ends
    in one or in , ; : ! ? (neither in a script written without spaces). A tokenizer then
    reads the answer as the rest of the prompt's word ("Rome" after "is": "isRome"), not the
    word " Rome" the model would write next."""
    last, first = prompt[-1:], answer[:1]
    return bool(last) and _spaced_word_character(first) and (_spaced_word_character(last) or last in SPACED_AFTER)


def check_answer_joins(flag: Any, label: str) -> bool:
    """The ``answer_joins`` flag of a probe or pair: true or false (absent: false)."""
    if flag is None or isinstance(flag, bool):
        return bool(flag)
    raise UserError(f"{label}: answer_joins is true or false, not {shown(flag)}")


def check_answer_space(prompt: str, answer: str, label: str, key: str = "answer") -> None:
    """Refuse an answer written joined to the prompt's last word (``joins_prompt``), naming
    ``label`` and the answer with its space."""
    if joins_prompt(prompt, answer):
        raise UserError(
            f"{label}: the {key} {shown(answer)} follows the prompt's last character {prompt[-1]!r} with no space, "
            f"so it would be read as the end of that word, not as the word the model writes next: did you mean "
            f"{shown(' ' + answer)}? (If it is meant to join the prompt's last word, add answer_joins: true.)"
        )


def check(probes: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """``probes`` after checking each one's keys and the set's ids, without their
    ``answer_joins`` (it says what was meant, and changes no result); errors name ``where``."""
    if not probes:
        raise UserError(f"{where}: the probe set is empty; give at least one probe")
    for number, probe in enumerate(probes, start=1):
        label = f"{where}, probe {number}"
        if not isinstance(probe, dict):
            raise UserError(f"{label}: expected a mapping with id, prompt and answer, found {shown(probe)}")
        unknown = [k for k in probe if k not in PROBE_KEYS and k not in ("direction", "subject")]
        if unknown:
            raise UserError(f"{label}: unknown keys {unknown}; a probe has {', '.join(PROBE_KEYS)}")
        for key in ("id", "prompt", "answer"):
            if not isinstance(probe.get(key), str) or not probe[key].strip():
                raise UserError(f"{label}: {key} is missing or blank")
        if not ID_PATTERN.match(probe["id"]):
            raise UserError(f"{label}: id {shown(probe['id'])} must be letters, digits, '.', '_' or '-', at most 100 of them (it names files)")
        if not check_answer_joins(probe.get("answer_joins"), f"{label} ({probe['id']!r})"):
            check_answer_space(probe["prompt"], probe["answer"], f"{label} ({probe['id']!r})")
    ids = [p["id"] for p in probes]
    counts: dict[str, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates:
        raise UserError(f"{where}: probe ids must be unique; repeated: {listed(duplicates)}")
    known = set(ids)
    for probe in probes:
        target = probe.get("reverse_of")
        if target is not None and target not in known:
            raise UserError(f"{where}: probe {probe['id']!r} has reverse_of {target!r}, which is not a probe id")
    return [{k: v for k, v in probe.items() if k != "answer_joins"} for probe in probes]


def load(spec: list[dict[str, Any]] | dict[str, Any], base: str | Path = ".", configfile: str = "config/config.yaml") -> list[dict[str, Any]]:
    """The probes config key ``probes`` names (see the module docstring)."""
    base = Path(base)
    if isinstance(spec, list):
        return check(spec, f"{configfile}: key probes")
    if "file" in spec:
        path = Path(spec["file"])
        full = path if path.is_absolute() else base / path
        if not full.is_file():
            raise UserError(f"config key probes.file: {path} does not exist (paths are relative to the workflow directory)")
        return check(_read_file(full), str(path))
    names = spec["relations"]
    names = [names] if isinstance(names, str) else list(names)
    probes: list[dict[str, Any]] = []
    for name in names:
        found, _ = relation_probes(name, base, spec.get("directions", "forward"), spec.get("template", 0), spec.get("limit"))
        probes += found
    return check(probes, f"{configfile}: key probes (relations {', '.join(names)})")

