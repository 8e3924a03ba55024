"""Logging for rule scripts: to the rule's log file and, briefly, to the console."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from workflow.base.atomic import temporaries
from workflow.base.errors import UserError
from workflow.base.secrets import redact
from workflow.provenance.record import finish_rule

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Redact(logging.Filter):
    """Removes the value of any provider's API key from a log record (a server may echo it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def setup_logging(log_path: str | None) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.addFilter(Redact())
    root.addHandler(console)
    if log_path:
        file_handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(FORMAT))
        file_handler.addFilter(Redact())
        root.addHandler(file_handler)
    for noisy in ("httpx", "httpx2", "urllib3", "filelock", "transformers", "transformer_lens"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def remove_leftovers(outputs: Any) -> None:
    """Temporaries of this job's outputs left by an earlier run that was killed (the atomic
    writers' hidden siblings, ``.NAME.tmp-*``): no job but this one writes them now."""
    import shutil

    for output in map(str, outputs):
        for left in temporaries(output):
            logging.getLogger("workflow").info("removing %s, left by a run that was killed", left)
            if os.path.isdir(left):
                shutil.rmtree(left, ignore_errors=True)
            else:
                os.remove(left)


def run_script(snakemake: Any, main: Callable[[Any], None]) -> None:
    """Run a rule script's ``main`` with logging; user errors end it with their message only."""
    log_path = snakemake.log[0] if len(snakemake.log) else None
    setup_logging(log_path)
    logging.getLogger("workflow").info("rule %s with %d thread(s)", snakemake.rule, snakemake.threads)
    if "SLURM_JOB_ID" in os.environ:  # where a cluster job really ran, for the record
        logging.getLogger("workflow").info(
            "rule %s running in SLURM job %s on %s", snakemake.rule, os.environ["SLURM_JOB_ID"], socket.gethostname()
        )
    log = logging.getLogger("workflow")
    minutes = getattr(snakemake.resources, "expected_minutes", 0)
    if minutes:  # the plan's estimate (workflow/model/cost.py), at the start of the log
        log.info("rule %s is expected to take about %d min (an estimate; docs/large-models.md, "
                 "\"What a run will cost\")", snakemake.rule, minutes)
    remove_leftovers(snakemake.output)
    try:
        main(snakemake)

        finish_rule(snakemake)
    except UserError as error:
        log.error("error: %s", error)
        sys.exit(1)
    except KeyboardInterrupt:
        log.error("interrupted; nothing was written")
        raise
    except Exception as error:
        # The log file must say why the job failed, not only Snakemake's console.
        log.exception("rule %s failed: %s: %s", snakemake.rule, type(error).__name__, error)
        sys.exit(1)
