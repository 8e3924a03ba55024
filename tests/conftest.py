import os
import sys
from pathlib import Path

import pytest

# Two test workers (make test) each run torch on both cores: OpenMP threads that spin while
# they wait for a descheduled sibling then burn the other worker's core. Measured here with
# two such processes on two cores: 116 s each spinning, 28 s each with passive waiting (one
# alone: 12 s spinning, 16 s passive), so only the workers wait passively. Read by OpenMP
# when torch first starts it; the pipelines the tests run inherit it. Numbers are unchanged.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).parent))

import workflow  # noqa: E402,F401 (puts MKL in its reproducible mode before torch computes)
from tiny import make_model_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The slowest test files first (measured, docs/performance.md "Performance"): `make test`'s two workers
# take whole files in this order (--no-loadscope-reorder), so a long file starts first
# instead of being left for the end while the other worker idles. The first two build the
# session's two shared runs (default_run and tuned_run), one each, so that neither worker
# starts by waiting for the other's.
SLOWEST_FIRST = ("test_e2e.py", "test_provenance.py", "test_failures.py", "test_replan.py", "test_committed.py", "test_readme_commands.py",
                 "test_batching.py", "test_placement.py", "test_llm_providers.py", "test_reproducible.py",
                 "test_chat.py", "test_gguf_architectures.py", "test_gguf_weights.py", "test_pipeline.py", "test_llamacpp.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order kept


TINY_ARCHS = ["llama", "gemma3"]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Saved tiny random models, one per architecture family, in Hugging Face format; the
    same directories for every test worker, so their pipeline configs (which name them)
    are the same and their runs are shared (``pipeline.shared_run``)."""
    from pipeline import built_once

    def build(root):
        for i, arch in enumerate(TINY_ARCHS):
            make_model_dir(root / arch, arch, seed=i)

    root = built_once(tmp_path_factory, "tiny-models", build)
    return {arch: root / arch for arch in TINY_ARCHS}


@pytest.fixture(scope="session")
def loaded(tiny_dirs):
    """The tiny models loaded through the pipeline's own loader (float32, cpu)."""
    from workflow.model.load import load_model

    return {
        arch: load_model(f"tiny-{arch}", {"source": "local", "path": str(path)}, None, device="cpu", dtype="float32")
        for arch, path in tiny_dirs.items()
    }


PROBES = [
    {"id": "capital", "prompt": "The capital of Germany is", "answer": " Berlin"},
    {"id": "capital-reverse", "prompt": "Berlin is the capital of", "answer": " Germany", "reverse_of": "capital"},
    {"id": "instruction", "prompt": "Give the city name only, plain text. The capital of France is", "answer": " Paris", "style": "instruction"},
]


@pytest.fixture
def probes():
    return [dict(p) for p in PROBES]


def tiny_config(tiny_dirs, **overrides):
    """A pipeline config running the tiny models on PROBES (float32, cpu, top_k 3)."""
    config = {
        "device": "cpu",
        "dtype": "float32",
        "models": {f"tiny-{arch}": {"source": "local", "path": str(path)} for arch, path in tiny_dirs.items()},
        "lens": {"top_k": 3},
        "probes": [dict(p) for p in PROBES],
        "evaluation": {"provider": "offline"},
        # Experiment 005 on two tasks of three concepts: every part of it, at a tiny model's cost.
        "words": {"tasks": [{"kind": "translation", "source": "fr", "target": "de"}, {"kind": "cloze", "target": "de"}],
                  "max_words": 3, "demonstrations": 1},
    }
    config.update(overrides)
    return config


# A tuned lens trained in a few steps: enough for the pipeline's tests of both lenses.
TUNED = {"lenses": ["logit", "tuned"], "tuned_lens": {"steps": 4, "batch_positions": 8, "seq_len": 32, "train_sequences": 8,
                                                       "heldout_positions": 64}}


# The README's commands that build one experiment from nothing, run as written, in turn, to
# make the session's default_run (tests/test_readme_commands.py reads what they printed):
# experiments 001, 003 and 005 share no job, so each starts from nothing.
DEFAULT_RUN_COMMANDS = [f"snakemake --cores 1 results/{e}/evaluation-cross-model.md" for e in ("001", "003", "005")]


@pytest.fixture(scope="session")
def default_run(tiny_dirs, tmp_path_factory):
    """The tiny models run to the default target (every experiment) once per session, by
    DEFAULT_RUN_COMMANDS and then the default target; shared."""
    from pipeline import built_once, commands_run

    return built_once(tmp_path_factory, "default-run", lambda target: commands_run(target, tiny_config(tiny_dirs), DEFAULT_RUN_COMMANDS))


@pytest.fixture(scope="session")
def tuned_run(tiny_dirs, tmp_path_factory):
    """As ``default_run``, with the tuned lens trained and recorded too; shared."""
    from pipeline import shared_run

    return shared_run(tmp_path_factory, tiny_config(tiny_dirs, **TUNED))


# Two pairs of prompts the tiny tokenizer gives the same number of tokens (experiments 002 and 004).
PAIRS = [
    {"id": "germany-france", "clean": "The capital of Germany is", "clean_answer": " Berlin",
     "corrupted": "The capital of France is", "corrupted_answer": " Paris", "probe": "capital"},
    {"id": "berlin-paris", "clean": "Berlin is the capital of", "clean_answer": " Germany",
     "corrupted": "Paris is the capital of", "corrupted_answer": " France", "probe": "capital-reverse"},
]


def readme_run(tmp_path_factory, config: dict, experiment: str):
    """The README's `snakemake --cores 1 results/NNN/evaluation-cross-model.md`, run from
    nothing in a scratch copy with ``config``; once per session, shared by the experiment's
    own tests and the README's (tests/test_readme_commands.py)."""
    from pipeline import shared_run

    return shared_run(tmp_path_factory, config, f"results/{experiment}/evaluation-cross-model.md", cores=1)


def patched_config(tiny_dirs) -> dict:
    return tiny_config(tiny_dirs, lenses=["logit"], patching={"batch_size": 16, "trace": {"samples": 2}, "pairs": PAIRS})


def component_config(tiny_dirs) -> dict:
    return tiny_config(tiny_dirs, lenses=["logit"], patching={"pairs": PAIRS, "trace": {"samples": 0}},
                       components={"batch_size": 8, "top_k": 5})


@pytest.fixture(scope="session")
def patched_run(tiny_dirs, tmp_path_factory):
    """Experiment 002 from nothing on the tiny models, two pairs traced with two noise
    samples (tests/test_patching.py); shared."""
    return readme_run(tmp_path_factory, patched_config(tiny_dirs), "002")


@pytest.fixture(scope="session")
def component_run(tiny_dirs, tmp_path_factory):
    """Experiment 004 from nothing on the tiny models, the same two pairs (tests/test_exp004.py); shared."""
    return readme_run(tmp_path_factory, component_config(tiny_dirs), "004")


@pytest.fixture(params=["native", "torch"])
def kernel(request, monkeypatch):
    """Each streamed-lens test runs twice: with the fused CPU kernel and with the torch path."""
    from workflow.native import lens_block as native

    monkeypatch.setenv(native.ENV, request.param)
    native._library.cache_clear()
    if request.param == "native" and native.build_error() is not None:
        pytest.skip(f"the fused kernel cannot be built here ({native.build_error()}); the torch path is tested")
    yield request.param
    native._library.cache_clear()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium with a fresh profile, its viewport browser.SCREEN (tests/browser.py);
    the test is skipped, saying why, where it is not installed."""
    from browser import start

    driver = start(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server():
    """A stand-in LLM server (tests/llm_server.py), one per test module."""
    from llm_server import LLMServer

    srv = LLMServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def llm(server, monkeypatch):
    """The stand-in server reset, with both providers' keys set to llm_server.KEY."""
    from llm_server import KEY

    server.reset()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    # An endpoint of the developer's own would not be the one a test's config names.
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    return server
