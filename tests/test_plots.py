"""Pictures: what the heatmap shows equals the records; files are valid, sized and deterministic."""

import matplotlib.image
import pytest

from conftest import PROBES, REPO
from workflow.experiments.exp001.analysis import model_facts
from workflow.experiments.exp001.run import write_lens_outputs
from workflow.lens.job import Outputs
from workflow.model.load import ModelSpec
from workflow.experiments.exp001.plots import TRAJECTORY_METRICS, heatmap_data, plot_heatmap, plot_trajectories, trajectory_figure
from workflow.report.plots import visible
from workflow.lens.records import read_records


@pytest.fixture(scope="module")
def outputs(tiny_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("plot-outputs")
    paths = {}
    for arch, path in tiny_dirs.items():
        summary, records = root / f"output-{arch}.json", root / f"output-{arch}-records.csv"
        write_lens_outputs(
            ModelSpec(f"tiny-{arch}", {"source": "local", "path": str(path)}, None, "cpu", "float32"), {"top_k": 3},
            [dict(p) for p in PROBES], Outputs(str(summary), str(records)),
        )
        paths[arch] = (summary, records)
    return paths


def test_heatmap_cells_are_the_records_top1_tokens(outputs):
    records = read_records(outputs["llama"][1])
    for probe in PROBES:
        data = heatmap_data(records, "tiny-llama", probe["id"])
        rows = records[records["probe"] == probe["id"]]
        assert data.layers == list(range(4))
        assert data.value.shape == (4, rows["position"].nunique())
        for i, layer in enumerate(data.layers):
            for j, position in enumerate(sorted(rows["position"].unique())):
                row = rows[(rows["layer"] == layer) & (rows["position"] == position)].iloc[0]
                assert data.top1[i][j] == row["top1_token"]
                assert data.value[i, j] == pytest.approx(row["top1_prob"])
        assert data.input_tokens == rows[rows["layer"] == 0].sort_values("position")["input_token"].tolist()


def test_heatmap_png_is_valid_readable_and_deterministic(outputs, tmp_path):
    records = read_records(outputs["gemma3"][1])
    data = heatmap_data(records, "tiny-gemma3", "instruction")
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    plot_heatmap(data, first)
    plot_heatmap(data, second)
    image = matplotlib.image.imread(first)
    height, width = image.shape[:2]
    assert width >= 600 and height >= 400
    assert width > height  # one column per position, 13 positions wide
    assert first.read_bytes() == second.read_bytes()


def test_cross_model_trajectories_have_one_panel_per_metric_and_probe(outputs, tmp_path):
    facts = [model_facts(*outputs[arch]) for arch in ("llama", "gemma3")]
    figure = trajectory_figure(facts)
    axes = figure.get_axes()
    assert len(axes) == len(TRAJECTORY_METRICS) * len(PROBES)
    assert all(len(ax.get_lines()) == 2 for ax in axes)  # one line per model
    # a row per probe, a column per metric, each panel titled by both
    assert [ax.get_title() for ax in axes[:: len(TRAJECTORY_METRICS)]] == [f"{p['id']} · answer probability" for p in PROBES]
    assert [ax.get_title() for ax in axes[: len(TRAJECTORY_METRICS)]] == [f"{PROBES[0]['id']} · {label}" for _, label, _ in TRAJECTORY_METRICS]
    path = tmp_path / "cross.png"
    plot_trajectories(facts, path)
    height, width = matplotlib.image.imread(path).shape[:2]
    assert 800 <= width <= 1600  # four panels wide whatever the number of probes: legible at a page's width


def test_whitespace_is_visible():
    assert visible(" Berlin") == "␣Berlin"
    assert visible("\n\n") == "\\n\\n"
    assert visible("") == "∅"
    assert visible("a" * 30).endswith("…") and len(visible("a" * 30)) == 10


def test_undrawable_characters_become_code_points_not_boxes():
    assert visible("\ufffd") == "<byte>"  # what part of a multi-byte character decodes to
    assert visible("иль") == "иль"  # Cyrillic: the font has it
    assert visible("\u200b") == "\\u200b"  # zero-width space: invisible
    assert visible("\x00") == "\\u0000"
    assert visible("\u2ff0") == "\\u2ff0"  # an ideographic description character the font lacks
    assert visible("\U00020000") == "\\U00020000"  # a CJK extension B ideograph


def test_kl_panel_shows_both_the_embedding_spike_and_the_last_layers(outputs):
    facts = [model_facts(*outputs[arch]) for arch in ("llama", "gemma3")]
    axes = trajectory_figure(facts).get_axes()
    scales = [ax.get_yscale() for ax in axes[: len(TRAJECTORY_METRICS)]]
    assert scales == ["linear", "log", "linear", "symlog"]


def test_the_statistics_panels_say_what_they_show():
    """On the committed default run (probes without relations): every panel titled, the
    probes' group named "all probes", the accuracy bar and its interval the statistics'."""
    from workflow.experiments.exp001.analysis import model_facts
    from workflow.experiments.exp001.plots import statistics_figure

    results = REPO / "results" / "001"
    facts = model_facts(results / "output-smollm2-135m-instruct.json", results / "output-smollm2-135m-instruct-records.csv")
    figure = statistics_figure(facts)
    titles = [ax.get_title() for ax in figure.axes[:5]]
    assert titles == ["accuracy", "where the answer first becomes top-1", "each fact forward and reverse",
                      "reliability of the final top-1 probability", "calibration error by layer, per lens"]
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["all probes"]
    (bar,) = figure.axes[0].patches
    assert bar.get_width() == pytest.approx(facts.statistics["accuracy"].estimate)
    assert facts.statistics["n"] == 9
