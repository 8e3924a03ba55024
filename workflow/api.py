"""The Python API: the pipeline's lens, patching and generation on one model, from a notebook
or a script, with the pipeline's numbers.

    from workflow import api

    model = api.load("smollm2-135m-instruct")          # a key of config/config.yaml
    records = model.lens("The capital of Germany is", " Berlin")
    api.plot_heatmap(records, lens="tuned")           # a matplotlib figure
    model.patch("The capital of Germany is", " Berlin", "The capital of France is", " Paris")
    model.generate("The capital of Germany is")

``load`` takes a key of the config, a Hugging Face model directory, a GGUF file or a Hugging
Face hub id. A GGUF or packaged model is read from the pipeline's ``resources/models/{key}/``
where the pipeline has prepared it from its source as the source is now (the manifest's
sha256 or package version), else prepared once into ``resources/chat-models/{key}/``
(the folder ``lens-chat`` shares; never the pipeline's own, whose newer time would make
Snakemake run that model's jobs again). The tuned lens is the pipeline's
(``resources/lenses/{key}/``) where it has trained one, else trained once into
``resources/chat-lenses/{key}/`` with the config's ``tuned_lens`` settings (a minute or two on
the embedded models).

Each method returns a pandas DataFrame with the columns of the experiment's records
(docs/data-contract.md), unrounded, and the experiment's JSON summary of the run in
``frame.attrs["summary"]``. Everything else in ``workflow`` belongs to the pipeline.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workflow.base.atomic import write_text
from workflow.base.errors import UserError
from workflow.config.probes import check, slug
from workflow.config.schema import coerce_strings, describe_validation_error, schema_violation
from workflow.config.settings import LensSettings
from workflow.evaluation.experiment import experiment
from workflow.lens.pairs import check_pair_answers
from workflow.provenance.record import digests_kept_in
from workflow.report.explorer import render

if TYPE_CHECKING:  # pandas is imported where frames are made (lens-chat imports this module)
    import pandas as pd

__all__ = ["Model", "load", "load_config", "describe_emergence", "plot_heatmap", "plot_answer_by_layer", "plot_patching",
           "explore"]

log = logging.getLogger("workflow.api")

REPOSITORY = Path(__file__).resolve().parents[1]
# Where lens-chat and the API keep what they prepare or train outside the pipeline.
OWN_MODELS = Path("resources") / "chat-models"
OWN_LENSES = Path("resources") / "chat-lenses"


def load_config(path: str | Path) -> dict[str, Any]:
    """The config at ``path``, checked against config/schema.yaml and completed with its
    defaults, as Snakemake reads it."""
    import yaml
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file; run from the repository's root, or give the config file "
                        "(lens-chat --config FILE; api.load(..., config=FILE))")
    schema_path = REPOSITORY / "config" / "schema.yaml"
    try:
        with open(path, encoding="utf-8") as fh:
            config = yaml.safe_load(fh) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a readable YAML config ({error})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: a config is a mapping of keys (models, probes, lens, ...), not a {type(config).__name__}")
    coerce_strings(config, yaml.safe_load(schema_path.read_text(encoding="utf-8")))
    try:
        validate(config, schema=str(schema_path))
    except WorkflowError as error:
        cause = schema_violation(error)
        if cause is None:
            raise
        raise UserError(describe_validation_error(cause, str(path))) from None
    return config


def prepared_dir(key: str, entry: dict[str, Any], workdir: Path, configfile: str | None = "config/config.yaml") -> str | None:
    """Where a GGUF or packaged model's prepared weights are: the pipeline's where they were
    prepared from its source as it is now, else the folder outside the pipeline (prepared
    now if missing, or again if it was prepared from another source or another version of
    it). A prepared folder is judged by its manifest's source fingerprint against the
    source's (``workflow.gguf.prepare.why_stale``: the GGUF's sha256 through the digest cache, a
    package's version); a missing, truncated or unreadable source is refused (UserError).
    ``configfile`` None: the model was given as a file, not a config key."""
    from workflow.gguf.prepare import MANIFEST, PREPARED_SOURCES, prepare_model, why_stale  # late, so that tests can patch prepare.prepare_model

    if entry["source"] not in PREPARED_SOURCES:
        return None
    with digests_kept_in(workdir):
        pipeline = workdir / "resources" / "models" / key
        if (pipeline / MANIFEST).is_file():
            why = why_stale(key, entry, pipeline, configfile)
            if why is None:
                return str(pipeline)
            print(f"{pipeline} {why}: not used (the pipeline prepares it again with the model's next job)", file=sys.stderr)
        out = workdir / OWN_MODELS / key
        if (out / MANIFEST).is_file():
            why = why_stale(key, entry, out, configfile)
            if why is None:
                return str(out)
            print(f"{out} {why}; preparing it again", file=sys.stderr)
        how = "reading" if entry.get("weights") == "quantised" else "dequantising"
        print(f"preparing {key} once into {out} ({how} its GGUF file) ...", file=sys.stderr)
        prepare_model(key, entry, out, configfile=configfile)
    return str(out)


def trained_lens_dir(key: str, workdir: Path) -> Path | None:
    """Where model ``key``'s tuned lens is trained: the pipeline's ``resources/lenses/{key}/``,
    else the one trained outside it, else None."""
    for directory in (workdir / "resources" / "lenses" / key, workdir / OWN_LENSES / key):
        if (directory / "config.json").is_file():
            return directory
    return None


def model_source(model: str, config: dict[str, Any], configfile: str) -> tuple[str, dict[str, Any]]:
    """(key, catalog entry) of what ``load`` was given: a key of the config, a GGUF file, a
    Hugging Face model directory, or a hub id."""
    if model in config["models"]:
        return model, dict(config["models"][model])
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf":
        if path.is_dir():
            raise UserError(f"{model}: a directory, not a GGUF file; give the path of a .gguf file (or a model key of {configfile})")
        if not path.is_file():
            raise UserError(f"{model}: no such GGUF file; give the path of a .gguf file (or a model key of {configfile})")
        return _key(path.stem), {"source": "gguf", "path": str(path.resolve())}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{model}: a directory without config.json is not a Hugging Face model directory")
        return _key(path.name), {"source": "local", "path": str(path.resolve())}
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model) and not path.exists():
        return _key(model.replace("/", "--")), {"source": "hf", "repo": model}
    known = ", ".join(config["models"]) or "(none)"
    raise UserError(
        f"{model!r} is not a model key of {configfile} ({known}), a .gguf file, a model directory or a hub id (org/name)"
    )


def _key(name: str) -> str:
    """A model key (it names files) from a file or hub name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lower() or "model"


def _frame(rows: list[dict[str, Any]], columns: Sequence[str], summary: dict[str, Any], experiment_id: str) -> pd.DataFrame:
    """The records of a run as the experiment ``experiment_id`` writes them; the frame knows
    its run (``attrs["summary"]``) and its experiment (``attrs["experiment"]``, for ``explore``)."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(columns))
    frame.attrs["summary"] = summary
    frame.attrs["experiment"] = experiment_id
    return frame


def _text(method: str, name: str, value: Any) -> None:
    """An argument that must be some text."""
    if not isinstance(value, str):
        raise TypeError(f"{method}: {name} is a str, not {_shown_value(value)}")
    if not value.strip():
        raise ValueError(f"{method}: {name} is empty")


def _shown_value(value: Any) -> str:
    """A wrong argument as a message names it: its type and the start of its repr."""
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'…' if len(text) > 60 else ''}"


def _probes(prompts: str | Sequence[str] | Sequence[dict[str, Any]], answers, model) -> list[dict[str, Any]]:
    """Probes (id, prompt, answer) from what ``Model.lens`` was given; a prompt without an
    answer is scored against the model's own next token."""

    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, (str, dict)) for p in prompts):
        raise TypeError(f"Model.lens: prompts are a str, or a list of str or of probes (dicts with id, prompt and "
                        f"answer), not {_shown_value(prompts)}")
    if not prompts:
        raise ValueError("Model.lens: no prompts given")
    if answers is not None and (not isinstance(answers, (list, tuple)) or not all(isinstance(a, str) for a in answers)):
        raise TypeError(f"Model.lens: answers are a str, or a list of str (one per prompt), or None, not {_shown_value(answers)}")
    if answers is not None and len(answers) != len(prompts):
        raise UserError(f"{len(prompts)} prompts but {len(answers)} answers: give one answer per prompt, or none")
    probes = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, dict):
            probes.append(dict(prompt))
            continue
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"prompt {i + 1}: expected some text, found {prompt!r}")
        probe = {"id": slug(prompt)[:40] or f"prompt-{i + 1}", "prompt": prompt}
        if answers is not None:
            probe["answer"] = answers[i]
        else:  # the model's own next token is what it writes there, joined or not
            probe.update(answer=model.next_token(prompt), answer_joins=True)
        probes.append(probe)
    seen: dict[str, int] = {}
    for probe in probes:  # the same prompt twice keeps two ids
        n = seen[probe["id"]] = seen.get(probe["id"], 0) + 1
        if n > 1:
            probe["id"] = f"{probe['id']}-{n}"
    return check(probes, "Model.lens")


@dataclass
class Model:
    """A model loaded the way the pipeline loads it (``load``)."""

    key: str
    entry: dict[str, Any] = field(repr=False)
    config: dict[str, Any] = field(repr=False)
    workdir: Path
    loaded: Any = field(repr=False)  # workflow.model.load.LoadedModel
    _tuned: Any = field(default=None, repr=False)
    configfile: str | None = field(default=None, repr=False)  # None: given as a file or directory, not a config key

    @property
    def n_layers(self) -> int:
        """Decoder layers; the records' layers run 0 (the embedding) to ``n_layers``."""
        return int(self.loaded.backend.n_layers)

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def lens_settings(self, **overrides: Any):

        return LensSettings.from_config({**self.config["lens"], **overrides})

    def next_token(self, prompt: str) -> str:
        """The model's own greedy next token after ``prompt``, as text (refused where that
        text does not tokenise back to the token alone, as with a piece of a character)."""
        import torch

        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        with torch.no_grad():
            _, logits = self.loaded.backend.capture(list(ids), "last")
        token = int(logits[-1].argmax())
        text = self.tokenizer.decode([token])
        if self.tokenizer(text, add_special_tokens=False)["input_ids"] != [token]:
            raise UserError(
                f"{self.key}: the next token after {prompt!r} is token {token} ({text!r}), which does not read back "
                "as one token; give the answer to score"
            )
        return text

    def tuned_lens(self):
        """The tuned lens's translators: the pipeline's, else trained once outside it."""
        from workflow.lens.session import open_tuned_lens  # torch: not at lens-chat's start
        from workflow.lens.tuned import TunedLensSettings  # torch: not at lens-chat's start
        from workflow.lens.tuned_training import train_for_model  # torch: not at lens-chat's start
        from workflow.model.load import ModelSpec  # torch: not at lens-chat's start

        if self._tuned is None:
            directory = trained_lens_dir(self.key, self.workdir)
            if directory is None:
                directory = self.workdir / OWN_LENSES / self.key
                print(f"training the tuned lens of {self.key} once into {directory} ...", file=sys.stderr)
                with digests_kept_in(self.workdir):
                    spec = ModelSpec(self.key, self.entry, prepared_dir(self.key, self.entry, self.workdir, self.configfile),
                                     self.loaded.device, _dtype_name(self.loaded), self.config["backend"])
                    train_for_model(
                        spec, directory, settings=TunedLensSettings.from_config(self.config["tuned_lens"]), lens_settings=self.lens_settings(),
                    )
            self._tuned, _ = open_tuned_lens(self.loaded, self.lens_settings(), directory)
        return self._tuned

    def lens(
        self,
        prompts: str | Sequence[str] | Sequence[dict[str, Any]],
        answers: str | Sequence[str] | None = None,
        *,
        lenses: Sequence[str] = ("logit", "tuned"),
        positions: str = "all",
        top_k: int | None = None,
    ) -> pd.DataFrame:
        """Experiment 001 on ``prompts``: one row per prompt x lens x layer x position
        (``positions: last``: the last prompt position only), with 001's record columns.
        ``answers`` (one per prompt) are scored at every layer; without them each prompt's
        answer is the model's own next token. Prompts may also be probes (dicts with id,
        prompt and answer, as in the config)."""
        from workflow.experiments.exp001.run import run_lens  # torch: not at lens-chat's start
        from workflow.lens.records import COLUMNS  # pandas: not at lens-chat's start

        unknown = [name for name in lenses if name not in ("logit", "tuned")]
        if unknown or "logit" not in lenses:
            raise UserError(f"lenses {list(lenses)}: the lenses are 'logit' (always read) and 'tuned'")
        settings = self.lens_settings(positions=positions, **({"top_k": top_k} if top_k is not None else {}))
        probes = _probes(prompts, answers, self)
        tuned = self.tuned_lens() if "tuned" in lenses else None
        summary, rows = run_lens(self.loaded, probes, settings, tuned, self.config["lens"]["batch_size"])
        return _frame(rows, COLUMNS, summary, "001")

    def patch(self, clean: str, clean_answer: str, corrupted: str, corrupted_answer: str, *, pair_id: str = "pair",
              answer_joins: bool = False) -> pd.DataFrame:
        """Experiment 002 on one pair of prompts of the same token length: the residual of
        every layer x position patched from one run into the other (both directions, and
        causal tracing where the config's ``patching.trace.samples`` asks), with 002's
        record columns; ``recovered`` is the fraction of the logit difference restored.
        ``answer_joins``: the answers are meant to continue their prompts' last words (as a
        pair's key in the config)."""
        from workflow.experiments.exp002.patching import PatchingSettings  # torch: not at lens-chat's start
        from workflow.experiments.exp002.records import RECORD_COLUMNS  # pandas: not at lens-chat's start
        from workflow.experiments.exp002.run import run_patching  # torch: not at lens-chat's start

        pair = {"id": pair_id, "clean": clean, "clean_answer": clean_answer, "corrupted": corrupted,
                "corrupted_answer": corrupted_answer}
        for name, value in pair.items():
            _text("Model.patch", name, value)
        pair = check_pair_answers({**pair, "answer_joins": answer_joins}, "Model.patch")
        summary, rows = run_patching(self.loaded, [pair], PatchingSettings.from_config(self.config["patching"]), self.lens_settings())
        return _frame(rows, RECORD_COLUMNS, summary, "002")

    def generate(self, prompt: str, max_new_tokens: int = 12, *, lenses: Sequence[str] = ("logit",)) -> pd.DataFrame:
        """Experiment 003 on one prompt: greedy generation with the lens on every new token;
        003's record columns (``position`` is the generated token's index). The reply is
        ``frame.attrs["summary"]["text"]``."""
        from workflow.experiments.exp003.run import run_generation  # torch: not at lens-chat's start
        from workflow.lens.generation import LensGenerator  # torch: not at lens-chat's start
        from workflow.lens.records import COLUMNS  # pandas: not at lens-chat's start

        _text("Model.generate", "prompt", prompt)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"Model.generate: max_new_tokens is a whole number of at least 1, not {max_new_tokens!r}")
        settings = self.lens_settings(positions="last")
        generator = LensGenerator(self.loaded, settings, self.tuned_lens() if "tuned" in lenses else None)
        summary, rows = run_generation(generator, [{"id": "prompt", "prompt": prompt, "answer": None}], max_new_tokens)
        return _frame(rows, COLUMNS, {**summary, **summary["probes"][0]}, "003")


def _dtype_name(loaded) -> str:
    from workflow.model.load import dtype_name  # torch: not at lens-chat's start

    return dtype_name(loaded.dtype)


def load(
    model: str,
    *,
    config: str | Path | None = None,
    workdir: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    backend: str | None = None,
) -> Model:
    """Load ``model`` the way the pipeline loads it: a key of the config (default
    ``config/config.yaml`` of the repository), a GGUF file, a Hugging Face model directory,
    or a hub id (downloaded by transformers). ``device``, ``dtype`` and ``backend`` default to
    the config's (and a model entry's own); ``workdir`` is where ``resources/`` is (default:
    the repository)."""
    from workflow.model.load import load_model  # torch: not at lens-chat's start (and tests patch load_model)

    model = _model_argument(model)
    _check_choices(device=device, dtype=dtype, backend=backend)
    workdir = Path(workdir) if workdir is not None else REPOSITORY
    configfile = Path(config) if config is not None else workdir / "config" / "config.yaml"
    settings = load_config(configfile)
    key, entry = model_source(model, settings, str(configfile))
    named = str(configfile) if model in settings["models"] else None
    with digests_kept_in(workdir):
        loaded = load_model(
            key, entry, prepared_dir(key, entry, workdir, named),
            device=device or settings["device"], dtype=dtype or settings["dtype"], backend=backend or settings["backend"],
            lens=LensSettings.from_config(settings["lens"]), placement=settings.get("placement"), configfile=named,
        )
    return Model(key, entry, settings, workdir, loaded, configfile=named)


def _model_argument(model: Any) -> str:
    """``load``'s model as text: a key, a path (also a ``pathlib.Path``) or a hub id."""
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        raise TypeError(f"api.load: model is a config key, a model directory, a .gguf file or a hub id (a str), "
                        f"not {type(model).__name__} {model!r}")
    if not model.strip():
        raise ValueError("api.load: model is empty; give a config key, a model directory, a .gguf file or a hub id")
    return model


def setting_choices(name: str) -> list[str]:
    """The values config/schema.yaml allows for the top-level setting ``name`` (device, dtype, backend)."""
    import yaml

    return yaml.safe_load((REPOSITORY / "config" / "schema.yaml").read_text(encoding="utf-8"))["properties"][name]["enum"]


def _check_choices(**given: Any) -> None:
    """``load``'s overrides checked against the config schema's choices, before any work."""
    for name, value in given.items():
        choices = setting_choices(name)
        if value is not None and value not in choices:
            raise ValueError(f"api.load: {name}={value!r} is not one of {', '.join(map(repr, choices))}")


def _records_frame(records: Any, function: str, columns: Sequence[str] = ("model", "probe", "lens", "layer", "position")) -> pd.DataFrame:
    """``records`` checked to be a frame of records (``Model.lens``'s or the records files'), with rows."""
    import pandas as pd

    if not isinstance(records, pd.DataFrame):
        raise TypeError(f"{function}: records are a DataFrame made by Model.lens (or read from records), "
                        f"not {_shown_value(records)}")
    missing = [c for c in columns if c not in records.columns]
    if missing:
        raise ValueError(f"{function}: the records have no column {', '.join(map(repr, missing))}; "
                         "give a frame made by Model.lens (or read from records)")
    if records.empty:
        raise ValueError(f"{function}: the records are empty")
    return records


def _records_of(records: pd.DataFrame, probe: str | None, lens: str) -> tuple[pd.DataFrame, str, str]:
    models = records["model"].unique().tolist()
    probe = probe if probe is not None else records["probe"].iloc[0]
    rows = records[(records["probe"] == probe) & (records["lens"] == lens)]
    if rows.empty:
        raise UserError(f"no {lens}-lens records for probe {probe!r} (probes: {', '.join(records['probe'].unique())})")
    return rows, probe, models[0]


def layer_words(layer: int | None) -> str:
    """A layer as people read it: its number, or "never" where there is none."""
    return "never" if layer is None else str(layer)


def top1_words(first: int | None, stable: int | None, n_layers: int, output_top1: str) -> str:
    """Where an answer is the lens's top-1, in words: from the first layer where it is, and
    the layer from which it stays to the output (``output_top1``: the output's top-1 token)."""
    if first is None:
        return f"never the top-1 (the output's top-1 is {output_top1!r})"
    if stable is None:
        return f"the top-1 first at layer {first} of {n_layers}, not at the output (whose top-1 is {output_top1!r})"
    if first == n_layers:
        return f"the top-1 only at the output (layer {n_layers} of {n_layers})"
    if stable == first:
        return f"the top-1 from layer {first} of {n_layers} to the output"
    return f"the top-1 first at layer {first} of {n_layers}, and from layer {stable} to the output"


def _top1_layers(rows: pd.DataFrame) -> tuple[int | None, int | None, str]:
    """(first layer where the answer is top-1, layer from which it stays, the output's top-1
    token) of one probe and lens at its last prompt position; top-1: rank 1 (ties share it)."""
    last = rows[rows["position"] == rows["position"].max()].sort_values("layer")
    top = dict(zip(last["layer"].tolist(), (last["answer_rank"] == 1).tolist()))
    first = next((layer for layer, is_top in top.items() if is_top), None)
    stable = None
    for layer in reversed(list(top)):
        if not top[layer]:
            break
        stable = layer
    return first, stable, str(last["top1_token"].iloc[-1])


def describe_emergence(records: dict[str, pd.DataFrame] | pd.DataFrame, probe: str | None = None) -> str:
    """Where the answer becomes the top-1 at the last prompt position, in words: per model
    (one ``Model.lens`` frame, or several by name) and lens, the first layer, the layer from
    which it stays to the output, or that it never does; and where both lenses are read,
    which reads it first. Layers as the records count them (0: the embedding)."""
    frames = records if isinstance(records, dict) else {"": records}
    if not frames:
        raise ValueError("describe_emergence: no records; give a frame made by Model.lens, or a dict of them by name")
    lines = []
    for name, frame in frames.items():
        _records_frame(frame, f"describe_emergence{f'[{name!r}]' if name else ''}",
                       ("model", "probe", "lens", "layer", "position", "top1_token", "answer_token", "answer_rank"))
        rows, shown_probe, model = _records_of(frame, probe, "logit")
        n_layers = int(rows["layer"].max())
        found = {"logit": _top1_layers(rows)}
        if (frame["lens"] == "tuned").any():
            found["tuned"] = _top1_layers(_records_of(frame, shown_probe, "tuned")[0])
        lines.append(f"{name or model} ({n_layers} layers), probe {shown_probe}: the answer {rows['answer_token'].iloc[0]!r} "
                     "at the last prompt position")
        lines += [f"  {lens} lens: {top1_words(first, stable, n_layers, output)}" for lens, (first, stable, output) in found.items()]
        if len(found) == 2 and None not in (found["logit"][0], found["tuned"][0]):
            earlier = found["logit"][0] - found["tuned"][0]
            lines.append(
                f"  both lenses first read it as the top-1 at layer {found['logit'][0]}" if earlier == 0 else
                f"  the {'tuned' if earlier > 0 else 'logit'} lens reads it as the top-1 {abs(earlier)} "
                f"layer{'s' if abs(earlier) > 1 else ''} before the {'logit' if earlier > 0 else 'tuned'} lens"
            )
    return "\n".join(lines)


def plot_heatmap(records: pd.DataFrame, probe: str | None = None, lens: str = "logit", value: str = "top1_prob"):
    """The layers x positions grid of one probe (default the first) through ``lens``: the
    top-1 token in each cell, coloured by ``value``; a matplotlib figure."""
    from workflow.experiments.exp001.plots import heatmap_data, heatmap_figure  # matplotlib: not at lens-chat's start

    _records_frame(records, "plot_heatmap")
    _, probe, model = _records_of(records, probe, lens)
    return _shown(heatmap_figure(heatmap_data(records, model, probe, value, lens)))


def plot_answer_by_layer(records: dict[str, pd.DataFrame] | pd.DataFrame, probe: str | None = None,
                         lenses: Sequence[str] = ("logit", "tuned")):
    """The answer's probability at the last prompt position across relative depth (layer /
    layers), one line per model and lens: where the answer emerges, and how models differ.
    ``records``: one model's ``Model.lens`` frame, or several by name."""
    from workflow.report.plots import DEPTH_LABEL, legend_outside, plt  # matplotlib: not at lens-chat's start

    frames = records if isinstance(records, dict) else {"": records}
    if not frames:
        raise ValueError("plot_answer_by_layer: no records; give a frame made by Model.lens, or a dict of them by name")
    for name, frame in frames.items():
        _records_frame(frame, f"plot_answer_by_layer{f'[{name!r}]' if name else ''}",
                       ("model", "probe", "lens", "layer", "position", "answer_prob"))
    lines = [(name, frame, lens) for name, frame in frames.items() for lens in lenses if (frame["lens"] == lens).any()]
    if not lines:
        raise ValueError(f"plot_answer_by_layer: no records of the lenses {list(lenses)} "
                         f"(the records have {sorted({l for f in frames.values() for l in f['lens'].unique()})})")
    series = []  # every line's rows found (or refused) before a figure is made
    for name, frame, lens in lines:
        rows, shown_probe, model = _records_of(frame, probe, lens)
        series.append((rows[rows["position"] == rows["position"].max()].sort_values("layer"), lens, f"{name or model} · {lens} lens"))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for last, lens, label in series:
        ax.plot(last["layer"] / last["layer"].max(), last["answer_prob"], marker="o", markersize=3,
                linestyle="-" if lens == "logit" else "--", label=label)
    ax.set_xlabel(f"{DEPTH_LABEL}; 0 = embeddings")
    ax.set_ylabel("answer probability at the last prompt position")
    ax.set_ylim(0, 1)
    ax.set_title(f"answer probability by layer · {shown_probe}", fontsize=10)
    legend_outside(ax)
    fig.tight_layout()
    return _shown(fig)


def plot_patching(records: pd.DataFrame, direction: str = "denoise", corruption: str = "prompt"):
    """Experiment 002's grid of one pair: the fraction of the logit difference recovered
    when the residual at (layer, position) is patched, ``direction`` denoise (clean into
    corrupted) or noise; a matplotlib figure."""
    import numpy as np

    from workflow.report.plots import layer_axis, plt, visible  # matplotlib: not at lens-chat's start

    _records_frame(records, "plot_patching", ("model", "pair", "direction", "corruption", "layer", "position", "token", "recovered"))
    rows = records[(records["direction"] == direction) & (records["corruption"] == corruption)]
    if rows.empty:
        raise UserError(f"no {corruption} {direction} records (directions: {', '.join(records['direction'].unique())})")
    grid = rows.pivot(index="layer", columns="position", values="recovered").sort_index()
    tokens = rows.drop_duplicates("position").sort_values("position")["token"].tolist()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * grid.shape[1] + 2.5), max(4.0, 0.25 * grid.shape[0] + 1.8)))
    image = ax.imshow(grid.to_numpy(dtype=np.float64), aspect="auto", origin="lower", cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(tokens)), [visible(t) for t in tokens], rotation=45, ha="right", fontsize=8)
    layer_axis(ax, "y", every=True)
    ax.set_yticks(range(grid.shape[0]), [str(layer) for layer in grid.index], fontsize=7)
    ax.set_xlabel("position patched (token read)")
    ax.set_title(f"{rows['model'].iloc[0]} · {rows['pair'].iloc[0]} · {direction}\nfraction of the logit difference recovered", fontsize=10)
    fig.colorbar(image, ax=ax, label="recovered")
    fig.tight_layout()
    return _shown(fig)


def explore(records: pd.DataFrame, path: str | Path) -> Path:
    """Write the interactive explorer page of ``records`` (a frame from ``Model.lens``,
    ``Model.generate`` or ``Model.patch``) to ``path``, the page the pipeline writes for each
    experiment (docs/running.md, "The explorer"): one self-contained HTML file that opens
    from disk. In a notebook, ``IPython.display.IFrame(str(path), width="100%", height=900)``
    shows it in place. Returns the path."""
    import pandas as pd

    if not isinstance(records, pd.DataFrame):
        raise TypeError(f"explore: records are a DataFrame made by Model.lens, Model.generate or Model.patch, "
                        f"not {_shown_value(records)}")
    summary, experiment_id = records.attrs.get("summary"), records.attrs.get("experiment")
    if not summary or not experiment_id:
        raise UserError("explore() needs a frame made by Model.lens, Model.generate or Model.patch "
                        "(its attrs name the run and its experiment)")
    path = Path(path)
    write_text(path, render(experiment(experiment_id).explorer.data(summary, records, None)))
    return path


def _shown(fig):
    """``fig`` let go by pyplot: the caller holds it (a notebook shows it once, as the
    cell's value; a script saves it with ``fig.savefig``)."""
    from workflow.report.plots import plt  # matplotlib: not at lens-chat's start

    plt.close(fig)
    return fig
