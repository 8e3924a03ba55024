"""OpenAI and Anthropic providers through their real SDKs against a local test server."""

import shutil

import pytest

from conftest import tiny_config
from llm_server import KEY, MARKER
from pipeline import files_under, finished_run, planning_error, said, snakemake, write_config
from workflow.base.errors import UserError
from workflow.evaluation.providers import EvaluationRequest, ProviderError, make_provider
from workflow.evaluation.run import EvaluationError, complete
from workflow.evaluation.templates import heading_problems, load_template

PROVIDERS = ["openai", "anthropic"]
EVALUATIONS = ["evaluation-cross-model.md", "evaluation-meta.md", "evaluation-tiny-gemma3.md", "evaluation-tiny-llama.md"]


def settings(server, provider, tmp_path, **extra):
    url = server.openai_url if provider == "openai" else server.anthropic_url
    return {
        "provider": provider,
        "model": "test-model",
        "base_url": url,
        "max_retries": 2,
        "timeout": 20,
        "cache_dir": str(tmp_path / "cache"),
        "temperature": 0.0,
        **extra,
    }


REQUEST = EvaluationRequest(
    stage="single-model",
    title="t",
    system="be precise",
    prompt="Evaluate.\n## Summary\n## Details\n## Caveats\n",
    headings=("Summary", "Details", "Caveats"),
    facts=None,
)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_answer_goes_through_the_real_sdk(llm, provider, tmp_path):
    text = complete(REQUEST, make_provider(settings(llm, provider, tmp_path))).text
    assert MARKER in text and heading_problems(text, REQUEST.headings) == []
    (request,) = llm.requests
    assert request["kind"] == provider
    body = request["body"]
    assert body["model"] == "test-model" and body["temperature"] == 0.0
    if provider == "openai":
        assert body["messages"][0] == {"role": "system", "content": "be precise"}
        assert body["max_tokens"] == 4096  # compatible servers take max_tokens
        assert request["headers"]["authorization"] == f"Bearer {KEY}"
    else:
        assert body["system"] == "be precise" and body["max_tokens"] == 4096
        headers = request["headers"]
        assert headers.get("x-api-key") == KEY or headers.get("authorization") == f"Bearer {KEY}"
        assert "anthropic-version" in headers


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rate_limit_then_success_is_retried(llm, provider, tmp_path):
    llm.statuses = [429]
    text = complete(REQUEST, make_provider(settings(llm, provider, tmp_path))).text
    assert MARKER in text
    assert len(llm.requests) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_persistent_server_error_fails_cleanly(llm, provider, tmp_path):
    llm.always_status = 500
    with pytest.raises(ProviderError, match="HTTP 500") as info:
        complete(REQUEST, make_provider(settings(llm, provider, tmp_path, max_retries=1)))
    assert len(llm.requests) == 2  # the first try and one bounded retry
    assert KEY not in str(info.value)
    assert files_under(tmp_path / "cache") == []


@pytest.mark.parametrize("provider", PROVIDERS)
def test_missing_heading_triggers_exactly_one_repair(llm, provider, tmp_path):
    llm.drop_last_heading = 1
    text = complete(REQUEST, make_provider(settings(llm, provider, tmp_path))).text
    assert heading_problems(text, REQUEST.headings) == []
    assert len(llm.requests) == 2
    repair = [m for m in llm.requests[1]["body"]["messages"] if m["role"] != "system"]
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    assert "'## Caveats' is missing" in repair[-1]["content"]


def test_failed_repair_is_an_error(llm, tmp_path):
    llm.drop_last_heading = 2
    with pytest.raises(EvaluationError, match="heading '## Caveats' is missing"):
        complete(REQUEST, make_provider(settings(llm, "openai", tmp_path)))
    assert len(llm.requests) == 2


def test_model_is_required(llm, tmp_path):
    with pytest.raises(UserError, match="evaluation.model is required"):
        make_provider(settings(llm, "anthropic", tmp_path, model=None))


def test_temperature_is_left_out_unless_set(llm, tmp_path):
    for provider in PROVIDERS:
        complete(REQUEST, make_provider(settings(llm, provider, tmp_path, temperature=None)))
    assert [("temperature" in r["body"]) for r in llm.requests] == [False, False]


@pytest.mark.parametrize("provider, variable", [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")])
def test_missing_key_fails_before_any_request(llm, provider, variable, tmp_path, monkeypatch):
    monkeypatch.delenv(variable)
    with pytest.raises(UserError, match=variable):
        make_provider(settings(llm, provider, tmp_path))
    assert llm.requests == []


def test_cache_answers_the_second_call(llm, tmp_path):
    provider = make_provider(settings(llm, "anthropic", tmp_path))
    first = complete(REQUEST, provider)
    again = complete(REQUEST, make_provider(settings(llm, "anthropic", tmp_path)))
    assert first == again and len(llm.requests) == 1
    changed = make_provider(settings(llm, "anthropic", tmp_path, temperature=0.5))
    complete(REQUEST, changed)
    assert len(llm.requests) == 2  # a different parameter is a different key


# ---------------------------------------------------------------- through Snakemake


@pytest.fixture(scope="module")
def lens_done(tiny_dirs, tmp_path_factory):
    """A scratch workflow whose lens outputs exist; tests copy it and run the evaluations."""
    config = tiny_config(tiny_dirs)
    workdir = finished_run(tmp_path_factory.mktemp("llm-pipeline"), config, "results/001/output-tiny-llama.json", "results/001/output-tiny-gemma3.json", cores=1)
    return workdir, config


def workflow_with(lens_done, tmp_path, evaluation):
    base, config = lens_done
    workdir = tmp_path / "wd"
    shutil.copytree(base, workdir, symlinks=True)
    write_config(workdir, {**config, "evaluation": evaluation})
    return workdir


def evaluations(workdir):
    return {name: (workdir / "results" / "001" / name).read_bytes() for name in EVALUATIONS}


def no_file_holds_the_key(workdir):
    for path in workdir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("provider", PROVIDERS)
def test_evaluation_rules_against_the_server(llm, lens_done, tmp_path, provider):
    evaluation = {"provider": provider, "model": "test-model", "base_url": settings(llm, provider, tmp_path)["base_url"], "max_retries": 1}
    workdir = workflow_with(lens_done, tmp_path, evaluation)
    result = snakemake(workdir, "results/001/evaluation-meta.md")
    assert result.returncode == 0, said(result)[-3000:]
    assert len(llm.requests) == 4 and {r["kind"] for r in llm.requests} == {provider}
    first = evaluations(workdir)
    for name, data in first.items():
        text = data.decode()
        assert MARKER in text
        stage = "single-model" if name.startswith("evaluation-tiny") else name[len("evaluation-") : -len(".md")]
        template = load_template(workdir / "prompts" / "001" / f"{stage}-evaluation.md")
        assert heading_problems(text, template.headings) == [], name
        assert f"provider {provider}" in text
    cache = files_under(workdir / "results" / "cache")
    assert len(cache) == 4
    # A forced re-run with unchanged inputs: no request, byte-identical files.
    result = snakemake(workdir, "--forcerun", "evaluate_model", "evaluate_cross", "evaluate_meta", "--", "results/001/evaluation-meta.md")
    assert result.returncode == 0, said(result)[-3000:]
    assert len(llm.requests) == 4
    assert evaluations(workdir) == first
    assert "cache hit" in (workdir / "logs" / "001" / "evaluate_meta.log").read_text()
    no_file_holds_the_key(workdir)


def test_server_failure_keeps_other_evaluations_going(llm, lens_done, tmp_path):
    llm.fail_when_prompt_contains = "for the model `tiny-gemma3`"
    evaluation = {"provider": "openai", "model": "test-model", "base_url": llm.openai_url, "max_retries": 1}
    workdir = workflow_with(lens_done, tmp_path, evaluation)
    result = snakemake(workdir, "--keep-going", "results/001/evaluation-tiny-llama.md", "results/001/evaluation-tiny-gemma3.md")
    assert result.returncode != 0
    out = workdir / "results" / "001"
    assert (out / "evaluation-tiny-llama.md").is_file()
    assert not (out / "evaluation-tiny-gemma3.md").exists()
    assert "HTTP 500" in (workdir / "logs" / "001" / "evaluate_model-tiny-gemma3.log").read_text()
    assert [p for p in out.iterdir() if p.name.startswith(".")] == []
    no_file_holds_the_key(workdir)


def test_missing_key_fails_when_planning_before_any_job(llm, lens_done, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    evaluation = {"provider": "openai", "model": "test-model", "base_url": llm.openai_url}
    workdir = workflow_with(lens_done, tmp_path, evaluation)
    for args in (["-n"], []):  # a dry run already says so, and a real run starts no job
        result = snakemake(workdir, *args, "results/001/evaluation-tiny-llama.md")
        assert result.returncode != 0
        assert "OPENAI_API_KEY is not set" in said(result) and "(the single-model evaluation)" in said(result)
    assert llm.requests == []
    assert not (workdir / "logs/001/evaluate_model-tiny-llama.log").exists()  # no job ran
    assert not (workdir / "results/001/evaluation-tiny-llama.md").exists()


PASSWORD = "pw-5e0b7c21-never-write-me"


def no_file_holds(workdir, *secrets, but=()):
    """Not one file of the workflow (results, logs, Snakemake's metadata) holds a secret."""
    for path in workdir.rglob("*"):
        if path.is_file() and path.relative_to(workdir).as_posix() not in but:
            data = path.read_bytes()
            assert not any(secret.encode() in data for secret in secrets), path


def test_credentials_in_base_url_are_refused_when_planning(llm, lens_done, tmp_path):
    """The configuration is recorded (rule params in provenance records and Snakemake's
    metadata, the footer, the cache's request): credentials there were written into all."""
    url = llm.openai_url.replace("http://", f"http://user:{PASSWORD}@") + "?api_key=tok-never-write-me"
    workdir = workflow_with(lens_done, tmp_path, {"provider": "openai", "model": "test-model", "base_url": url})
    for args in (["-n"], []):
        result = snakemake(workdir, *args, "results/001/evaluation-tiny-llama.md")
        line = planning_error(result, "evaluation.base_url", "holds credentials", f"'{llm.openai_url}'", "OPENAI_BASE_URL")
        assert PASSWORD not in said(result) and "tok-never" not in said(result), line
    assert llm.requests == []
    assert not (workdir / "results/001/evaluation-tiny-llama.md").exists()
    no_file_holds(workdir, PASSWORD, "tok-never-write-me", but=["config/config.yaml"])  # where the test wrote it


def test_endpoint_credentials_from_the_environment_reach_no_file(llm, lens_done, tmp_path, monkeypatch):
    import base64
    import json

    monkeypatch.setenv("OPENAI_BASE_URL", llm.openai_url.replace("http://", f"http://user:{PASSWORD}@"))
    workdir = workflow_with(lens_done, tmp_path, {"provider": "openai", "model": "test-model", "base_url": llm.openai_url,
                                                  "max_retries": 1})
    result = snakemake(workdir, "results/001/evaluation-tiny-llama.md")
    assert result.returncode == 0, said(result)[-3000:]
    basic = base64.b64encode(f"user:{PASSWORD}".encode()).decode()
    (request,) = llm.requests
    assert request["headers"]["authorization"] == f"Basic {basic}"  # the credentials were sent
    text = (workdir / "results/001/evaluation-tiny-llama.md").read_text()
    assert f"base_url {llm.openai_url}," in text  # the footer names the endpoint without them
    record = json.loads((workdir / "results/001/provenance/evaluation-tiny-llama.prov.json").read_text())
    assert record["evaluator"]["base_url"] == record["params"]["evaluation"]["base_url"] == llm.openai_url
    assert (workdir / ".snakemake" / "metadata").is_dir() and (workdir / "logs/001/evaluate_model-tiny-llama.log").is_file()
    assert PASSWORD not in said(result)
    no_file_holds(workdir, PASSWORD, basic, KEY)


# ------------------------------------------------------------ only complete answers are taken


def _cache_is_empty(tmp_path):
    return files_under(tmp_path / "cache") == []


@pytest.mark.parametrize("cut_at", [0.97, 0.6])
def test_a_stream_cut_off_is_an_error_and_not_cached(llm, tmp_path, cut_at):
    llm.cut_at = cut_at
    with pytest.raises(ProviderError, match="ended before the answer was complete") as info:
        make_provider(settings(llm, "openai", tmp_path, max_retries=0)).complete(REQUEST)
    assert "openai" in str(info.value)
    assert _cache_is_empty(tmp_path)
    llm.cut_at = None  # the next run asks again and gets the whole answer
    assert MARKER in make_provider(settings(llm, "openai", tmp_path)).complete(REQUEST)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_answer_stopped_by_the_token_limit_names_max_tokens(llm, provider, tmp_path):
    llm.token_limit = True
    with pytest.raises(ProviderError, match="evaluation.max_tokens") as info:
        make_provider(settings(llm, provider, tmp_path, max_tokens=64)).complete(REQUEST)
    assert provider in str(info.value) and "64" in str(info.value)
    assert _cache_is_empty(tmp_path)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_body_that_is_not_json_is_an_error_and_not_cached(llm, provider, tmp_path):
    llm.raw_body = "<html>gateway says hello</html>"
    with pytest.raises(ProviderError) as info:
        make_provider(settings(llm, provider, tmp_path, max_retries=0)).complete(REQUEST)
    assert llm.openai_url.split("/v1")[0] in str(info.value)
    assert _cache_is_empty(tmp_path)


def test_a_stream_event_that_is_not_json_names_the_server(llm, tmp_path):
    llm.bad_event = True
    with pytest.raises(ProviderError) as info:
        make_provider(settings(llm, "openai", tmp_path, max_retries=0)).complete(REQUEST)
    assert llm.openai_url in str(info.value)
    assert _cache_is_empty(tmp_path)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_key_the_server_echoes_is_redacted(llm, provider, tmp_path, caplog):
    llm.echo_key = True
    with pytest.raises(ProviderError) as info:
        make_provider(settings(llm, provider, tmp_path, max_retries=0)).complete(REQUEST)
    assert KEY not in str(info.value) and "[redacted]" in str(info.value)
    assert KEY not in caplog.text


def test_the_key_never_reaches_a_log_file(tmp_path, monkeypatch):
    import logging

    from workflow.provenance.logs import setup_logging

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value-123456")
    log_file = tmp_path / "job.log"
    setup_logging(str(log_file))
    logging.getLogger("workflow.test").error("the server said: bad key sk-secret-value-123456 (%s)", "sk-secret-value-123456")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert "sk-secret-value-123456" not in log_file.read_text()
    assert "[redacted]" in log_file.read_text()


def test_a_damaged_cache_entry_is_a_miss_named_in_the_log(llm, tmp_path, caplog):
    import logging

    provider = make_provider(settings(llm, "openai", tmp_path))
    provider.complete(REQUEST)
    (entry,) = (tmp_path / "cache").rglob("*.json")
    entry.write_text('{"key": "broken', encoding="utf-8")
    caplog.set_level(logging.WARNING)
    text = make_provider(settings(llm, "openai", tmp_path)).complete(REQUEST)
    assert MARKER in text
    assert str(entry.name) in caplog.text and "damaged" in caplog.text
    assert len(llm.requests) == 2  # asked again, and the entry healed
    import json

    assert json.loads(entry.read_text())["response"] == text
