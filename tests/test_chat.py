"""``lens-chat`` (workflow/chat.py), driven in a terminal (a pty) as a user would, and with
--once and --trace."""

import ast
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO
from tiny import make_model_dir, make_tokenizer
from workflow.lens.records import read_records

TEMPLATE = (
    "{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<bos>assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def chat_config(tmp_path_factory):
    """A tiny model with a chat template, and one without, in a config of their own."""
    root = tmp_path_factory.mktemp("chat")
    with_template = make_model_dir(root / "tiny-chat", "llama", seed=3)
    tokenizer = make_tokenizer()
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(with_template)
    without = make_model_dir(root / "tiny-base", "gemma3", seed=4)
    config = {
        "device": "cpu", "dtype": "float32", "lenses": ["logit"], "lens": {"top_k": 3},
        "models": {"tiny-chat": {"source": "local", "path": str(with_template)},
                   "tiny-base": {"source": "local", "path": str(without)}},
        "probes": [{"id": "p", "prompt": "The capital of Germany is", "answer": " Berlin"}],
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def chat(config, *args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "workflow.chat", "--config", str(config), *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )


class Terminal:
    """A process on a pseudo-terminal: what is typed, and what it has printed so far."""

    def __init__(self, argv, cwd):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the chat, with the pty as its terminal
            os.chdir(cwd)
            os.execv(argv[0], argv)
        self.output = ""

    def type(self, text):
        os.write(self.fd, text.encode())

    def read_until(self, pattern, timeout=120):
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.output):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout} s; the terminal shows:\n{self.output}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the chat ended before {pattern!r}; it showed:\n{self.output}")
                self.output += chunk.decode(errors="replace")
        return self.output

    def wait(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:  # keep draining what it prints
                if select.select([self.fd], [], [], 0.1)[0]:
                    self.output += os.read(self.fd, 4096).decode(errors="replace")
            except OSError:
                pass
        os.kill(self.pid, 9)
        raise AssertionError(f"the chat did not exit; it showed:\n{self.output}")


def test_chat_in_a_terminal_answers_a_typed_question(chat_config):
    term = Terminal([sys.executable, "-m", "workflow.chat", "--config", str(chat_config), "--model", "tiny-chat",
                     "--max-new-tokens", "5"], REPO)
    term.read_until(r"you> ")
    term.type("What is the capital of France?\n")
    shown = term.read_until(r"tokens/s with the lens.*\n[\s\S]*you> ")
    table = shown.split("What is the capital of France?", 1)[1]
    assert "logit lens: top-1 from" in table
    rows = re.findall(r"^\s+(\d+)\s+('.*?'|\".*?\")\s+(\d\.\d{3})\s+(layer \d+ \(\d+\) of 3|never top-1)", table, re.M)
    assert [int(r[0]) for r in rows] == list(range(len(rows))) and 1 <= len(rows) <= 5
    assert "tiny-chat: " in table
    # /layers N: every layer's top-1 where reply token N was chosen; a bad N is said, not fatal.
    term.type("/layers 0\n")
    layers = term.read_until(r"/layers 0[\s\S]*you> ")
    assert re.search(r"token 0 .*: the top-1 of every layer", layers)
    assert len(re.findall(r"^\s+[0-3]  [* ]('.*'|\".*\") +\d\.\d{3}\s*$", layers, re.M)) == 4
    term.type("/layers 99\n")
    assert "99 is not one of them" in term.read_until(r"/layers 99[\s\S]*you> ")
    # A second turn carries the conversation; an empty line ends the chat.
    term.type("And of Germany?\n")
    term.read_until(r"And of Germany\?[\s\S]*tokens/s with the lens[\s\S]*you> ")
    term.type("\n")
    assert term.wait() == 0


def test_once_writes_the_trace_as_records(chat_config, tmp_path):
    trace = tmp_path / "reply.csv"
    result = chat(chat_config, "--model", "tiny-chat", "--once", "Capital of Japan?", "--max-new-tokens", "6",
                  "--trace", str(trace), "--layers", "0")
    assert result.returncode == 0, result.stderr
    reply, _, table = result.stdout.partition("\ntoken 0 ")
    lines = [line for line in reply.splitlines() if re.match(r"^\s+\d+\s+'", line)]
    frame = read_records(trace)
    n = len(lines)
    assert 1 <= n <= 6 and len(frame) == n * 4  # tokens x layers 0..3, logit lens only
    assert sorted(set(frame["position"])) == list(range(n)) and set(frame["probe"]) == {"turn-1"}
    last = frame[frame["layer"] == 3].sort_values("position")
    # Greedy: each generated token is the model's own top-1 (rank 1 at the last layer), and the
    # probability shown beside it is the last layer's.
    assert (last["answer_rank"] == 1).all()
    shown = [float(re.split(r"\s+", line.strip())[2]) for line in lines]
    assert shown == pytest.approx(list(last["answer_prob"]), abs=1e-3)
    # --layers 0: what every layer predicted where the first reply token was chosen, as recorded.
    first = frame[frame["position"] == 0].sort_values("layer")
    rows = [re.match(r"^\s+(\d+)  (\*| )('.*'|\".*\") +([\d.]+)\s*$", line) for line in table.splitlines()[2:]]
    assert all(rows) and [int(r[1]) for r in rows] == list(first["layer"])
    assert [ast.literal_eval(r[3]) for r in rows] == list(first["top1_token"])
    assert [float(r[4]) for r in rows] == pytest.approx(list(first["top1_prob"]), abs=1e-3)
    assert [r[2] == "*" for r in rows] == list(first["top1_token"] == first["answer_token"])


def test_a_model_without_chat_template_is_told_to_use_raw(chat_config):
    result = chat(chat_config, "--model", "tiny-base", "--once", "hello")
    assert result.returncode == 1
    assert "no chat template" in result.stderr and "--raw" in result.stderr and "Traceback" not in result.stderr
    raw = chat(chat_config, "--model", "tiny-base", "--once", "The capital of Germany is", "--raw", "--max-new-tokens", "3")
    assert raw.returncode == 0, raw.stderr
    assert re.search(r"3 tokens in [\d.]+ s", raw.stdout)


def test_bad_model_and_config_are_clear_errors(chat_config, tmp_path):
    result = chat(chat_config, "--model", "nope", "--once", "x")
    assert result.returncode == 1 and "unknown model 'nope'" in result.stderr and "tiny-chat" in result.stderr
    missing = chat(tmp_path / "absent.yaml", "--once", "x")
    assert missing.returncode == 1 and "absent.yaml: no such config file" in missing.stderr
    bad = tmp_path / "bad.yaml"
    config = yaml.safe_load(chat_config.read_text())
    bad.write_text(yaml.safe_dump({**config, "lens": {"top_k": "many"}}))
    invalid = chat(bad, "--once", "x")
    assert invalid.returncode == 1 and "bad.yaml" in invalid.stderr and "top_k" in invalid.stderr


def test_a_gguf_model_is_prepared_apart_from_the_pipelines_directory(tiny_dirs, tmp_path):
    """Preparing into resources/models/ would give the pipeline's input a newer time than its
    results, and Snakemake would re-run every job of the model."""
    from gguf_writer import write_gguf

    gguf = write_gguf(tiny_dirs["llama"], tmp_path / "tiny.gguf", "llama")
    config = {"device": "cpu", "dtype": "float32", "lenses": ["logit"], "models": {"tiny-gguf": {"source": "gguf", "path": str(gguf)}},
              "probes": [{"id": "p", "prompt": "The capital of Germany is", "answer": " Berlin"}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    result = chat(path, "--workdir", str(work), "--once", "The capital of Germany is", "--raw", "--max-new-tokens", "2")
    assert result.returncode == 0, result.stderr
    assert "preparing tiny-gguf once into" in result.stderr
    assert (work / "resources" / "chat-models" / "tiny-gguf" / "manifest.json").is_file()
    assert not (work / "resources" / "models").exists()
    again = chat(path, "--workdir", str(work), "--once", "The capital of Germany is", "--raw", "--max-new-tokens", "2")
    assert again.returncode == 0 and "preparing" not in again.stderr


def test_a_config_that_is_not_a_mapping_is_a_clear_error(chat_config, tmp_path):
    for name, text in (("list.yaml", "- models\n- probes\n"), ("broken.yaml", "models: {tiny: [\n")):
        path = tmp_path / name
        path.write_text(text)
        result = chat(path, "--once", "x")
        assert result.returncode == 1 and name in result.stderr and "Traceback" not in result.stderr


def test_a_message_longer_than_the_context_is_refused_not_run(chat_config):
    """The tiny models take 256 positions: a 20,000-character message is refused with its
    size; in a terminal the chat goes on."""
    result = chat(chat_config, "--model", "tiny-chat", "--once", "Berlin " * 3000)
    assert result.returncode == 1
    assert "256 positions" in result.stderr and "shorten the message" in result.stderr
    term = Terminal([sys.executable, "-m", "workflow.chat", "--config", str(chat_config), "--model", "tiny-chat",
                     "--max-new-tokens", "3"], REPO)
    term.read_until("you> ")
    term.type("Berlin " * 300 + "\n")
    term.read_until("shorten the message")
    term.type("The capital of Germany is\n")
    term.read_until(r"tokens in [\d.]+ s")
    term.type("\n")
    assert term.wait() == 0


def test_a_model_read_from_its_gguf_file_says_its_seconds_per_token_and_is_refused_over_the_limit(tiny_dirs, tmp_path):
    """weights: quantised reads the whole file (but unrouted experts) at every token: the chat
    says what a token costs, and does not start where that is over --max-seconds-per-token."""
    from gguf_writer import write_gguf

    gguf = write_gguf(tiny_dirs["llama"], tmp_path / "tiny.gguf", "llama")
    config = {"device": "cpu", "dtype": "float32", "lenses": ["logit"],
              "models": {"tiny-gguf": {"source": "gguf", "path": str(gguf), "weights": "quantised"}},
              "probes": [{"id": "p", "prompt": "The capital of Germany is", "answer": " Berlin"}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    refused = chat(path, "--workdir", str(work), "--once", "Berlin is", "--raw", "--max-new-tokens", "50",
                   "--max-seconds-per-token", "1e-9")
    assert refused.returncode == 1
    assert re.search(r"reads its weights from its GGUF file at every generated token .* GB of the file per token, "
                     r".* about [0-9.]+ s per token and [0-9.]+ min for 50 tokens: over --max-seconds-per-token 1e-09, "
                     r"so lens-chat does not start", refused.stderr), refused.stderr
    assert not list((work / "resources" / "chat-models" / "tiny-gguf").glob("*.safetensors"))
    ran = chat(path, "--workdir", str(work), "--once", "Berlin is", "--raw", "--max-new-tokens", "2")
    assert ran.returncode == 0, ran.stderr
    assert "s per token" in ran.stderr and "tokens in" in ran.stdout


def test_bad_arguments_are_one_error_line_before_the_model_loads(chat_config, tmp_path):
    """Each is refused before loading (--trace into a directory failed after the reply;
    --temperature nan failed in sampling)."""
    cases = [
        (["--temperature", "nan"], "--temperature must be a number, 0 or more (0: greedy), not nan"),
        (["--temperature", "inf"], "--temperature must be a number, 0 or more (0: greedy), not inf"),
        (["--seed", str(2**70)], f"--seed must be a whole number from 0 to {2**63 - 1}, not {2**70}"),
        (["--seed", "-1"], f"--seed must be a whole number from 0 to {2**63 - 1}, not -1"),
        (["--max-seconds-per-token", "nan"], "--max-seconds-per-token must be a number above 0, not nan"),
        (["--trace", str(tmp_path)], f"--trace {tmp_path}: a directory; give a file to write (CSV, or .parquet)"),
        (["--trace", str(tmp_path / "absent" / "t.csv")],
         f"--trace {tmp_path / 'absent' / 't.csv'}: folder '{tmp_path / 'absent'}' does not exist; make it or give another file"),
    ]
    for args, message in cases:
        result = chat(chat_config, "--model", "tiny-chat", "--once", "hi", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip().splitlines() == [f"lens-chat: error: {message}"], result.stderr
    wrong = chat(chat_config, "--model", "tiny-chat", "--once", "hi", "--dtype", "float8")
    assert wrong.returncode == 2 and "argument --dtype: invalid choice: 'float8'" in wrong.stderr
    assert "Traceback" not in wrong.stderr and "loading" not in wrong.stderr


def test_a_gguf_file_changed_after_preparation_is_prepared_again_and_a_truncated_one_refused(tiny_dirs, tmp_path):
    """The prepared copy is used only while it is the file's as the file is now: another model
    of the same size and time, written over it, is prepared again; a truncated file is refused."""
    from gguf_writer import write_gguf
    from tiny import make_model_dir

    gguf = write_gguf(tiny_dirs["llama"], tmp_path / "tiny.gguf", "llama")
    other = write_gguf(make_model_dir(tmp_path / "other", "llama", seed=9), tmp_path / "other.gguf", "llama")
    config = {"device": "cpu", "dtype": "float32", "lenses": ["logit"], "models": {"tiny-gguf": {"source": "gguf", "path": str(gguf)}},
              "probes": [{"id": "p", "prompt": "The capital of Germany is", "answer": " Berlin"}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    args = ("--workdir", str(work), "--once", "The capital of Germany is", "--raw", "--max-new-tokens", "3")
    first = chat(path, *args)
    assert first.returncode == 0 and "preparing tiny-gguf once into" in first.stderr, first.stderr
    stat = gguf.stat()
    assert other.stat().st_size == stat.st_size
    with open(gguf, "r+b") as fh:
        fh.write(other.read_bytes())
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = chat(path, *args)
    assert again.returncode == 0, again.stderr
    assert re.search(r"chat-models/tiny-gguf was prepared from another version of its source \(the GGUF file's sha256 "
                     r"[0-9a-f]{12}… then, [0-9a-f]{12}… now\); preparing it again", again.stderr), again.stderr
    with open(gguf, "r+b") as fh:
        fh.truncate(stat.st_size - 4096)
    truncated = chat(path, *args)
    assert truncated.returncode == 1
    assert truncated.stderr.strip().splitlines()[-1].startswith("lens-chat: error: model 'tiny-gguf': ")
    assert "truncated" in truncated.stderr and "Traceback" not in truncated.stderr
