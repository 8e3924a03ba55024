"""The config schema and the checks around it."""

import copy

import pytest
import yaml
from snakemake.utils import validate

from conftest import REPO
from workflow.config.schema import check_config, describe_validation_error, model_entry, schema_violation
from workflow.base.errors import UserError

SCHEMA = str(REPO / "config" / "schema.yaml")


def default_config():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_default_config_is_valid_and_gets_defaults():
    config = default_config()
    validate(config, SCHEMA)
    check_config(config, "config.yaml")
    assert set(config["models"]) == {"smollm2-135m-instruct", "gemma-3-270m"}
    assert config["lens"]["top_k"] == 5
    assert config["evaluation"]["provider"] == "offline"
    assert len(config["probes"]) >= 6
    ids = {p["id"] for p in config["probes"]}
    assert {"capital-germany", "capital-germany-reverse", "capital-germany-instruction"} <= ids
    assert sum(1 for p in config["probes"] if p.get("reverse_of")) >= 3


def schema_error(config):
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError) as info:
        validate(config, SCHEMA)
    cause = schema_violation(info.value)
    assert cause is not None
    return describe_validation_error(cause, "config/config.yaml")


@pytest.mark.parametrize(
    "edit, key, words",
    [
        (lambda c: c["models"]["gemma-3-270m"].update(source="ftp"), "models.gemma-3-270m.source", "is not one of"),
        (lambda c: c["probes"][1].update(prompt="  "), "probes[1].prompt", "blank"),
        (lambda c: c["lens"].update(positions="first"), "lens.positions", "is not one of"),
        (lambda c: c["lens"].update(top_k=0), "lens.top_k", "less than the minimum"),
        (lambda c: c["lens"].update(use_norm_lense=True), "lens", "unknown key"),
        (lambda c: c["models"]["gemma-3-270m"].update(pth="x"), "models.gemma-3-270m", "unknown key"),
        (lambda c: c["models"].update(x={"source": "gguf"}), "models.x", "'path' is a required property"),
        (lambda c: c["models"].update(x={"sorce": "gguf", "path": "x.gguf"}), "models.x",
         "'source' is a required property (the key 'sorce' is given instead: did you mean 'source'?)"),
        (lambda c: c["models"].update(x={"source": "gguf", "paht": "x.gguf"}), "models.x", "did you mean 'path'?"),
        (lambda c: c.update(placement={"max_memory": {"cpu": "3 parsecs"}}), "placement.max_memory.cpu", "300MB, 20GiB"),
        (lambda c: c.update(placement={"max_memory": {"gpu0": "1GB"}}), "placement.max_memory", "cpu, mps, cuda or cuda:N"),
        (lambda c: c["models"]["gemma-3-270m"].update(placement={"offload": "x"}), "models.gemma-3-270m.placement", "unknown key"),
    ],
)
def test_schema_errors_name_the_key(edit, key, words):
    config = copy.deepcopy(default_config())
    edit(config)
    message = schema_error(config)
    assert message.startswith("config/config.yaml: invalid value at key ")
    assert repr(key) in message
    assert words in message


def test_cross_field_checks():
    config = default_config()
    validate(config, SCHEMA)
    bad = copy.deepcopy(config)
    bad["probes"].append(dict(bad["probes"][0]))
    with pytest.raises(UserError, match="repeated: capital-germany"):
        check_config(bad, "c.yaml")
    bad = copy.deepcopy(config)
    bad["probes"][1]["reverse_of"] = "nowhere"
    with pytest.raises(UserError, match="reverse_of 'nowhere'"):
        check_config(bad, "c.yaml")


def test_unknown_model_lists_known_ones():
    with pytest.raises(UserError, match="unknown model 'gpt5'.*smollm2-135m-instruct, gemma-3-270m"):
        model_entry(default_config(), "gpt5")


def _alias_bomb(levels: int, mappings: bool = False) -> str:
    """YAML whose few lines expand to 10**levels values (anchors and aliases nested), in lists
    or in mappings (which Snakemake copies once per use while it reads the config)."""
    def node(item):
        return "{" + ", ".join(f"k{i}: {item}" for i in range(10)) + "}" if mappings else "[" + ", ".join([item] * 10) + "]"

    text = f'  a: &a {node(chr(34) + "lol" + chr(34))}\n'
    names = "abcdefghijklmnop"
    for previous, name in zip(names, names[1:levels]):
        text += f"  {name}: &{name} {node('*' + previous)}\n"
    return text


@pytest.mark.parametrize("where", ["unknown", "known", "mapping"])
def test_a_yaml_alias_bomb_in_the_config_is_refused_at_once(tmp_path, where):
    """Nine levels of aliases stand for a billion values: refused in a second or two, naming the
    key, instead of the dry run growing past 8 GB, whether they nest lists or mappings (which
    Snakemake copies once per use); unknown top-level keys are named at once."""
    import time

    from pipeline import planning_error, scratch_copy, snakemake

    workdir = scratch_copy(tmp_path / "w")
    config = workdir / "config" / "config.yaml"
    text = config.read_text(encoding="utf-8")
    if where == "unknown":  # named at once, with the known key each is spelt like
        config.write_text(text + "\nlaughs: 1\nlenz: {top_k: 3}\n", encoding="utf-8")
    elif where == "mapping":
        config.write_text(text + "\nlaughs:\n" + _alias_bomb(9, mappings=True), encoding="utf-8")
    else:
        config.write_text(text.replace("\nlens:\n", "\nlens:\n  bomb:\n" + _alias_bomb(9).replace("\n  ", "\n    ").replace("  a:", "    a:", 1), 1), encoding="utf-8")
    started = time.monotonic()
    result = snakemake(workdir, "-n", timeout=120)
    seconds = time.monotonic() - started
    if where == "unknown":
        planning_error(result, "config/config.yaml: unknown top-level keys 'laughs', 'lenz' (did you mean 'lens'?)")
    elif where == "mapping":
        planning_error(result, "config/config.yaml: key 'laughs' holds more than 1,000,000 values")
    else:
        planning_error(result, "config/config.yaml: key 'lens' holds more than 1,000,000 values")
    assert seconds < 60


def test_a_probe_file_of_aliases_is_refused_naming_it(tmp_path):
    from workflow.config.probes import load

    path = tmp_path / "probes.yaml"
    path.write_text("base:\n" + _alias_bomb(8) + "probes: *h\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"probes.yaml: key '(base|probes)' holds more than 1,000,000 values"):
        load({"file": str(path)}, tmp_path)


def test_config_values_inside_alternatives_are_read_as_yaml():
    """``--config`` hands nested values over as strings; inside a key whose schema offers
    alternatives (a probe set is a list of probes or a mapping) they are read as YAML too."""
    from workflow.config.schema import coerce_strings

    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    config = coerce_strings({"probes": [{"id": "x", "prompt": "The capital of Germany is Ber", "answer": "lin",
                                         "answer_joins": "true"}]}, schema)
    assert config["probes"][0]["answer_joins"] is True and config["probes"][0]["answer"] == "lin"
    config = coerce_strings({"probes": {"relations": "country_capital_city", "limit": "3"}}, schema)
    assert config["probes"] == {"relations": "country_capital_city", "limit": 3}
    config = coerce_strings({"placement": {"max_memory": {"cpu": "3000", "cuda": "20GiB"}}}, schema)
    assert config["placement"]["max_memory"] == {"cpu": "3000", "cuda": "20GiB"}  # a string is one of its forms
