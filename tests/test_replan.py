"""An interrupted run re-plans only what its records say, and `make check` reads the dry run's plan.

A job interrupted (Ctrl-C, `timeout -s INT`, `kill -9`) before it wrote anything leaves its
previous outputs and their record in place, with Snakemake's incomplete markers beside
them in .snakemake/incomplete/. The records decide: outputs that match their record are
current, and the next run removes what the interrupted one left (markers, backups,
temporaries) without running the job again; outputs that do not are planned with the
reason. `make check` reports every artefact of the dry run's plan, including those no
record names (an evaluation deleted with its record, a new model's outputs never made).
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from pipeline import SNAKEMAKE, private_copy, said, snakemake

LENS_OUTPUTS = ["results/001/output-tiny-llama.json", "results/001/output-tiny-llama-records.csv",
                "results/001/provenance/output-tiny-llama.prov.json"]
RECORD = "results/001/provenance/output-tiny-llama.prov.json"


@pytest.fixture
def workdir(default_run, tmp_path):
    """A private copy of the session's finished run (conftest's ``default_run``)."""
    return private_copy(default_run, tmp_path / "wd")


def interrupt(workdir, how, *args, target="results/001/output-tiny-llama.json"):
    """Run Snakemake on ``target`` and stop it while tiny-llama's lens job runs: ``"INT"``
    as `timeout -s INT` and Ctrl-C do (SIGINT to Snakemake and its job), ``"KILL"`` as
    `kill -9` of both. The job is stopped before it writes anything."""
    log = workdir / "logs" / "001" / "run_lens-tiny-llama.log"
    log.unlink(missing_ok=True)
    # SIGINT as a terminal delivers it: to a process that has its default handling (a test
    # worker of pytest-xdist ignores SIGINT, and a child would inherit that, so the job would
    # run to its end).
    job = subprocess.Popen([*SNAKEMAKE, "--cores", "1", *args, "--", target], cwd=workdir,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not (log.is_file() and "rule run_lens with" in log.read_text()):
        assert job.poll() is None and time.monotonic() < deadline, "the run_lens job never started"
        time.sleep(0.01)  # the tiny model's job loads it (seconds) after that line, then writes
    os.killpg(job.pid, signal.SIGINT if how == "INT" else signal.SIGKILL)
    job.wait(timeout=120)
    if how == "KILL":
        assert snakemake(workdir, "--unlock").returncode == 0
    assert "wrote" not in log.read_text()  # stopped before it wrote anything
    # What the tests are about: Snakemake left its marker of the job that did not finish.
    assert any(p.is_file() for p in (workdir / ".snakemake" / "incomplete").rglob("*")), "no incomplete marker was left"


def provenance_check(workdir):
    return subprocess.run([sys.executable, "-m", "workflow.provenance.check"], cwd=workdir, capture_output=True, text=True, timeout=300)


def statuses(result):
    return {parts[1]: parts[0] for parts in (line.split() for line in result.stdout.splitlines()[:-1])}


def planned_outputs(dry_run_output):
    """Every output of every job a dry run plans (its `output:` lines, less flags such as `(update)`)."""
    found = set()
    for line in dry_run_output.splitlines():
        match = re.match(r"^\s+output: (.*)$", line)
        if match:
            found.update(re.sub(r" \(\w+\)$", "", name.strip()) for name in match.group(1).split(","))
    return found


def leftovers(workdir):
    """What an interrupted run leaves: Snakemake's markers and backups, the writers' temporaries."""
    snake = workdir / ".snakemake"
    found = [p for d in ("incomplete", "backups") for p in (snake / d).rglob("*") if p.is_file()]
    return found + [p for p in (workdir / "results").rglob(".*.tmp-*")]


@pytest.mark.parametrize("how", ["INT", "KILL"])
def test_an_interrupted_job_with_nothing_changed_is_not_planned_again(workdir, how):
    """Issue 42's case: a lens job with a new setting interrupted, then a dry run with the
    setting as it was. The outputs and their record are the previous ones, consistent with
    each other and with the config: nothing is stale, whatever Snakemake's marker says."""
    before = {name: (workdir / name).read_bytes() for name in LENS_OUTPUTS}
    interrupt(workdir, how, "--config", "lens={top_k: 4}")
    assert {name: (workdir / name).read_bytes() for name in LENS_OUTPUTS} == before

    result = snakemake(workdir, "-n")
    assert result.returncode == 0, said(result)[-3000:]
    assert "Nothing to be done" in said(result), said(result)[-3000:]
    check = provenance_check(workdir)
    assert check.returncode == 0, check.stdout[-3000:]
    assert set(statuses(check).values()) == {"ok"}

    # With the new setting again, the job is stale for that reason, not "Forced execution".
    result = snakemake(workdir, "-n", "--config", "lens={top_k: 4}")
    assert f"run_lens tiny-llama: lens.top_k 3 -> 4 ({RECORD})" in said(result)
    assert "Forced execution" not in said(result)

    # A real run runs nothing and removes what the interrupted run left.
    result = snakemake(workdir)
    assert result.returncode == 0, said(result)[-3000:]
    assert "Nothing to be done" in said(result), said(result)[-3000:]
    assert leftovers(workdir) == []
    assert {name: (workdir / name).read_bytes() for name in LENS_OUTPUTS} == before


def test_an_interrupted_job_whose_outputs_do_not_match_its_record_is_planned_with_the_reason(workdir):
    """Outputs of an interrupted job that differ from its record (a file the job replaced
    before its record): planned, with what differs and the record that says so."""
    interrupt(workdir, "KILL", "--config", "lens={top_k: 4}")
    records = workdir / "results" / "001" / "output-tiny-llama-records.csv"
    records.write_text(records.read_text().replace("0.", "0.9", 3))
    result = snakemake(workdir, "-n")
    assert result.returncode == 0, said(result)[-3000:]
    assert (f"run_lens tiny-llama: results/001/output-tiny-llama-records.csv was changed after run_lens wrote it "
            f"({RECORD})") in said(result)
    assert "Forced execution" not in said(result)


def test_a_job_forced_again_after_an_interrupted_run_still_runs(workdir):
    """--forcerun is the user's word: the job runs whatever its record says, and the
    interrupted run's leftovers are no obstacle."""
    interrupt(workdir, "KILL", "--config", "lens={top_k: 4}")
    result = snakemake(workdir, "-n", "--forcerun", "run_lens", "--", "results/001/output-tiny-llama.json")
    assert result.returncode == 0, said(result)[-3000:]
    assert "run_lens" in said(result) and "Nothing to be done" not in said(result)


def edit_config(workdir, change):
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def deleted_evaluation_and_record(workdir, tiny_dirs):
    for name in ("results/001/evaluation-tiny-llama.md", "results/001/provenance/evaluation-tiny-llama.prov.json"):
        (workdir / name).unlink()
    return ["results/001/evaluation-tiny-llama.md"]


def deleted_page_and_record(workdir, tiny_dirs):
    for name in ("results/003/html/evaluation-cross-model.html", "results/003/provenance/page-cross-model.prov.json"):
        (workdir / name).unlink()
    return ["results/003/html/evaluation-cross-model.html"]


def new_model_never_run(workdir, tiny_dirs):
    edit_config(workdir, lambda c: c["models"].update({"tiny-extra": {"source": "local", "path": str(tiny_dirs["llama"])}}))
    return ["results/001/output-tiny-extra.json", "results/001/evaluation-tiny-extra.md", "results/003/output-tiny-extra.json"]


@pytest.mark.parametrize("damage", [deleted_evaluation_and_record, deleted_page_and_record, new_model_never_run])
def test_check_reports_what_the_dry_run_plans(workdir, tiny_dirs, damage):
    """`make check` and `snakemake -n` read one plan: the artefacts check does not call ok
    are exactly the outputs the dry run plans (a record that is still there aside: check
    reports the artefacts it names), including those no record names."""
    missing = damage(workdir, tiny_dirs)
    check = provenance_check(workdir)
    assert check.returncode != 0, check.stdout[-3000:]
    found = statuses(check)
    for name in missing:
        assert found.get(name) == "missing", (name, check.stdout[-3000:])
    assert check.stdout.splitlines()[-1] != f"{len(found)} ok, 0 not ok"

    result = snakemake(workdir, "-n")
    assert result.returncode == 0, said(result)[-3000:]
    planned = {name for name in planned_outputs(said(result))
               if not (name.endswith(".prov.json") and (workdir / name).exists())}
    not_ok = {name for name, status in found.items() if status != "ok"}
    assert not_ok == planned, (sorted(not_ok ^ planned), check.stdout[-3000:])


def test_check_says_so_when_results_hold_a_file_no_job_of_the_plan_makes(workdir):
    """A model taken out of the config: its old outputs, with their records, are no longer
    what any plan makes or checks."""
    edit_config(workdir, lambda c: c["models"].pop("tiny-gemma3"))
    check = provenance_check(workdir)
    assert check.returncode != 0
    found = statuses(check)
    assert found["results/001/output-tiny-gemma3.json"] == "unplanned", check.stdout[-3000:]
    assert found["results/001/output-tiny-llama.json"] == "ok"

