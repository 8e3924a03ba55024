"""What is stale, decided by the committed provenance records, not by file times or
Snakemake's local run history.

Snakemake on its own decides from ``.snakemake/metadata`` (which a clone does not have and
which a failed job can leave recording params it never finished) and from modification
times (which a clone or ``cp -r`` sets anew). Here every job of the plan is compared with
what made its outputs:

- a job under ``results/`` with its record (``results/NNN/provenance/*.prov.json``): the
  params, the code version (the script and the ``workflow/`` modules it imports), the set of
  inputs and each input's sha256, and its artefacts' sha256 (an artefact edited by hand is
  made again). A missing output makes the job stale too.
- a derived directory under ``resources/`` (a prepared model, a trained lens; git-ignored):
  its recipe (``.recipe.json``, the same facts). Its consumers record the recipe's hash,
  not the directory's bytes, so re-creating it the same way on a fresh clone invalidates
  nothing, and a changed source or setting invalidates exactly what was made from it.

A stale job is planned with everything that reads what it makes (but not through a derived
directory: there the consumer's own comparison of recipes decides). Snakemake still plans
what is missing and needed, and what ``--forcerun`` asks for. The dry run prints, for each
job planned from a record, what changed, from what to what, and which record says so.

Snakemake's marks of a job that did not finish (``.snakemake/incomplete/``, left by Ctrl-C
or ``kill -9``) decide nothing either: every job writes its outputs atomically and its
record last, and update() keeps the previous outputs in place, so an interrupted job left
either its previous outputs with their record (current, unless something else changed) or
outputs that do not match their record (stale by it, with the reason). A real run removes
what an interrupted one left of the jobs it does not run (marks, backups, temporaries).

``install(workflow, ...)`` is called once by the Snakefile. It works through Snakemake's
DAG (``update_needrun`` and ``postprocess`` wrapped, ``check_incomplete`` replaced): the
Snakemake version is pinned in workflow/envs/constraints.txt.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from workflow.base.atomic import temporaries, write_json
from workflow.base.errors import UserError
from workflow.provenance.codeversion import code_digests
from workflow.provenance.record import (
    RECIPE_FILE,
    RECORD_SUFFIX,
    input_digest,
    normalised,
    recipe_hash,
    recipe_of,
    sha256_file,
)

DERIVED = "resources"
CODE_PARAMS = ("code", "code_also")
# Where `python -m workflow.provenance.check` asks a dry run to write what it found.
REPORT_ENV = "LENS_PLAN_REPORT"
SHOWN = 60  # characters of a value shown in a reason


def is_derived(path: str) -> bool:
    return Path(path).parts[:1] == (DERIVED,)


def short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def differences(old: Any, new: Any, key: str = "") -> list[str]:
    """What differs between two params trees, as ``key old -> new`` lines (dotted keys);
    lists of items with an ``id`` (probes, pairs) by the ids added, removed and changed."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for name in sorted(set(old) | set(new), key=str):
            sub = f"{key}.{name}" if key else str(name)
            if name not in old:
                found.append(f"{sub} set to {short(new[name])}")
            elif name not in new:
                found.append(f"{sub} removed (was {short(old[name])})")
            else:
                found += differences(old[name], new[name], sub)
        return found
    if _by_id(old) is not None and _by_id(new) is not None:
        before, after = _by_id(old), _by_id(new)
        found = [f"{key}: {item} added" for item in after if item not in before]
        found += [f"{key}: {item} removed" for item in before if item not in after]
        found += [f"{key}: {item} changed" for item in after if item in before and after[item] != before[item]]
        return found or [f"{key}: reordered"]
    return [f"{key} {short(old)} -> {short(new)}"]


def _by_id(items: Any) -> dict[str, Any] | None:
    if not isinstance(items, list) or not all(isinstance(i, dict) and "id" in i for i in items):
        return None
    return {str(i["id"]): i for i in items}


def code_differences(recorded: dict[str, Any], version: str) -> list[str]:
    """Which files of the code changed, from the per-file digests a record keeps."""

    files = recorded.get("files")
    if not isinstance(files, dict):
        return [f"code version {recorded.get('version')} -> {version}"]
    try:
        now = code_digests(recorded["script"], *recorded.get("also", []))
    except (OSError, SyntaxError, KeyError):
        now = {}
    changed = sorted(name for name in set(files) | set(now) if files.get(name) != now.get(name))
    return [f"code changed: {', '.join(changed) if changed else recorded.get('script')}"]


class Planner:
    """The staleness of the jobs of one DAG, each found once."""

    def __init__(self, dag: Any, check_job: Callable[[Any], None] | None = None) -> None:
        self.dag = dag
        self.check_job = check_job
        self.stale: dict[Any, tuple[list[str], str]] = {}  # job -> (reasons, record)
        self.modified: dict[Any, list[str]] = {}  # job -> its artefacts that differ from its record
        self._found: dict[Any, tuple[list[str], str]] = {}
        self._recipes: dict[Any, dict[str, Any]] = {}

    # What the job would be made from now.
    def params(self, job: Any) -> dict[str, Any]:
        return normalised({name: value for name, value in job.params.items()})

    def producer(self, job: Any, path: str) -> Any:
        for candidate, files in self.dag.dependencies[job].items():
            if path in files:
                return candidate
        return None

    def input_now(self, job: Any, path: str) -> str | None:
        """The digest the input would have: a derived directory's by the recipe its
        producer would use now (whether or not it is on disk), anything else by its bytes."""
        producer = self.producer(job, path) if is_derived(path) else None
        if producer is not None and self.derived_output(producer):
            return "recipe:" + recipe_hash(self.recipe(producer))
        return input_digest(path)

    def recipe(self, job: Any) -> dict[str, Any]:
        if job not in self._recipes:
            inputs = {str(f): self.input_now(job, str(f)) for f in sorted(set(map(str, job.input)))}
            self._recipes[job] = {"rule": job.rule.name, "params": self.params(job), "inputs": inputs}
        return self._recipes[job]

    @staticmethod
    def derived_output(job: Any) -> str | None:
        outputs = [str(f) for f in job.output]
        return outputs[0] if len(outputs) == 1 and is_derived(outputs[0]) else None

    @staticmethod
    def record_file(job: Any) -> str | None:
        return next((str(f) for f in job.output if str(f).endswith(RECORD_SUFFIX)), None)

    def find(self, job: Any) -> tuple[list[str], str]:
        """(why the job is stale, the record that says so); no reasons when it is current."""
        if job not in self._found:
            if self.check_job is not None:
                self.check_job(job)
            derived = self.derived_output(job)
            if derived is not None:
                self._found[job] = (self._derived_staleness(job, derived), os.path.join(derived, RECIPE_FILE))
            else:
                record = self.record_file(job)
                self._found[job] = (self._record_staleness(job, record) if record else [], record or "")
        return self._found[job]

    def _derived_staleness(self, job: Any, path: str) -> list[str]:
        if not os.path.exists(path):
            return []  # made when something that runs needs it
        recorded = recipe_of(path)
        if recorded is None:
            return [f"{path} has no recipe ({RECIPE_FILE}): it was made before recipes were kept"]
        now = self.recipe(job)
        if recipe_hash(recorded) == recipe_hash(now):
            return []
        return self._recipe_differences(recorded, now) or ["its recipe changed"]

    def _recipe_differences(self, old: dict[str, Any], new: dict[str, Any], where: str = "") -> list[str]:
        old_params = {k: v for k, v in old.get("params", {}).items() if k not in CODE_PARAMS}
        new_params = {k: v for k, v in new.get("params", {}).items() if k not in CODE_PARAMS}
        found = differences(old_params, new_params)
        if old.get("params", {}).get("code") != new.get("params", {}).get("code"):
            found.append(f"code version {old.get('params', {}).get('code')} -> {new.get('params', {}).get('code')}")
        found += differences(old.get("inputs", {}), new.get("inputs", {}), "inputs")
        return [f"{where}{line}" for line in found]

    def _record_staleness(self, job: Any, record_file: str) -> list[str]:
        missing = [str(f) for f in job.output if not os.path.exists(str(f))]
        if missing:
            return [f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"]
        try:
            record = json.loads(Path(record_file).read_text(encoding="utf-8"))
            recorded_params, code = record["params"], record["code"]
            inputs, artefacts = record["inputs"], record["artefacts"]
        except (OSError, ValueError, KeyError, TypeError):
            return [f"{record_file} cannot be read as a provenance record"]
        modified = [name for name, digest in sorted(artefacts.items()) if os.path.isfile(name) and sha256_file(name) != digest]
        if modified:
            self.modified[job] = modified
        reasons = [f"{name} was changed after {job.rule.name} wrote it" for name in modified]
        params = self.params(job)
        reasons += differences(recorded_params, {k: v for k, v in params.items() if k not in CODE_PARAMS})
        if params.get("code") != code.get("version"):
            reasons += code_differences(code, params.get("code"))
        now = sorted(set(map(str, job.input)))
        reasons += [f"reads {name}, which it did not" for name in now if name not in inputs]
        reasons += [f"no longer reads {name}" for name in sorted(inputs) if name not in now]
        for name in now:
            if name not in inputs:
                continue
            digest = self.input_now(job, name)
            if digest is None or digest == inputs[name]:
                continue  # not there (a fresh clone's resources/): taken as recorded
            if digest.startswith("recipe:") and inputs[name] and inputs[name].startswith("recipe:"):
                producer = self.producer(job, name)
                old = record.get("recipes", {}).get(name)
                detail = self._recipe_differences(old, self.recipe(producer)) if old and producer is not None else []
                reasons.append(f"{name} would be made differently: {'; '.join(detail) or 'its recipe changed'}")
            else:
                reasons.append(f"{name} changed since it was read")
        return reasons

    def plan(self, jobs: list[Any], seeds: set[Any]) -> dict[Any, tuple[Any, set[str]] | None]:
        """Jobs to run because of records: each stale job (value None), and each job that
        reads what one of those makes (value: (that job, the files)), from the stale jobs
        and ``seeds`` (jobs Snakemake runs anyway: forced or incomplete)."""
        planned: dict[Any, tuple[Any, set[str]] | None] = {}
        for job in jobs:
            reasons, record = self.find(job)
            if reasons:
                self.stale[job] = (reasons, record)
                planned[job] = None
        queue = [*planned, *(s for s in seeds if s not in planned)]
        while queue:
            job = queue.pop()
            for dependent, files in self.dag.depending[job].items():
                if dependent in planned or dependent in seeds or self.dag.finished(dependent):
                    continue
                if all(is_derived(str(f)) for f in files) and (self.record_file(dependent) or self.derived_output(dependent)):
                    continue  # its comparison of recipes decided
                planned[dependent] = (job, set(map(str, files)))
                queue.append(dependent)
        return planned


def describe(job: Any) -> str:
    wildcards = ", ".join(f"{v}" for v in job.wildcards_dict.values())
    return f"{job.rule.name} {wildcards}".rstrip()


def install(workflow: Any, check_job: Callable[[Any], None] | None = None,
            long_job: Callable[[Any], str | None] | None = None) -> None:
    """Make this Snakemake process plan from the records (see the module's docstring).
    ``check_job(job)``: raises what is known to be wrong with a job's inputs (a model
    source that cannot be read), for every job of the plan, whether or not it runs.
    ``long_job(job)``: a line for a planned job expected to take long, listed before any
    job starts (None for the others)."""
    # Kept as one function: the patches below are closures over one planner and are
    # installed together, so that Snakemake never plans with some of them in place.
    from snakemake.dag import DAG
    from snakemake.exceptions import WorkflowError
    from snakemake.jobs import Job
    from snakemake.logging import logger

    async def no_mintime(self: Any) -> None:
        return None

    Job.output_mintime = property(no_mintime)
    original = getattr(DAG.update_needrun, "__wrapped__", DAG.update_needrun)

    async def update_needrun(self: Any, create_inventory: bool = False) -> None:
        # Neither Snakemake's run history nor file times decide: the records do.
        self.workflow.dag_settings.rerun_triggers = frozenset()
        planner = getattr(self, "_provenance_planner", None)
        if planner is None:
            planner = self._provenance_planner = Planner(self, check_job)
            self._provenance_forced_by_user = set(self.forcefiles)
        user_forced = self._provenance_forced_by_user
        jobs = [job for job in self.jobs if not self.finished(job) and not job.rule.norun]
        seeds = {
            job for job in jobs
            if job.rule in self.forcerules or not user_forced.isdisjoint(job.output)
        }
        try:
            planned = planner.plan(jobs, seeds)
        except UserError as error:
            raise WorkflowError(str(error)) from None
        for job in planned:
            self.forcefiles.update(job.output)
        depending, self.depending = self.depending, defaultdict(partial(defaultdict, set))
        try:
            await original(self, create_inventory)
        finally:
            self.depending = depending
        shown = []
        for job in self.jobs:
            reason = self.reason(job)
            reason.no_metadata = reason.outdated_metadata = False
            if job not in planned or not self.needrun(job) or job in seeds:
                continue
            reason.forced = False
            if planned[job] is None:
                reasons, record = planner.stale[job]
                reason.__class__ = StaleReason
                STALE_TEXT[id(reason)] = f"stale by {record}: {'; '.join(reasons)}"
                shown.append(f"    {describe(job)}: {'; '.join(reasons)} ({record})")
            else:
                reason.updated_input_run.update(planned[job][1])
        if shown and not getattr(self, "_provenance_shown", False):
            self._provenance_shown = True
            logger.info("Stale according to the provenance records (planned with what reads their outputs):\n" + "\n".join(sorted(shown)))
        long = sorted(filter(None, (long_job(job) for job in self.jobs if self.needrun(job)))) if long_job else []
        if long and not getattr(self, "_long_shown", False):
            self._long_shown = True
            logger.warning("Expected to take long (estimates; docs/large-models.md, \"What a run will cost\"):\n"
                           + "\n".join(f"    {line}" for line in long))
        report = os.environ.get(REPORT_ENV)
        if report:

            write_json(report, [plan_entry(self, planner, planned, job) for job in self.jobs if not job.rule.norun])

    async def check_incomplete(self: Any) -> None:
        """Snakemake plans again (or refuses to plan) a job it marked incomplete, whatever
        its outputs are: here the records decide (the module's docstring)."""

    update_needrun.__wrapped__ = original  # type: ignore[attr-defined]
    DAG.update_needrun = update_needrun
    DAG.check_incomplete = check_incomplete
    _install_leftover_cleanup()
    _install_reason()
    _install_backup_cleanup()
    logger.addFilter(_without_metadata_warnings)


def plan_entry(dag: Any, planner: Planner, planned: dict[Any, Any], job: Any) -> dict[str, Any]:
    """One job of the plan as ``python -m workflow.provenance.check`` reads it: its outputs, whether it
    runs and why (the record's reasons, what it reads that runs again, or Snakemake's own:
    a missing output, --forcerun), and its artefacts that differ from its record."""
    record = planner.record_file(job) or ""
    if not dag.needrun(job):
        reasons = []
    elif job in planner.stale:
        reasons, record = planner.stale[job]
    elif planned.get(job) is not None:
        producer, files = planned[job]
        reasons = [f"reads {', '.join(sorted(files))}, which {describe(producer)} makes again"]
    else:
        reasons = [str(dag.reason(job))]
    return {"rule": job.rule.name, "job": describe(job), "outputs": [str(f) for f in job.output], "planned": dag.needrun(job),
            "reasons": reasons, "record": record, "modified": planner.modified.get(job, [])}


def _install_leftover_cleanup() -> None:
    """A run that executes jobs removes, once it holds Snakemake's lock, what an interrupted
    run left of the jobs it does not run (their outputs are current by their records, or
    not needed): Snakemake's incomplete marks, its copies of update() outputs in
    .snakemake/backups/, the writers' temporaries. A job it runs removes its own. Outputs
    another run holds its output lock on are being made there right now: left alone."""
    from snakemake.dag import DAG
    from snakemake_interface_executor_plugins.settings import ExecMode

    original = getattr(DAG.postprocess, "__wrapped__", DAG.postprocess)

    async def postprocess(self: Any, *args: Any, check_initial: bool = False, **kwargs: Any) -> None:
        await original(self, *args, check_initial=check_initial, **kwargs)
        # check_initial: only Workflow.execute asks for it, inside its lock.
        if check_initial and not self.workflow.dryrun and self.workflow.exec_mode == ExecMode.DEFAULT:
            remove_interrupted_leftovers(self)

    postprocess.__wrapped__ = original  # type: ignore[attr-defined]
    DAG.postprocess = postprocess


def remove_interrupted_leftovers(dag: Any) -> None:
    """What _install_leftover_cleanup says, for the jobs of ``dag`` that do not run."""
    import shutil

    from snakemake.logging import logger

    persistence = dag.workflow.persistence
    elsewhere = {key for kind, key in persistence._read_locks() if kind == "output"}
    for job in list(dag.jobs):
        outputs = [str(f) for f in job.output]
        if job.rule.norun or dag.needrun(job) or not elsewhere.isdisjoint(outputs):
            continue
        marks = persistence._filter_incomplete_keys(persistence._get_key(f) for f in job.output)
        backups = [b for b in (persistence._get_backup_path(Path(f)) for f in outputs) if b.exists() or b.is_symlink()]
        temps = [t for f in outputs for t in temporaries(f)]
        if not (marks or backups or temps):
            continue
        for key in marks:
            persistence._unmark_incomplete(key)
        for f in outputs:
            persistence.cleanup_backup(Path(f))
        for temp in temps:
            if os.path.isdir(temp):
                shutil.rmtree(temp, ignore_errors=True)
            else:
                os.remove(temp)
        left = [f"{len(marks)} incomplete mark(s)" if marks else "", f"{len(backups)} backup(s)" if backups else "",
                f"{len(temps)} temporary file(s)" if temps else ""]
        logger.info(f"{describe(job)}: removed what an interrupted run left ({', '.join(filter(None, left))}); "
                    "its provenance record says it need not run")


def _without_metadata_warnings(record: Any) -> bool:
    """Snakemake's report warns once per file that its run history has no entry for it
    ("Missing metadata for file ..."): on a fresh clone that is every committed result, and
    what is current is the records' business here. The report still shows every result;
    its run-time table covers the jobs run on this checkout."""
    return not str(record.msg).startswith("Missing metadata for file ")


def _install_backup_cleanup() -> None:
    """A run killed while an update() job ran leaves Snakemake's copy of the previous output
    in .snakemake/backups/; the next run's copy would fail on it (FileExistsError). Only one
    job makes a given output at a time (Snakemake's lock), so such a copy is always a leftover:
    it goes, and what is in place stays (written atomically, it is complete, and the plan
    compares it with its record or recipe like anything else)."""
    import shutil

    from snakemake.logging import logger
    from snakemake.persistence import FileBackupMixin

    original = getattr(FileBackupMixin.backup_output, "__wrapped__", FileBackupMixin.backup_output)

    def backup_output(self: Any, path: Path) -> None:
        left = self._get_backup_path(path)
        if left.is_dir() and not left.is_symlink():
            logger.info(f"Removing {left}, left by a run that was killed")
            shutil.rmtree(left)
        elif left.exists() or left.is_symlink():
            left.unlink()
        original(self, path)

    backup_output.__wrapped__ = original  # type: ignore[attr-defined]
    FileBackupMixin.backup_output = backup_output


STALE_TEXT: dict[int, str] = {}
StaleReason: Any = None


def _install_reason() -> None:
    """A Reason that prints what the record says (Snakemake's would say 'Forced execution')."""
    global StaleReason
    if StaleReason is not None:
        return
    from snakemake.jobs import Reason

    class _StaleReason(Reason):
        __slots__ = ()

        def __str__(self) -> str:
            return STALE_TEXT.get(id(self)) or super().__str__()

        def __bool__(self) -> bool:
            return id(self) in STALE_TEXT or super().__bool__()

        def get_names(self):
            if id(self) in STALE_TEXT:
                yield "stale by its provenance record"
            yield from super().get_names()

    StaleReason = _StaleReason
