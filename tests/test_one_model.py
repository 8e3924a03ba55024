"""A config with one model builds: every experiment's offline analyst writes cross-model and
meta evaluations that meet their templates' content contract when there is nothing to compare
(one model is the most common first config a user writes)."""

import json
from pathlib import Path

import pytest

from pipeline import REPO
from workflow.evaluation.run import evaluate
from workflow.evaluation.experiment import registered

MODELS = ("smollm2-135m-instruct", "gemma-3-270m")


def _inputs(exp: str, model: str) -> dict[str, str]:
    """The committed inputs of one model's evaluation of experiment ``exp`` (as its rules file registers them)."""
    paths = {"summary": f"results/{exp}/output-{model}.json", "records": f"results/{exp}/output-{model}-records.csv"}
    if exp == "002":
        paths["lens_summary"] = f"results/001/output-{model}.json"
    return {name: str(REPO / path) for name, path in paths.items()}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("exp", registered())
def test_cross_model_and_meta_evaluations_of_one_model_meet_the_contract(exp, model, tmp_path):
    inputs = [_inputs(exp, model)]
    if not Path(inputs[0]["summary"]).is_file():
        pytest.fail(f"no committed output of experiment {exp} for {model}: {inputs[0]['summary']}")
    single = tmp_path / "single.md"
    evaluate("single-model", exp, inputs, str(REPO / f"prompts/{exp}/single-model-evaluation.md"),
             {"provider": "offline"}, str(single))
    cross = tmp_path / "cross.md"
    written = evaluate("cross-model", exp, inputs, str(REPO / f"prompts/{exp}/cross-model-evaluation.md"),
                       {"provider": "offline"}, str(cross), evaluations=[str(single)])
    assert model in written.text
    meta = tmp_path / "meta.md"
    evaluate("meta", exp, inputs, str(REPO / f"prompts/{exp}/meta-evaluation.md"),
             {"provider": "offline"}, str(meta), cross=str(cross))
    assert meta.read_text(encoding="utf-8").startswith("# ")
    json.dumps(written.text)
