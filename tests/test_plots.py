"""Pictures: what the heatmap shows equals the records; files are valid, sized and deterministic."""

import matplotlib.image
import pytest

from conftest import PROBES, REPO
from workflow.experiments.exp001.analysis import model_facts
from workflow.config.settings import LensSettings
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
            ModelSpec(f"tiny-{arch}", {"source": "local", "path": str(path)}, None, "cpu", "float32"), LensSettings(top_k=3),
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
    """On the committed default run's probes (without relations) made three times as many, so
    that the group panels are drawn: every panel titled, the probes' group named "all
    probes", the accuracy bar and its interval the statistics'."""
    import dataclasses

    from workflow.experiments.exp001.analysis import model_facts, probe_statistics
    from workflow.experiments.exp001.plots import statistics_figure
    from workflow.report.plots import MIN_PANEL_PROBES

    results = REPO / "results" / "001"
    facts = model_facts(results / "output-smollm2-135m-instruct.json", results / "output-smollm2-135m-instruct-records.csv")
    assert facts.statistics["n"] == 9
    facts.probes = [dataclasses.replace(p, id=f"{p.id}-{k}", reverse_of=None) for k in range(3) for p in facts.probes]
    facts.statistics = probe_statistics(facts)
    assert facts.statistics["n"] == 27 >= MIN_PANEL_PROBES
    figure = statistics_figure(facts)
    titles = [ax.get_title() for ax in figure.axes[:5]]
    assert titles == ["accuracy", "where the answer first becomes top-1", "each fact forward and reverse",
                      "reliability of the final top-1 probability", "calibration error by layer, per lens"]
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["all probes"]
    (bar,) = figure.axes[0].patches
    assert bar.get_width() == pytest.approx(facts.statistics["accuracy"].estimate)


# ---- every figure of the pipeline, drawn from the committed results ------------------------------

MODELS = ("smollm2-135m-instruct", "gemma-3-270m")


@pytest.fixture(scope="module")
def committed_figures():
    """Every kind of figure the pipeline draws, from the committed results of both models."""
    import csv
    import dataclasses
    import json

    from workflow.experiments.exp001.plots import answer_by_layer, answer_by_layer_figure, heatmap_figure, statistics_figure
    from workflow.experiments.exp002.analysis import model_facts as facts_002
    from workflow.experiments.exp002.plots import depth_figure, pair_figure as patching_figure
    from workflow.experiments.exp003.analysis import model_facts as facts_003
    from workflow.experiments.exp003.plots import probe_figure, settling_figure
    from workflow.experiments.exp004.analysis import model_facts as facts_004
    from workflow.experiments.exp004.plots import cross_figure, pair_figure as components_figure
    from workflow.report.plots import lens_quality_figure, plt
    from workflow.lens.records import load_checked

    results = REPO / "results"
    figures = {}
    f001, f002, f003, f004, curves = [], [], [], [], []
    for model in MODELS:
        summary, records = results / "001" / f"output-{model}.json", results / "001" / f"output-{model}-records.csv"
        frame = load_checked(records, summary)
        f001.append(model_facts(summary, records))
        curves.append(answer_by_layer(json.loads(summary.read_text(encoding="utf-8")), frame))
        f002.append(facts_002(results / "002" / f"output-{model}.json", results / "002" / f"output-{model}-records.csv", summary))
        f003.append(facts_003(results / "003" / f"output-{model}.json", results / "003" / f"output-{model}-records.csv"))
        f004.append(facts_004(results / "004" / f"output-{model}.json", results / "004" / f"output-{model}-records.csv"))
        # A model's own figures: Gemma's (18 blocks, every one ticked), and SmolLM2's components (30 blocks, a few ticked).
        figures[f"004 pair {model}"] = components_figure(model, f004[-1].pairs[0])
        if model != "gemma-3-270m":
            continue
        for lens in ("logit", "tuned"):
            figures[f"001 heatmap {lens} {model}"] = heatmap_figure(heatmap_data(frame, model, "capital-germany", lens=lens))
        figures[f"001 statistics {model}"] = statistics_figure(f001[-1])
        with open(results / "001" / f"lens-quality-{model}.csv", encoding="utf-8") as fh:
            rows = [{**r, "layer": int(r["layer"]), "positions": int(r["positions"]), "kl_to_final": float(r["kl_to_final"]),
                     "top1_agreement": float(r["top1_agreement"])} for r in csv.DictReader(fh)]
        figures[f"001 lens quality {model}"] = lens_quality_figure(model, rows)
        figures[f"002 pair {model}"] = patching_figure(model, f002[-1].pairs[0])
        figures[f"003 probe {model}"] = probe_figure(model, f003[-1].n_layers, f003[-1].probes[0])
    # The figures of many panels with their first probes or pairs only: each panel is drawn alike.
    figures["001 answer by layer"] = answer_by_layer_figure(
        [dataclasses.replace(c, curves={p: c.curves[p] for p in list(c.curves)[:3]}) for c in curves])
    figures["001 trajectories"] = trajectory_figure([dataclasses.replace(f, probes=f.probes[:2]) for f in f001])
    figures["002 depth"] = depth_figure([dataclasses.replace(f, pairs=f.pairs[:2]) for f in f002])
    figures["003 settling"] = settling_figure(f003)
    figures["004 cross"] = cross_figure(f004)
    for figure in figures.values():
        figure.canvas.draw()  # the layout, so that window extents are where the PNG has them
    yield figures
    for figure in figures.values():
        plt.close(figure)


def layer_axes(figure):
    """(figure's axes, 'x' or 'y', label) of every axis labelled as counting layers or blocks."""
    for ax in figure.axes:
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            label = axis.get_label_text()
            if label.startswith(("layer", "block")):
                yield ax, name, label


def test_every_layer_and_block_axis_says_its_numbering(committed_figures):
    """One numbering (docs/data-contract.md, "Layers and blocks"), said on every axis: 004's
    figures count blocks, the others layers; a relative depth says what it divides."""
    from workflow.report.plots import BLOCK_LABEL, DEPTH_LABEL, LAYER_LABEL

    counted = {}
    for name, figure in committed_figures.items():
        for _, _, label in layer_axes(figure):
            assert label in (LAYER_LABEL, BLOCK_LABEL), f"{name}: axis labelled {label!r}"
            counted.setdefault(name, set()).add(label)
        for ax in figure.axes:
            for label in (ax.get_xlabel(), ax.get_ylabel()):
                assert "relative depth" not in label or DEPTH_LABEL.split(" (")[1].rstrip(")") in label, f"{name}: {label!r}"
    # Every figure with a layer or block axis says so; the cross-model ones use relative depth.
    expected = {name for name in committed_figures if not name.startswith(("001 trajectories", "002 depth", "003 settling", "004 cross"))}
    assert set(counted) == expected
    assert all(labels == ({BLOCK_LABEL} if name.startswith("004") else {LAYER_LABEL}) for name, labels in counted.items())


def test_layer_and_block_axes_are_ticked_at_whole_numbers(committed_figures):
    """Not 2.5, 7.5, 12.5: the tick positions each axis shows, read back from the figure."""
    checked = 0
    for name, figure in committed_figures.items():
        for ax, which, label in layer_axes(figure):
            low, high = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
            ticks = [t for t in (ax.get_xticks() if which == "x" else ax.get_yticks()) if low <= t <= high]
            assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks), f"{name}: {label} ticked at {ticks}"
            checked += 1
    assert checked >= 15


def data_extents(ax):
    """Display-space boxes and points of what an axes draws from data: its lines' points,
    scatter points, bars and other patches, images and cell texts."""
    import numpy as np
    from matplotlib.transforms import Bbox

    boxes, points = [], []
    for line in ax.get_lines():
        xy = np.asarray(line.get_xydata(), dtype=float)
        xy = xy[np.isfinite(xy).all(axis=1)] if xy.size else xy
        if len(xy):
            points.append(line.get_transform().transform(xy))
    for collection in ax.collections:
        offsets = np.asarray(collection.get_offsets(), dtype=float)
        if len(offsets):
            points.append(collection.get_offset_transform().transform(offsets))
        else:
            boxes.append(collection.get_window_extent())
    boxes += [patch.get_window_extent() for patch in ax.patches]
    boxes += [image.get_window_extent() for image in ax.images]
    boxes += [text.get_window_extent() for text in ax.texts if text.get_text().strip()]
    return [b for b in boxes if isinstance(b, Bbox) and b.width > 0 and b.height > 0], (
        np.concatenate(points) if points else np.empty((0, 2)))


def test_no_legend_covers_data(committed_figures):
    """A legend sits outside the axes (or in the band above the panels): no line point, scatter
    point, bar, image or cell text of any axes lies under it."""
    checked = 0
    for name, figure in committed_figures.items():
        legends = [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend() is not None)]
        for legend in legends:
            box = legend.get_window_extent()
            for ax in figure.axes:
                boxes, points = data_extents(ax)
                covered = [b for b in boxes if box.overlaps(b)]
                inside = [p for p in points if box.contains(*p)]
                assert not covered and not inside, f"{name}: the legend {[t.get_text() for t in legend.get_texts()]} covers data of {ax.get_title()!r}"
            checked += 1
    assert checked >= 11


def test_the_cross_model_component_legend_leaves_every_bar_visible(committed_figures):
    """The figure where the legend covered the bars of three pairs."""
    figure = committed_figures["004 cross"]
    bars = figure.axes[2].patches
    assert len(bars) == 2 * 8  # two models, eight pairs
    legends = [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend() is not None)]
    assert legends and not [(legend, bar) for legend in legends for bar in bars
                            if legend.get_window_extent().overlaps(bar.get_window_extent())]


def outlined(ax) -> set[tuple[int, int]]:
    """(row, column) of each cell outlined on a heatmap as the answer."""
    return {(round(p.get_y() + 0.5), round(p.get_x() + 0.5)) for p in ax.patches if p.get_gid() == "answer"}


def test_the_heatmap_outlines_the_cells_whose_top1_is_the_answer(committed_figures):
    results = REPO / "results" / "001"
    for lens in ("logit", "tuned"):
        records = read_records(results / "output-gemma-3-270m-records.csv")
        rows = records[(records["probe"] == "capital-germany") & (records["lens"] == lens)]
        expected = {(int(r.layer), int(r.position)) for r in rows.itertuples() if r.top1_token == r.answer_token}
        assert expected  # Berlin is the top-1 at layers 16 and 17 of the last position
        ax = committed_figures[f"001 heatmap {lens} gemma-3-270m"].axes[0]
        assert outlined(ax) == expected
        assert "outlined (red): top-1 is the answer ␣Berlin" in ax.get_title()


def test_a_heatmap_without_the_answer_says_so(outputs):
    from workflow.experiments.exp001.plots import heatmap_figure

    records = read_records(outputs["llama"][1])
    data = heatmap_data(records, "tiny-llama", "capital")
    data.is_answer = [[False] * len(row) for row in data.is_answer]
    ax = heatmap_figure(data).axes[0]
    assert outlined(ax) == set() and "is top-1 in no cell" in ax.get_title()


def test_the_generation_heatmap_outlines_where_each_generated_token_is_top1(committed_figures):
    records = read_records(REPO / "results" / "003" / "output-gemma-3-270m-records.csv")
    rows = records[(records["probe"] == "capital-germany") & (records["lens"] == "logit")]
    expected = {(int(r.layer), int(r.position)) for r in rows.itertuples() if r.answer_rank == 1}
    ax = committed_figures["003 probe gemma-3-270m"].axes[0]
    assert outlined(ax) == expected and len(expected) > len(set(rows["position"]))  # more than the last layer's


def test_a_degenerate_calibration_is_not_drawn_as_a_fit(committed_figures):
    """Gemma's tuned lens at layers 0-12: top-1 accuracy 0, so the calibration error falls to 0
    only as the temperature reaches the grid's end. Those layers get no value on the best-T
    line, and the legend names them; the layers where it is a fit keep theirs."""
    import json
    import math

    summary = json.loads((REPO / "results" / "001" / "output-gemma-3-270m.json").read_text(encoding="utf-8"))
    temperatures = summary["temperatures"]
    degenerate, fitted = [], {}
    for layer, per_t in enumerate(summary["tuned_calibration"]["bins"]):  # computed here, from the JSON alone
        counts = [sum(c for c, _, _ in cells) for cells in per_t]
        errors = [sum(abs(h - s) for c, s, h in cells if c) / n for cells, n in zip(per_t, counts)]
        best = min(range(len(temperatures)), key=lambda j: (round(errors[j], 12), abs(math.log(temperatures[j]))))
        accuracy = sum(h for _, _, h in per_t[0]) / counts[0]
        at_end = temperatures[best] in (min(temperatures), max(temperatures))
        if at_end and accuracy in (0.0, 1.0):
            degenerate.append(layer)
        elif not at_end:
            fitted[layer] = errors[best]
    assert degenerate == list(range(13))
    ax = committed_figures["001 statistics gemma-3-270m"].axes[4]
    (line,) = [line for line in ax.get_lines() if line.get_label() == "tuned lens, best T per layer"]
    drawn = {int(x): y for x, y in line.get_xydata() if y == y}
    assert set(drawn).isdisjoint(degenerate) and drawn == pytest.approx(fitted)
    assert any("no fit at layers 0–12" in t.get_text() for t in ax.get_legend().get_texts())


def test_panels_with_too_few_probes_say_so_instead_of_drawing(committed_figures):
    from workflow.report.plots import MIN_PANEL_PROBES

    figure = committed_figures["001 statistics gemma-3-270m"]
    accuracy, depth = figure.axes[:2]
    for ax in (accuracy, depth):
        assert not ax.patches and not ax.lines  # no bar, no box plot of nine probes
        (text,) = [t.get_text() for t in ax.texts]
        assert f"9 probes: too few to draw (a group needs {MIN_PANEL_PROBES} probes)" in text
    assert "accuracy 44% (95% CI 19–73%)" in accuracy.texts[0].get_text()


def test_the_answer_by_layer_is_the_records(committed_figures):
    """The figure's data read again from the records CSV with pandas alone: per model, probe and
    lens, the answer's probability at the probe's last position at every layer, and the layers
    where its rank is 1; the figure draws exactly those (one column per model)."""
    import json

    import pandas as pd

    from workflow.experiments.exp001.plots import answer_by_layer
    from workflow.lens.records import load_checked

    figure = committed_figures["001 answer by layer"]
    axes = figure.axes
    for col, model in enumerate(MODELS):
        results = REPO / "results" / "001"
        summary = json.loads((results / f"output-{model}.json").read_text(encoding="utf-8"))
        frame = pd.read_csv(results / f"output-{model}-records.csv", keep_default_na=False)
        data = answer_by_layer(summary, load_checked(results / f"output-{model}-records.csv", results / f"output-{model}.json"))
        assert data.lenses == ["logit", "tuned"] and list(data.curves) == [p["id"] for p in summary["probes"]][:12]
        for row, probe in enumerate(data.curves):
            rows = frame[frame["probe"] == probe]
            last = rows[rows["position"] == rows["position"].max()]
            for lens in ("logit", "tuned"):
                mine = last[last["lens"] == lens].sort_values("layer")
                curve = data.curves[probe][lens]
                assert curve.layers == list(range(summary["n_layers"] + 1)) == mine["layer"].tolist()
                assert curve.prob == mine["answer_prob"].tolist() and curve.rank == mine["answer_rank"].tolist()
            if row < 3:  # the panels the fixture draws: this probe's row, this model's column
                ax = axes[row * len(MODELS) + col]
                assert ax.get_title().startswith(f"{model} · {probe} → ")
                lines = ax.get_lines()
                for i, lens in enumerate(("logit", "tuned")):
                    curve = data.curves[probe][lens]
                    assert list(lines[2 * i].get_ydata()) == curve.prob
                    assert list(lines[2 * i + 1].get_xdata()) == [x for x, r in zip(curve.layers, curve.rank) if r == 1]
    # Gemma reads " Berlin" as top-1 at layers 16 and 17 through the logit lens, then loses it at the output.
    gemma = axes[1].get_lines()
    assert list(gemma[1].get_xdata()) == [16, 17]
