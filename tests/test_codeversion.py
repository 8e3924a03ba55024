"""Code versions (workflow/provenance/codeversion.py): a module's syntax, not its bytes, and the
per-user cache of parsed modules that spares each Snakemake start the parsing."""

import json

import pytest

from workflow.provenance import codeversion

SCRIPT = "scripts/run_lens.py"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERWISE_LENS_CACHE", str(tmp_path / "cache"))
    codeversion._parsed.cache_clear()
    yield tmp_path / "cache" / "codeversion"
    codeversion._parsed.cache_clear()


def test_a_cached_parse_gives_the_same_versions_and_is_used(cache, monkeypatch):
    cold = codeversion.code_digests(SCRIPT), codeversion.code_version(SCRIPT)
    entries = sorted(cache.glob("*.json"))
    files = codeversion.code_files(SCRIPT)
    assert len(entries) == sum(1 for f in files if f.suffix == ".py") > 10
    assert "workflow/lens/run.py" in cold[0] and "workflow/native/lens_block.c" in cold[0]
    codeversion._parsed.cache_clear()
    # Warm: nothing is parsed again, and every version is the same.
    monkeypatch.setattr(codeversion.ast, "parse", lambda *a, **k: pytest.fail("parsed although cached"))
    assert (codeversion.code_digests(SCRIPT), codeversion.code_version(SCRIPT)) == cold


def test_a_damaged_entry_is_parsed_again_and_a_changed_file_is_a_new_entry(cache, tmp_path, monkeypatch):
    want = codeversion.code_version(SCRIPT)
    for entry in cache.glob("*.json"):
        entry.write_text("{not json")
    codeversion._parsed.cache_clear()
    assert codeversion.code_version(SCRIPT) == want
    assert all(isinstance(json.loads(e.read_text())["code"], str) for e in cache.glob("*.json"))
    # A module of a copy of the repository edited: its entry is another one, its version another.
    repo = tmp_path / "repo"
    (repo / "workflow").mkdir(parents=True)
    (repo / "scripts").mkdir()
    (repo / "workflow" / "__init__.py").write_text("")
    (repo / "workflow" / "a.py").write_text('"""Doc."""\nX = 1  # a comment\n')
    (repo / "scripts" / "s.py").write_text("from workflow import a\n")
    monkeypatch.setattr(codeversion, "REPO", repo)
    first = codeversion.code_version("scripts/s.py")
    before = set(cache.glob("*.json"))
    (repo / "workflow" / "a.py").write_text('"""Another doc."""\nX = 1\n')  # same syntax
    assert codeversion.code_version("scripts/s.py") == first
    (repo / "workflow" / "a.py").write_text("X = 2\n")
    assert codeversion.code_version("scripts/s.py") != first
    assert len(set(cache.glob("*.json")) - before) == 2  # one entry per new content


def test_the_python_api_and_chat_are_in_no_rules_code_version():
    """No rule's script runs workflow/api.py or workflow/chat.py (the API's names reach
    ``workflow`` by name, not by an import statement): editing them re-runs nothing."""
    scripts = sorted((codeversion.REPO / "scripts").glob("*.py"))
    assert len(scripts) > 10
    for script in scripts:
        files = {str(p.relative_to(codeversion.REPO)) for p in codeversion.code_files(script)}
        assert "workflow/__init__.py" in files  # read, so a static import of the API there would count
        assert not files & {"workflow/api.py", "workflow/chat.py"}, script.name


def test_the_explorers_script_and_style_are_in_its_code_version():
    """The explorer page inlines workflow/report/explorer.js and explorer.css: editing them
    must re-run the explorer (and nothing else)."""
    for script in sorted((codeversion.REPO / "scripts").glob("*.py")):
        digests = codeversion.code_digests(str(script.relative_to(codeversion.REPO)))
        assets = {"workflow/report/explorer.js", "workflow/report/explorer.css"} & set(digests)
        assert assets == ({"workflow/report/explorer.js", "workflow/report/explorer.css"} if script.name == "explorer.py" else set()), script.name


def test_each_c_kernel_is_in_the_code_version_of_the_rules_that_run_it():
    """lens_block.c in every rule that runs the lens code, not in prepare_model; dequant.c in
    prepare_model and in every rule that loads a model; graph_filter.c (llama.cpp's evaluation
    callback) exactly where the llama.cpp backend's code is; none in plots, evaluations or
    pages."""
    runs_the_lens = {"run_lens", "run_generation", "run_patching", "run_components", "run_words", "train_tuned_lens", "lens_quality"}
    for script in sorted((codeversion.REPO / "scripts").glob("*.py")):
        files = {str(p.relative_to(codeversion.REPO)) for p in codeversion.code_files(script)}
        assert ("workflow/native/lens_block.c" in files) == (script.stem in runs_the_lens), script.name
        # lens_quality reads a trained lens's figures and loads no model.
        loads_a_model = runs_the_lens - {"lens_quality"} | {"prepare_model"}
        assert ("workflow/native/dequant.c" in files) == (script.stem in loads_a_model), script.name
        assert ("workflow/native/graph_filter.c" in files) == ("workflow/model/llamacpp.py" in files), script.name
        assert ("workflow/native/graph_filter.c" in files) == (script.stem in runs_the_lens - {"lens_quality"}), script.name


def test_an_explorer_job_holds_its_experiments_page_code():
    """The explorer script reaches each experiment's page through the registry (no import
    names it), so its rule carries the experiment's package as code it runs: editing 002's
    page code re-plans 002's explorer pages, and 001's page code is not in them."""
    import re

    from workflow.evaluation.experiment import module_file

    rule = re.search(r"rule explorer:.*?script:", (codeversion.REPO / "rules" / "report.smk").read_text(encoding="utf-8"), re.S).group(0)
    assert 'code=evaluation_code("scripts/explorer.py")' in rule and "code_also=experiment_package" in rule
    files = codeversion.code_digests("scripts/explorer.py", module_file("002"))
    assert "workflow/experiments/exp002/explorer.py" in files and "workflow/experiments/exp002/records.py" in files
    assert not any(f.startswith("workflow/experiments/exp004/") for f in files)
    assert "workflow/experiments/exp002/explorer.py" not in codeversion.code_digests("scripts/explorer.py")
