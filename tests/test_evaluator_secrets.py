"""Secrets of the LLM evaluators: an endpoint's credentials, stray whitespace around an API
key, and a response cache that cannot store an answer, all found before a paid call.

The configuration is recorded (rule params in provenance records and Snakemake's metadata,
the evaluation's footer, the response cache's request), so an endpoint's credentials come
from OPENAI_BASE_URL / ANTHROPIC_BASE_URL and evaluation.base_url names the endpoint
without them.
"""

import base64
import builtins
import io
import json
import logging
import os
from pathlib import Path

import pytest

from llm_server import KEY, MARKER, LLMServer
from workflow.base.errors import UserError
from workflow.evaluation.providers import EvaluationRequest, check_settings, make_provider
from workflow.base.secrets import public_url, redact

PROVIDERS = ["openai", "anthropic"]
URL_VARIABLES = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}
PASSWORD = "pw-7d1e5b0a-never-write-me"
TOKEN = "tok-93c2f8aa-never-write-me"
SECRETS = (PASSWORD, TOKEN, base64.b64encode(f"user:{PASSWORD}".encode()).decode())

REQUEST = EvaluationRequest(
    stage="single-model",
    title="t",
    system="be precise",
    prompt="Evaluate.\n## Summary\n## Details\n",
    headings=("Summary", "Details"),
    facts=None,
)


class QueryServer(LLMServer):
    """The stand-in server, answering requests whose path carries a query string (it routes
    on the path's end); the queries are kept in ``queries``."""

    def __init__(self):
        self.queries: list[str] = []
        super().__init__()

    def _handler(self):
        base, server = super()._handler(), self

        class Handler(base):
            def do_POST(self):
                self.path, _, query = self.path.partition("?")
                server.queries.append(query)
                super().do_POST()

        return Handler


@pytest.fixture(scope="module")
def query_server():
    srv = QueryServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def llm(query_server, monkeypatch):
    query_server.reset()
    query_server.queries.clear()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for variable in URL_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)
    return query_server


@pytest.fixture
def job_log(tmp_path):
    """The log file a rule's script writes (workflow/provenance/logs.py: every line redacted); the
    root logger's handlers put back afterwards."""
    from workflow.provenance.logs import setup_logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    path = tmp_path / "job.log"
    setup_logging(str(path))

    def read():
        for handler in root.handlers:
            handler.flush()
        return path.read_text()

    yield read
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def url_of(server, provider):
    return server.openai_url if provider == "openai" else server.anthropic_url


def settings(server, provider, tmp_path, **extra):
    return {"provider": provider, "model": "test-model", "base_url": url_of(server, provider), "max_retries": 0,
            "timeout": 20, "cache_dir": str(tmp_path / "cache"), **extra}


def with_credentials(url, kind):
    if kind == "userinfo":
        return url.replace("http://", f"http://user:{PASSWORD}@")
    return url + {"api_key": f"?api_key={TOKEN}", "key": f"?key={TOKEN}", "token": f"?api-version=2&access_token={TOKEN}"}[kind]


def holds_no_secret(text):
    return not any(secret in text for secret in SECRETS)


def files_hold_no_secret(folder: Path):
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret.encode() in data for secret in SECRETS), path


# ------------------------------------------------------ credentials in the configuration


@pytest.mark.parametrize("kind", ["userinfo", "api_key", "key", "token"])
@pytest.mark.parametrize("provider", [*PROVIDERS, "offline"])
def test_credentials_in_base_url_are_refused_with_the_url_they_belong_to(llm, provider, kind, tmp_path):
    plain = url_of(llm, "openai")
    config = {**settings(llm, provider, tmp_path), "base_url": with_credentials(plain, kind)}
    with pytest.raises(UserError) as info:
        check_settings(config, "single-model")
    message = str(info.value)
    assert holds_no_secret(message), message
    assert "evaluation.base_url" in message and "(the single-model evaluation)" in message
    assert f"'{public_url(config['base_url'])}'" in message and plain in message
    assert (URL_VARIABLES[provider] if provider != "offline" else "OPENAI_BASE_URL") in message
    if provider != "offline":
        with pytest.raises(UserError):
            make_provider(config)
    assert llm.requests == []


def test_public_url_keeps_the_endpoint_and_drops_whatever_may_be_a_credential():
    """Scheme, host, port and path name the endpoint; a user:password@ part, a query and a
    fragment may hold a credential whatever they are called (Azure's ?code=, ;token=), so
    none of them is recorded."""
    assert public_url(f"https://user:{PASSWORD}@host:8443/v1?api-version=2&api_key={TOKEN}#x") == "https://host:8443/v1"
    assert public_url(f"http://{TOKEN}@host/v1") == "http://host/v1"
    assert public_url("http://localhost:8080/v1") == "http://localhost:8080/v1"


@pytest.mark.parametrize("url", [f"http://127.0.0.1:9/v1?code={TOKEN}", f"http://127.0.0.1:9/v1?v=1;token={TOKEN}",
                                 f"http://127.0.0.1:9/v1#access_token={TOKEN}", f"user:{PASSWORD}@127.0.0.1:9/v1",
                                 f"HTTP://u%73er:{PASSWORD}@127.0.0.1:9/v1", "ftp://127.0.0.1/v1"])
def test_a_base_url_with_anything_but_scheme_host_and_path_is_refused_without_showing_it(url):
    with pytest.raises(UserError) as info:
        check_settings({"provider": "openai", "model": "m", "base_url": url}, "single-model")
    assert holds_no_secret(str(info.value)) and "evaluation.base_url" in str(info.value)


# ------------------------------------------------------ credentials from the environment


@pytest.mark.parametrize("kind", ["userinfo", "key", "token"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_endpoint_credentials_from_the_environment_are_sent_and_never_written(llm, provider, kind, tmp_path, job_log,
                                                                              monkeypatch):
    url = with_credentials(url_of(llm, provider), kind)
    plain = public_url(url)  # a query stays in the environment's URL, which is sent
    monkeypatch.setenv(URL_VARIABLES[provider], url + "\r\n")
    provider_ = make_provider(settings(llm, provider, tmp_path, base_url=plain))
    assert MARKER in provider_.complete(REQUEST)
    (request,) = llm.requests
    if kind == "userinfo":  # HTTP basic authentication, as the SDKs' HTTP client sends it
        assert request["headers"]["authorization"] == "Basic " + SECRETS[2]
        assert llm.queries == [""]
    else:  # the query reaches the server as a query, not glued into the path
        assert request["path"] in ("/v1/chat/completions", "/v1/messages")
        assert TOKEN in llm.queries[0] and ("api-version=2" in llm.queries[0]) == (kind == "token")
    # What is recorded names the endpoint without its credentials ...
    assert provider_.describe()["base_url"] == plain
    assert "POST http://" not in job_log()  # the HTTP clients' request lines are quieted (workflow.provenance.logs)
    files_hold_no_secret(tmp_path)
    # ... and the cache key does not depend on them: other credentials, the same answer.
    monkeypatch.setenv(URL_VARIABLES[provider], plain.replace("http://", "http://other:credentials@"))
    again = make_provider(settings(llm, provider, tmp_path, base_url=plain))
    assert MARKER in again.complete(REQUEST)
    assert len(llm.requests) == 1 and again.cache_keys == provider_.cache_keys


@pytest.mark.parametrize("provider", PROVIDERS)
def test_credentials_the_server_echoes_are_redacted(llm, provider, tmp_path, monkeypatch, job_log):
    llm.echo_key = True  # the server's 401 carries the request's authorization header
    monkeypatch.setenv(URL_VARIABLES[provider], with_credentials(url_of(llm, provider), "userinfo"))
    with pytest.raises(UserError) as info:
        make_provider(settings(llm, provider, tmp_path)).complete(REQUEST)
    assert "HTTP 401" in str(info.value) and "[redacted]" in str(info.value)
    logging.getLogger("workflow").error("%s", info.value)
    assert holds_no_secret(str(info.value)) and holds_no_secret(job_log())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_endpoint_in_the_environment_that_the_configuration_does_not_name_is_refused(llm, provider, tmp_path,
                                                                                          monkeypatch):
    variable = URL_VARIABLES[provider]
    monkeypatch.setenv(variable, with_credentials(url_of(llm, provider), "userinfo"))
    for config in ({**settings(llm, provider, tmp_path), "base_url": None},
                   {**settings(llm, provider, tmp_path), "base_url": "http://127.0.0.1:9/v1"}):
        with pytest.raises(UserError, match=variable) as info:
            check_settings(config, "meta")
        assert holds_no_secret(str(info.value))
        assert url_of(llm, provider) in str(info.value) and "evaluation.base_url" in str(info.value)
    assert llm.requests == []


def test_redact_removes_credentials_of_any_url_and_of_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://user:{PASSWORD}@host/v1?key={TOKEN}")
    text = redact(f"GET http://someone:else@elsewhere/v1?api-version=2&api_key=abcdef (password {PASSWORD}, "
                  f"token {TOKEN}, header Basic {SECRETS[2]})")
    assert holds_no_secret(text) and "someone" not in text and "abcdef" not in text
    assert "http://[redacted]@elsewhere/v1?api-version=2&api_key=[redacted]" in text


def test_endpoint_credentials_never_reach_a_log_file(monkeypatch, job_log):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://user:{PASSWORD}@host")
    logging.getLogger("workflow.test").error("the server said: %s is wrong (%s)", PASSWORD, SECRETS[2])
    assert holds_no_secret(job_log()) and "[redacted]" in job_log()


# ------------------------------------------------------ the API key as the environment holds it


@pytest.mark.parametrize("provider", PROVIDERS)
def test_whitespace_around_a_key_is_no_part_of_it(llm, provider, tmp_path, monkeypatch):
    """A key pasted from a .env file written on Windows ends in a carriage return: it was
    sent as is and the HTTP client refused it, reported as a connection error."""
    monkeypatch.setenv("OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY", f" {KEY}\r\n")
    assert MARKER in make_provider(settings(llm, provider, tmp_path)).complete(REQUEST)
    headers = llm.requests[0]["headers"]
    assert headers.get("authorization") == f"Bearer {KEY}" or headers.get("x-api-key") == KEY


@pytest.mark.parametrize("value, says", [("sk-abc def-123456", "space, control or non-ASCII character (character 7 of 17)"),
                                         ("“sk-abc-123456”", "space, control or non-ASCII character (character 1 of 15)"),
                                         (" \r\n", "is not set")])
@pytest.mark.parametrize("provider, variable", [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")])
def test_a_key_no_server_could_take_is_one_clear_error(llm, provider, variable, value, says, tmp_path, monkeypatch):
    monkeypatch.setenv(variable, value)
    with pytest.raises(UserError) as info:
        check_settings(settings(llm, provider, tmp_path))
    message = str(info.value)
    assert variable in message and says in message
    assert value.strip() not in message or not value.strip()
    with pytest.raises(UserError):
        make_provider(settings(llm, provider, tmp_path))
    assert llm.requests == []


# ------------------------------------------------------ a cache that cannot store the answer


def entry_path(provider):
    """Where the answer to REQUEST goes (its key, from a provider that asks nothing)."""
    from workflow.evaluation.cache import cache_key

    return provider.cache.path(cache_key({**provider.describe(), "system": REQUEST.system,
                                          "messages": [{"role": "user", "content": REQUEST.prompt}]}))


def test_a_cache_entry_that_is_a_directory_stops_before_the_call(llm, tmp_path):
    provider = make_provider(settings(llm, "openai", tmp_path))
    entry = entry_path(provider)
    entry.mkdir(parents=True)
    with pytest.raises(UserError) as info:
        provider.complete(REQUEST)
    assert str(entry) in str(info.value) and "directory" in str(info.value) and "remove it" in str(info.value)
    assert llm.requests == []  # nothing paid for that could not be kept
    entry.rmdir()
    assert MARKER in make_provider(settings(llm, "openai", tmp_path)).complete(REQUEST)


def test_a_cache_folder_that_is_a_file_stops_before_the_call(llm, tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    with pytest.raises(UserError) as info:
        make_provider(settings(llm, "openai", tmp_path)).complete(REQUEST)
    assert str(tmp_path / "cache") in str(info.value) and "evaluation.cache_dir" in str(info.value)
    assert llm.requests == []


def test_an_unreadable_cache_entry_stops_before_the_call(llm, tmp_path, monkeypatch):
    provider = make_provider(settings(llm, "openai", tmp_path))
    entry = entry_path(provider)
    entry.parent.mkdir(parents=True)
    entry.write_text(json.dumps({"key": "k", "request": {}, "response": "r"}))
    real_open = builtins.open

    def refusing(file, *args, **kwargs):  # the tests run as root, whom permissions do not stop
        if Path(file) == entry:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing)
    monkeypatch.setattr(io, "open", refusing)  # what pathlib reads with
    with pytest.raises(UserError) as info:
        provider.complete(REQUEST)
    assert str(entry) in str(info.value) and "Permission denied" in str(info.value)
    assert llm.requests == []


def test_a_cache_folder_that_cannot_be_written_stops_before_the_call(llm, tmp_path, monkeypatch):
    provider = make_provider(settings(llm, "openai", tmp_path))
    (tmp_path / "cache").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == tmp_path / "cache"
                        else real_access(path, mode, **kw))
    with pytest.raises(UserError) as info:
        provider.complete(REQUEST)
    assert str(tmp_path / "cache") in str(info.value) and "not writable" in str(info.value)
    assert llm.requests == []
