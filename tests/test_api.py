"""The Python API (workflow/api.py): the pipeline's numbers from a notebook or a script.

The records it returns are compared with records the pipeline wrote (a tiny models' run with
both lenses, and the embedded SmolLM2's committed records); generation with transformers' own
greedy decoding; patching with a plain forward pass patched by hooks. The example notebook is
checked to be its script's cells here, and executed in tests/test_e2e.py where the embedded
models are prepared and their tuned lenses trained.
"""

import json
import os
import re

import pytest
import torch
import yaml

from pipeline import REPO, prepared_model, same_rank_elsewhere
from workflow import api
from workflow.base.errors import UserError
from workflow.lens.records import COLUMNS, read_records


def same_records(ours, theirs, rel: float, abs_: float, elsewhere: bool = False) -> None:
    """``ours`` (an API frame) row for row equal to ``theirs`` (read from a records file,
    numbers rounded to six significant digits there; ``elsewhere``: written on another
    machine, where a rank deep in the tail can differ by float noise)."""
    assert list(ours.columns) == list(COLUMNS)
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours.to_dict("records"), theirs.to_dict("records")):
        where = (a["probe"], a["lens"], a["layer"], a["position"])
        assert where == (b["probe"], b["lens"], b["layer"], b["position"])
        for column in ("input_token", "top1_token", "answer_token", "topk_tokens"):
            assert a[column] == b[column], (column, where)
        if elsewhere:
            assert same_rank_elsewhere(a["answer_rank"], b["answer_rank"]), (a["answer_rank"], b["answer_rank"], where)
        else:
            assert a["answer_rank"] == b["answer_rank"], where
        for column in ("top1_prob", "entropy", "answer_prob", "kl_to_final"):
            assert a[column] == pytest.approx(b[column], rel=rel, abs=abs_), (column, where)


@pytest.mark.parametrize("key", ["tiny-llama", "tiny-gemma3"])
def test_lens_gives_the_records_the_pipeline_wrote(tuned_run, key):
    """Both lenses, the run's own probes and settings: the records of results/001 (the tuned
    lens is the one the pipeline trained, found in the run's resources/lenses/)."""
    config = yaml.safe_load((tuned_run / "config" / "config.yaml").read_text())
    model = api.load(key, workdir=tuned_run)
    assert model.n_layers == json.loads((tuned_run / "results" / "001" / f"output-{key}.json").read_text())["n_layers"]
    frame = model.lens(config["probes"])
    written = read_records(tuned_run / "results" / "001" / f"output-{key}-records.csv")
    same_records(frame, written, rel=1e-5, abs_=1e-9)
    summary = json.loads((tuned_run / "results" / "001" / f"output-{key}.json").read_text())
    for ours, theirs in zip(frame.attrs["summary"]["probes"], summary["probes"]):
        for field in ("id", "input_ids", "first_top1_layer", "stable_top1_layer", "tuned", "final_top1_token"):
            assert ours[field] == theirs[field], field
    # No tuned lens was trained again: the pipeline's was read.
    assert not (tuned_run / api.OWN_LENSES).exists()


def test_lens_gives_the_committed_records_of_an_embedded_model(tmp_path, tmp_path_factory):
    """SmolLM2's logit-lens records as committed in results/001 (made on another machine:
    they agree to about 1e-5 there), read through the API in a folder holding the model
    the pipeline prepared."""
    key = "smollm2-135m-instruct"
    (tmp_path / "resources" / "models").mkdir(parents=True)
    os.symlink(prepared_model(key, tmp_path_factory), tmp_path / "resources" / "models" / key)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    model = api.load(key, workdir=tmp_path, config=REPO / "config" / "config.yaml")
    frame = model.lens(config["probes"][:3], lenses=("logit",))
    committed = read_records(REPO / "results" / "001" / f"output-{key}-records.csv")
    ids = [p["id"] for p in config["probes"][:3]]
    committed = committed[(committed["lens"] == "logit") & committed["probe"].isin(ids)]
    same_records(frame, committed, rel=1e-4, abs_=1e-5, elsewhere=True)
    assert not (tmp_path / api.OWN_MODELS).exists()  # the pipeline's prepared model was used
    # Without an answer the model's own next token is the answer: its final top-1.
    own = model.lens("The capital of Germany is", lenses=("logit",), positions="last")
    final = frame[(frame["probe"] == "capital-germany") & (frame["layer"] == model.n_layers)]
    final = final[final["position"] == final["position"].max()]
    assert (own["answer_token"] == final["top1_token"].item()).all()
    assert own[own["layer"] == model.n_layers]["answer_rank"].item() == 1


@pytest.fixture(scope="module")
def tiny(tiny_dirs, tmp_path_factory):
    """The tiny Llama loaded by its directory (not a config key), logit lens only."""
    config = tmp_path_factory.mktemp("api-config") / "config.yaml"
    config.write_text(yaml.safe_dump({"device": "cpu", "dtype": "float32", "lenses": ["logit"], "lens": {"top_k": 3},
                                      "models": {"catalogued": {"source": "local", "path": str(tiny_dirs["gemma3"])}},
                                      "probes": [{"id": "p", "prompt": "x", "answer": " y"}]}))
    return api.load(str(tiny_dirs["llama"]), config=config, workdir=config.parent)


def test_a_prompt_without_an_answer_needs_a_next_token_that_reads_back(tiny):
    # The tiny random model's next token is a piece of a character: it cannot be an answer.
    with pytest.raises(UserError, match="does not read back as one token; give the answer"):
        tiny.lens("The capital of Germany is", lenses=("logit",))
    frame = tiny.lens(["The capital of Germany is", "The capital of Germany is"], [" Berlin", " Paris"], positions="last",
                      lenses=("logit",))
    assert frame["probe"].unique().tolist() == ["the-capital-of-germany-is", "the-capital-of-germany-is-2"]
    assert frame.groupby("probe")["answer_token"].first().tolist() == [" Berlin", " Paris"]


def test_generate_is_transformers_greedy_decoding(tiny, tiny_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    frame = tiny.generate("The capital of Germany is", max_new_tokens=5)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"], dtype=torch.float32)
    ids = tokenizer("The capital of Germany is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()
    summary = frame.attrs["summary"]
    assert summary["generated_ids"] == out[: len(summary["generated_ids"])]
    assert sorted(frame["position"].unique()) == list(range(len(summary["generated_ids"])))
    assert list(frame.columns) == list(COLUMNS)
    assert (frame[frame["layer"] == tiny.n_layers]["top1_token"].tolist()
            == [tokenizer.decode([t]) for t in summary["generated_ids"]])


def test_patch_equals_a_forward_pass_patched_by_hooks(tiny, tiny_dirs):
    from test_patching import reference_logit_diff, reference_residuals
    from transformers import AutoModelForCausalLM

    frame = tiny.patch("The capital of Germany is", " Berlin", "The capital of France is", " Paris")
    summary = frame.attrs["summary"]["pairs"][0]
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"], dtype=torch.float32)
    clean_ids, corrupted_ids = summary["clean_input_ids"], summary["corrupted_input_ids"]
    a, b = summary["clean_answer_token_id"], summary["corrupted_answer_token_id"]
    clean = reference_residuals(hf, clean_ids)
    ld_clean, ld_corrupted = reference_logit_diff(hf, clean_ids, a, b), reference_logit_diff(hf, corrupted_ids, a, b)
    rows = frame[(frame["corruption"] == "prompt") & (frame["direction"] == "denoise")]
    assert len(rows) == (tiny.n_layers + 1) * len(clean_ids)
    for layer, position in [(0, 1), (1, len(clean_ids) - 1), (tiny.n_layers, len(clean_ids) - 1)]:
        ld = reference_logit_diff(hf, corrupted_ids, a, b, [(layer, position, clean[layer, position])])
        got = rows[(rows["layer"] == layer) & (rows["position"] == position)]["recovered"].item()
        assert got == pytest.approx((ld - ld_corrupted) / (ld_clean - ld_corrupted), abs=1e-4), (layer, position)
    figure = api.plot_patching(frame)
    assert "recovered" in figure.axes[0].get_title()


def test_plots_name_their_lens_and_show_the_records(tiny):
    frame = tiny.lens("The capital of Germany is", " Berlin", lenses=("logit",))
    figure = api.plot_heatmap(frame)
    assert "logit lens" in figure.axes[0].get_title()
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert len(texts) == len(frame)
    figure = api.plot_answer_by_layer({"tiny": frame})
    line = figure.axes[0].lines[0]
    last = frame[frame["position"] == frame["position"].max()].sort_values("layer")
    assert list(line.get_ydata()) == pytest.approx(last["answer_prob"].tolist())
    with pytest.raises(UserError, match="no tuned-lens records"):
        api.plot_heatmap(frame, lens="tuned")


def test_bad_input_is_a_clear_error(tiny, tmp_path):
    config = {"models": {"a": {}}}
    with pytest.raises(UserError, match=r"missing\.gguf: no such GGUF file"):
        api.model_source(str(tmp_path / "missing.gguf"), config, "c.yaml")
    with pytest.raises(UserError, match="without config.json"):
        api.model_source(str(tmp_path), config, "c.yaml")
    with pytest.raises(UserError, match=r"'nothing' is not a model key of c.yaml \(a\)"):
        api.model_source("nothing", config, "c.yaml")
    assert api.model_source("org/Some-Model", config, "c.yaml") == ("org--some-model", {"source": "hf", "repo": "org/Some-Model"})
    with pytest.raises(UserError, match="2 prompts but 1 answers"):
        tiny.lens(["a b", "c d"], [" e"])
    with pytest.raises(UserError, match="the lenses are 'logit'"):
        tiny.lens("a b", " c", lenses=("logit", "tunde"))
    with pytest.raises(UserError, match="no such config file"):
        api.load("x", config=tmp_path / "absent.yaml")


def test_bad_arguments_are_one_clear_error_before_any_work(tiny, tmp_path, monkeypatch):
    """Arguments of the wrong type or value are a TypeError or ValueError naming the function,
    the argument and what it takes, raised before a model is prepared or loaded."""
    import workflow.model.load as models

    def no_work(*args, **kwargs):
        raise AssertionError("a model was prepared or loaded before the arguments were checked")

    monkeypatch.setattr(models, "load_model", no_work)
    monkeypatch.setattr(api, "prepared_dir", no_work)
    config = tiny.workdir / "config.yaml"
    with pytest.raises(TypeError, match=r"api\.load: model is a config key, a model directory, a \.gguf file or a hub id "
                                        r"\(a str\), not NoneType None"):
        api.load(None, config=config)
    with pytest.raises(ValueError, match=r"api\.load: dtype='float8' is not one of 'auto', 'float32', 'float16', 'bfloat16'"):
        api.load("catalogued", config=config, dtype="float8")
    with pytest.raises(ValueError, match=r"device='gpu' is not one of 'auto', 'cpu', 'cuda', 'mps'"):
        api.load("catalogued", config=config, device="gpu")
    with pytest.raises(ValueError, match=r"backend='lens' is not one of"):
        api.load("catalogued", config=config, backend="lens")
    with pytest.raises(TypeError, match=r"Model\.lens: prompts are a str, or a list of str or of probes .*not int 123"):
        tiny.lens(123, " x")
    with pytest.raises(TypeError, match=r"Model\.lens: answers are a str, or a list of str"):
        tiny.lens(["a b"], [7])
    with pytest.raises(ValueError, match=r"Model\.lens: no prompts given"):
        tiny.lens([])
    with pytest.raises(TypeError, match=r"Model\.generate: prompt is a str, not int 5"):
        tiny.generate(5)
    with pytest.raises(ValueError, match=r"Model\.generate: max_new_tokens is a whole number of at least 1, not 0"):
        tiny.generate("a b", max_new_tokens=0)
    with pytest.raises(TypeError, match=r"Model\.patch: corrupted is a str, not NoneType None"):
        tiny.patch("a b", " c", None, " d")
    with pytest.raises(UserError, match=r"Model\.lens, probe 1 \('the-capital-of-italy-is'\): the answer 'Rome' .* did you mean ' Rome'\?"):
        tiny.lens("The capital of Italy is", "Rome")
    with pytest.raises(UserError, match=r"Model\.patch: pair 'pair': the clean_answer 'Rome' .* did you mean ' Rome'\?"):
        tiny.patch("The capital of Italy is", "Rome", "The capital of Spain is", " Madrid")


def test_an_answer_meant_to_join_its_prompt_is_read(tiny):
    frame = tiny.lens([{"id": "joined", "prompt": "The capital of Germany is Ber", "answer": "lin", "answer_joins": True}],
                      lenses=("logit",), positions="last")
    assert frame["probe"].unique().tolist() == ["joined"] and frame.attrs["summary"]["probes"][0]["answer"] == "lin"


def test_plot_functions_refuse_what_is_not_records(tiny):
    frame = tiny.lens("The capital of Germany is", " Berlin", lenses=("logit",), positions="last")
    with pytest.raises(ValueError, match=r"plot_answer_by_layer: no records; give a frame made by Model\.lens"):
        api.plot_answer_by_layer({})
    with pytest.raises(TypeError, match=r"plot_answer_by_layer\['a'\]: records are a DataFrame made by Model\.lens.*not int 3"):
        api.plot_answer_by_layer({"a": 3})
    with pytest.raises(ValueError, match=r"plot_answer_by_layer: no records of the lenses \['tuned'\] \(the records have \['logit'\]\)"):
        api.plot_answer_by_layer(frame, lenses=("tuned",))
    with pytest.raises(ValueError, match=r"plot_answer_by_layer: the records are empty"):
        api.plot_answer_by_layer(frame.iloc[:0])
    with pytest.raises(TypeError, match=r"plot_heatmap: records are a DataFrame"):
        api.plot_heatmap("records.csv")
    with pytest.raises(ValueError, match=r"plot_patching: the records have no column 'pair', 'direction', 'corruption'"):
        api.plot_patching(frame)
    with pytest.raises(TypeError, match=r"explore: records are a DataFrame"):
        api.explore([1, 2], tiny.workdir / "x.html")


def test_a_gguf_file_given_as_such_is_refused_naming_the_file_not_a_config_key(tiny, tmp_path):
    """api.load(path) has no config key to name: the errors name the file; a directory is
    called a directory, not missing."""
    from workflow.gguf.prepare import locate_gguf

    config = tiny.workdir / "config.yaml"
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all, only some text" * 2)
    with pytest.raises(UserError) as refused:
        api.load(str(bad), config=config, workdir=tmp_path)
    message = str(refused.value)
    assert "bad.gguf' is not a usable GGUF file: " in message and "GGUF magic" in message
    assert "config key" not in message and "models.bad" not in message
    assert not (tmp_path / api.OWN_MODELS / "bad").exists()
    folder = tmp_path / "folder.gguf"
    folder.mkdir()
    with pytest.raises(UserError, match=r"folder\.gguf: a directory, not a GGUF file; give the path of a \.gguf file"):
        api.load(str(folder), config=config, workdir=tmp_path)
    with pytest.raises(UserError, match=r"model 'm': GGUF file '.*folder\.gguf' is a directory, not a GGUF file "
                                        r"\(config key models\.m\.path in c\.yaml\); point it at the \.gguf file"):
        locate_gguf("m", {"source": "gguf", "path": str(folder)}, tmp_path, "c.yaml")
    with pytest.raises(UserError, match=r"GGUF file '.*absent\.gguf' does not exist \(config key models\.m\.path in c\.yaml\)"):
        locate_gguf("m", {"source": "gguf", "path": str(tmp_path / "absent.gguf")}, tmp_path, "c.yaml")


def test_a_model_prepared_from_another_source_is_prepared_again(tmp_path, monkeypatch):
    import workflow.gguf.prepare as prepare

    entry = {"source": "gguf", "path": str(tmp_path / "a.gguf")}
    out = tmp_path / api.OWN_MODELS / "m"
    out.mkdir(parents=True)
    made = []
    monkeypatch.setattr(prepare, "prepare_model", lambda key, entry, folder, **kwargs: made.append(folder))
    # The file as it is now (tests/test_stale_weights.py: a file that changed is prepared again).
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(prepare, "source_fingerprint", lambda key, entry, configfile=None: {"sha256": "f" * 64})
    fingerprint = {"source_fingerprint": {"sha256": "f" * 64}}
    (out / "manifest.json").write_text(json.dumps({"source": prepare.source_description(entry), **fingerprint}))
    assert api.prepared_dir("m", entry, tmp_path) == str(out) and made == []
    (out / "manifest.json").write_text(json.dumps({"source": prepare.source_description({**entry, "path": "/elsewhere.gguf"}),
                                                   **fingerprint}))
    assert api.prepared_dir("m", entry, tmp_path) == str(out) and made == [out]


NOTEBOOK = REPO / "examples" / "capital-of-germany.ipynb"


def test_the_notebook_is_its_scripts_cells():
    """examples/capital-of-germany.ipynb is written from examples/capital_of_germany.py
    (examples/make_notebook.py); the two say the same, and every code cell was executed."""
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location("make_notebook", REPO / "examples" / "make_notebook.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    made = maker.notebook((REPO / "examples" / "capital_of_germany.py").read_text(encoding="utf-8"))
    committed = nbformat.read(NOTEBOOK, as_version=4)
    assert [(c.cell_type, c.source) for c in made.cells] == [(c.cell_type, c.source) for c in committed.cells], (
        "run .venv/bin/python examples/make_notebook.py")
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert len(code) >= 6
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "committed without its outputs"


def _shown(cell) -> list:
    """What a code cell shows people, as text: printed lines, and each displayed value's text
    forms (a table's text and HTML, a figure's description), with whether it has an image."""
    shown = []
    for output in cell.outputs:
        assert output.output_type != "error", output
        if output.output_type == "stream":
            if output.name == "stdout":
                shown.append(output.text)
        else:
            data = dict(output.data)
            shown.append((data.pop("image/png", None) is not None, data))
    return shown


def test_the_notebook_shows_what_its_code_makes_of_the_committed_results(tmp_path, monkeypatch):
    """The committed notebook's outputs, made by executing it on the models, are what its
    code makes of the committed results: its cells run again in a kernel, the models
    answering from results/001 and results/002 (tests/committed_models.py), print and
    display the same text (lines, tables, figure descriptions). Figures are compared
    loosely: the same outputs have an image, not the same pixels."""
    import copy

    import nbformat
    from nbclient import NotebookClient

    committed = nbformat.read(NOTEBOOK, as_version=4)
    book = copy.deepcopy(committed)
    for cell in book.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    book.cells.insert(0, nbformat.v4.new_code_cell(
        f"import sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\nimport committed_models\ncommitted_models.install()"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    NotebookClient(book, timeout=120, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    pairs = [(ours, theirs) for ours, theirs in zip(book.cells[1:], committed.cells) if theirs.cell_type == "code"]
    for number, (ours, theirs) in enumerate(pairs, 1):
        assert _shown(ours) == _shown(theirs), f"code cell {number}: run .venv/bin/python examples/make_notebook.py"
    assert sum(image for cell in committed.cells if cell.cell_type == "code" for image, _ in
               (item for item in _shown(cell) if isinstance(item, tuple))) == 3
    printed = "".join(item for cell in committed.cells if cell.cell_type == "code" for item in _shown(cell) if isinstance(item, str))
    assert "the answer ' Berlin'" in printed and not PYTHON_WORDS.search(printed), printed


def test_explore_writes_the_explorer_page_of_a_frame(tiny, tmp_path):
    """The pipeline's explorer page, made from the API's frames: the page's data are the frame's rows."""
    import json
    import re

    import pandas as pd

    frame = tiny.lens(["The capital of Germany is", "Paris is the capital of"], [" Berlin", " France"], lenses=("logit",))
    page = api.explore(frame, tmp_path / "lens.html")
    data = json.loads(re.search(r'id="explorer-data">(.*?)</script>', page.read_text(encoding="utf-8"), re.S).group(1))
    assert data["kind"] == "lens" and data["experiment"] == "001" and len(data["probes"]) == 2
    first = frame.iloc[0]
    cell = data["probes"][0]["cells"]["logit"][0][0]
    assert data["tokens"][cell[0]] == first["top1_token"] and cell[1] == pytest.approx(first["top1_prob"])
    # A frame with both lenses shows both (an API summary does not list them; its rows do).
    both = pd.concat([frame, frame.assign(lens="tuned", top1_prob=frame["top1_prob"] / 2)], ignore_index=True)
    both.attrs["summary"] = frame.attrs["summary"]
    data = json.loads(re.search(r'id="explorer-data">(.*?)</script>', api.explore(both, tmp_path / "both.html").read_text(encoding="utf-8"),
                                re.S).group(1))
    assert data["lenses"] == ["logit", "tuned"]
    assert data["probes"][0]["cells"]["tuned"][0][0][1] == pytest.approx(first["top1_prob"] / 2)
    generated = tiny.generate("The capital of Germany is", max_new_tokens=3)
    assert json.loads(re.search(r'id="explorer-data">(.*?)</script>', api.explore(generated, tmp_path / "g.html").read_text(encoding="utf-8"),
                                re.S).group(1))["experiment"] == "003"
    with pytest.raises(UserError, match="needs a frame made by Model.lens"):
        api.explore(pd.DataFrame(frame.to_dict()), tmp_path / "bare.html")  # the same rows, no summary


# Words of Python (or pandas) that mean nothing to a reader of printed text.
PYTHON_WORDS = re.compile(r"\b(None|nan|NaN|inf|True|False|null|dtype)\b|<NA>|[\[\]{}]")


def _lens_frame(ranks: dict[str, list[int]], model: str = "m") -> "pd.DataFrame":
    """Records of one probe at its last prompt position: the answer's rank at each layer, per lens."""
    import pandas as pd

    rows = [{"model": model, "probe": "p", "lens": lens, "layer": layer, "position": 4, "top1_token": " Berlin" if rank == 1 else " the",
             "answer_token": " Berlin", "answer_rank": rank} for lens, by_layer in ranks.items() for layer, rank in enumerate(by_layer)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("ranks, words", [
    ({"logit": [9, 7, 5, 3], "tuned": [8, 6, 4, 2]}, ["logit lens: never the top-1 (the output's top-1 is ' the')"]),
    ({"logit": [9, 1, 1, 2], "tuned": [9, 9, 1, 3]}, ["logit lens: the top-1 first at layer 1 of 3, not at the output",
                                                     "the logit lens reads it as the top-1 1 layer before the tuned lens"]),
    ({"logit": [9, 1, 2, 1], "tuned": [1, 1, 1, 1]}, ["logit lens: the top-1 first at layer 1 of 3, and from layer 3 to the output",
                                                     "tuned lens: the top-1 from layer 0 of 3 to the output"]),
    ({"logit": [9, 9, 9, 1], "tuned": [9, 9, 9, 9]}, ["logit lens: the top-1 only at the output (layer 3 of 3)",
                                                     "tuned lens: never the top-1"]),
    ({"logit": [9, 9, 9, 9]}, ["m (3 layers), probe p: the answer ' Berlin' at the last prompt position", "never the top-1"]),
])
def test_the_printed_emergence_says_never_not_none(ranks, words):
    """Where the answer never becomes, or never stays, the top-1, the words say so: no
    Python word (None, nan, ...) in what is printed for people."""
    text = api.describe_emergence({"m": _lens_frame(ranks)})
    assert not PYTHON_WORDS.search(text), text
    for word in words:
        assert word in text, text


def test_the_chat_line_of_a_token_that_never_stays_top1_says_never():
    """lens-chat's line of a sampled token that is top-1 at a middle layer only."""
    from types import SimpleNamespace

    from workflow.chat import Chat

    chat = Chat.__new__(Chat)
    chat.model = SimpleNamespace(n_layers=30)
    chat.generator = SimpleNamespace(lens_names=["logit", "tuned"], names=lambda token: " Berlin")
    trace = SimpleNamespace(index=0, token_id=7, model_prob=0.25, first_top1_layer=lambda lens: {"logit": 12, "tuned": None}[lens],
                            stable_top1_layer=lambda lens: None)
    line = chat.line(trace)
    assert "layer 12 (never) of 30" in line and "never top-1" in line
    assert not PYTHON_WORDS.search(line), line


def test_the_readme_snippet_run_as_a_script_prints_and_saves_what_it_found(tuned_run, tmp_path, monkeypatch, capsys):
    """The README's Python block run as a script, in a folder of its own (the model a tiny
    one the pipeline ran, with its tuned lens): it prints where the answer becomes the top-1
    and writes its figure and its explorer page."""
    import runpy

    (block,) = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    load = api.load
    monkeypatch.setattr(api, "load", lambda model, **settings: load("tiny-llama", workdir=tuned_run))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "readme.py").write_text(block, encoding="utf-8")
    runpy.run_path(str(tmp_path / "readme.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "the answer ' Berlin' at the last prompt position" in printed and "  tuned lens: " in printed, printed
    assert not PYTHON_WORDS.search(printed), printed
    assert (tmp_path / "berlin.png").read_bytes().startswith(b"\x89PNG")
    assert "explorer-data" in (tmp_path / "berlin.html").read_text(encoding="utf-8")
