"""The real default pipeline on the two embedded models, from an empty results/: `make
test-all` (about 15 minutes on two cores; not in `make test`, which checks the committed
results of the same run instead: tests/test_committed.py).

The fresh run's results pass the same checks against independent computations as the
committed ones (tests/embedded_checks.py), its records equal the committed records, its
provenance checks out, and the example notebook runs top to bottom in its folder.
"""

import json

import pytest

from embedded_checks import (  # noqa: F401 (the shared checks, run on this module's results_root)
    plain_transformers,
    test_components_equal_plain_transformers,
    test_final_top1_matches_plain_transformers,
    test_patching_equals_plain_transformers_hooks,
    test_tuned_lens_beats_the_logit_lens_on_held_out_text,
)
from pipeline import REPO, files_under, said, same_rank_elsewhere, scratch_copy, snakemake

pytestmark = pytest.mark.e2e

KINDS = [
    "evaluation-cross-model.md",
    "evaluation-gemma-3-270m.md",
    "evaluation-meta.md",
    "evaluation-smollm2-135m-instruct.md",
    "lens-quality-gemma-3-270m.csv",
    "lens-quality-smollm2-135m-instruct.csv",
    "output-gemma-3-270m-records.csv",
    "output-gemma-3-270m.json",
    "output-smollm2-135m-instruct-records.csv",
    "output-smollm2-135m-instruct.json",
]

PROVENANCE = [
    "evaluation-cross-model.prov.json",
    "evaluation-gemma-3-270m.prov.json",
    "evaluation-meta.prov.json",
    "evaluation-smollm2-135m-instruct.prov.json",
    "heatmaps-gemma-3-270m.prov.json",
    "heatmaps-smollm2-135m-instruct.prov.json",
    "lens-quality-gemma-3-270m.prov.json",
    "lens-quality-smollm2-135m-instruct.prov.json",
    "output-gemma-3-270m.prov.json",
    "output-smollm2-135m-instruct.prov.json",
    "plot-cross-model.prov.json",
    "statistics-gemma-3-270m.prov.json",
    "statistics-smollm2-135m-instruct.prov.json",
]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    import yaml

    workdir = scratch_copy(tmp_path_factory.mktemp("e2e"))
    assert files_under(workdir / "results") == []
    targets = ["results/001/evaluation-cross-model.md", "results/001/evaluation-meta.md"]
    targets += [f"results/001/lens-quality-{model}.csv" for model in ("smollm2-135m-instruct", "gemma-3-270m")]
    targets += ["results/002/evaluation-cross-model.md", "results/002/evaluation-meta.md"]
    targets += ["results/004/evaluation-cross-model.md", "results/004/evaluation-meta.md"]
    result = snakemake(workdir, "--cores", "2", *targets, timeout=3000)
    assert result.returncode == 0, said(result)[-5000:]
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return workdir, config


@pytest.fixture(scope="module")
def results_root(default_run):
    return default_run[0]


@pytest.mark.parametrize("experiment", ["001", "002", "004"])
@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_the_records_equal_the_committed_ones(default_run, experiment, model):
    """Made again from nothing here, the records are the committed ones: the same rows and
    tokens, the numbers within what machines differ by (about 1e-5; the committed were made on
    another processor, perhaps of another family)."""
    from workflow.experiments.exp002.records import read_patching_records
    from workflow.experiments.exp004.records import read_component_records
    from workflow.lens.records import read_records

    workdir, _ = default_run
    name = f"output-{model}-records.csv"

    def read(root):
        path = root / "results" / experiment / name
        summary = json.loads(path.with_name(f"output-{model}.json").read_text()) if experiment != "001" else None
        if experiment == "002":
            return read_patching_records(str(path), summary)
        if experiment == "004":
            return read_component_records(str(path), summary)
        return read_records(path)

    fresh, committed = read(workdir), read(REPO)
    assert list(fresh.columns) == list(committed.columns) and len(fresh) == len(committed) > 0
    numbers = [c for c in fresh.columns if fresh[c].dtype.kind == "f"]
    for a, b in zip(fresh.to_dict("records"), committed.to_dict("records")):
        for column in fresh.columns:
            if column in numbers:
                assert a[column] == pytest.approx(b[column], rel=1e-4, abs=5e-5, nan_ok=True), (column, a)
            elif column == "top1_token" and abs(a["topk_probs"][0] - a["topk_probs"][1]) < 1e-4:
                continue  # a near tie: which comes first may differ between machines
            elif column == "answer_rank":
                assert same_rank_elsewhere(a[column], b[column]), (column, a)
            elif column not in ("topk_tokens", "topk_probs"):
                assert a[column] == b[column], (column, a)


def test_all_five_kinds_of_file(default_run):
    workdir, _ = default_run
    results = workdir / "results" / "001"
    assert sorted(p.name for p in results.iterdir() if p.is_file()) == KINDS
    assert files_under(results / "provenance") == PROVENANCE


def test_provenance_check_passes_on_the_fresh_run(default_run):
    import subprocess
    import sys

    workdir, _ = default_run
    check = subprocess.run([sys.executable, "-m", "workflow.provenance.check"], cwd=workdir, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    # Every artefact a record names (records, JSON, figures, evaluations of 001, 002 and 004) is ok.
    recorded = sum(len(json.loads(f.read_text())["artefacts"]) for f in (workdir / "results").rglob("*.prov.json"))
    assert recorded > 40
    assert check.stdout.strip().endswith(f"{recorded} ok, 0 not ok")


def test_the_example_notebook_runs_on_the_embedded_models(default_run):
    """examples/capital-of-germany.ipynb top to bottom in a kernel (nbclient), in the run's
    folder (its prepared models and trained tuned lenses): no cell fails, the three figures
    are shown, and the layers it prints are those the pipeline recorded for the same prompt."""
    import nbformat
    from nbclient import NotebookClient

    from workflow.api import top1_words

    workdir, _ = default_run
    book = nbformat.read(REPO / "examples" / "capital-of-germany.ipynb", as_version=4)
    NotebookClient(book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
    printed = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    for model in ("smollm2-135m-instruct", "gemma-3-270m"):
        summary = json.loads((workdir / "results" / "001" / f"output-{model}.json").read_text())
        probe = next(p for p in summary["probes"] if p["id"] == "capital-germany")
        for lens, layers in (("logit", probe), ("tuned", probe["tuned"])):
            words = top1_words(layers["first_top1_layer"], layers["stable_top1_layer"], summary["n_layers"], probe["final_top1_token"])
            assert f"  {lens} lens: {words}\n" in printed, (model, lens, printed)
    assert not (workdir / "resources" / "chat-lenses").exists()  # the pipeline's tuned lenses were read
    page = (workdir / "capital-of-germany-explorer.html").read_text(encoding="utf-8")  # the explorer cell's page
    assert '"model":"gemma-3-270m"' in page and '"lenses":["logit","tuned"]' in page
