"""A real single-node SLURM cluster on this machine, for the executor tests.

Debian's ``slurm-wlm`` and ``munge`` packages (`.ci/run` installs them): a private
munged (own key and socket), then slurmctld and slurmd with a generated slurm.conf: one
node (this host), one partition, no accounting database (``accounting_storage/none``),
and ``MinJobAge`` long enough for the executor plugin to follow jobs with ``squeue``.
Everything lives in one temporary directory but slurm.conf, which goes where SLURM's
programs look by default, ``/etc/slurm/slurm.conf``: the executor plugin's job steps
drop every ``SLURM_*`` variable, ``SLURM_CONF`` included, before calling ``srun``. A
machine that already has that file (a real cluster node) is left alone: the test is
skipped. ``stop`` shuts the daemons down and removes the file.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")
SBIN = ("/usr/sbin", "/sbin")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")


MARK = "# Written by tests/slurm_cluster.py for a test cluster; removed when it stops."


class ClusterUnavailable(Exception):
    """The machine cannot run the cluster (missing packages, not root, a daemon failed)."""


def which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    conf: Path
    partition: str = "lens"
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=60, check=check)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        if self.conf.exists():
            self.run(which("scontrol") or "scontrol", "shutdown", check=False)
            time.sleep(1)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            path = self.root / pid_file
            if path.exists():
                try:
                    os.kill(int(path.read_text().split()[0]), 15)
                except (ProcessLookupError, ValueError):
                    pass
        if self.conf == SYSTEM_CONF and SYSTEM_CONF.read_text().startswith(MARK):
            SYSTEM_CONF.unlink()


def start(root: Path, timeout: float = 60) -> Cluster:
    """Start munged, slurmctld and slurmd under ``root``; raise ClusterUnavailable if they cannot run."""
    missing = [name for name in DAEMONS if which(name) is None]
    if missing:
        raise ClusterUnavailable(
            f"SLURM/munge programs not found: {', '.join(missing)} "
            "(Debian: apt-get install slurm-wlm munge; .ci/run does this)"
        )
    if SYSTEM_CONF.exists() and not SYSTEM_CONF.read_text().startswith(MARK):  # ours, if a test run was killed
        raise ClusterUnavailable(f"this machine has its own {SYSTEM_CONF}; a test does not touch a real cluster's configuration")
    if os.geteuid() != 0:
        raise ClusterUnavailable("slurmd must run as root to start jobs; run the tests as root (as CI does)")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    host = socket.gethostname()
    munge_socket = root / "munge.socket"
    key = root / "munge.key"
    subprocess.run([which("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
    os.chmod(key, 0o600)
    munged = subprocess.run(
        [which("munged"), "--force", f"--socket={munge_socket}", f"--key-file={key}", f"--pid-file={root / 'munged.pid'}",
         f"--log-file={root / 'munged.log'}", f"--seed-file={root / 'munged.seed'}"],
        capture_output=True, text=True,
    )
    if munged.returncode != 0:
        raise ClusterUnavailable(f"munged did not start: {munged.stderr.strip()}")
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    cpus = os.cpu_count() or 1
    conf = SYSTEM_CONF
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        "\n".join(
            [
                MARK,
                "ClusterName=lenstest",
                f"SlurmctldHost={host}(127.0.0.1)",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"SlurmctldPort={free_port()}",
                f"SlurmdPort={free_port()}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={munge_socket}",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "JobCompType=jobcomp/none",
                "MpiDefault=none",
                "SchedulerType=sched/backfill",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                # Finished jobs stay visible to squeue this long: the plugin's squeue status
                # command needs at least 120 s.
                "MinJobAge=600",
                "ReturnToService=2",
                f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=16000 State=UNKNOWN",
                f"PartitionName=lens Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    cluster = Cluster(root, conf)
    for daemon in ("slurmctld", "slurmd"):
        args = [which(daemon), "-f", str(conf)] + (["-N", host] if daemon == "slurmd" else [])
        result = subprocess.run(args, env=cluster.env, capture_output=True, text=True)
        if result.returncode != 0:
            cluster.stop()
            raise ClusterUnavailable(f"{daemon} did not start: {result.stderr.strip()}\n{cluster.logs()}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = cluster.run(which("sinfo"), "-h", "-o", "%t", check=False).stdout.strip()
        if state in ("idle", "mix", "alloc"):
            return cluster
        time.sleep(0.5)
    cluster.stop()
    raise ClusterUnavailable(f"the node did not become idle within {timeout:.0f} s (sinfo: {state!r})\n{cluster.logs()}")
