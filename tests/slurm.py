"""A real single-node SLURM cluster for tests (DESIGN.md's recipe): munged, slurmctld and slurmd from Debian's
packages, every file in a temp folder, ports of their own. `cluster()` yields the environment that reaches it
(SLURM_CONF) and stops every daemon and removes the folder at the end; it skips with the reason when a binary is
missing or the tests do not run as root (slurmd runs jobs as their user and must be root here)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sinfo", "sbatch", "scontrol", "squeue")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def missing() -> str | None:
    """Why no cluster can start here, or None."""
    for tool in DAEMONS:
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"SLURM binaries missing: no {tool} (apt-get install slurmctld slurmd slurm-client munge)"
    if os.geteuid() != 0:
        return "a local SLURM needs root (slurmd starts jobs as their user)"
    return None


def _exe(tool: str) -> str:
    return shutil.which(tool) or f"/usr/sbin/{tool}"


CONF = """ClusterName=diffexp
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.sock,cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=bf_interval=1,sched_interval=2
ReturnToService=2
KillWait=2
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop(pid: int | None, timeout: float = 10) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def cluster(cpus: int = 2) -> Iterator[dict[str, str]]:
    """A running one-node cluster; yields os.environ plus SLURM_CONF. The daemons are stopped whatever happens."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="diffexp-slurm-"))
    root.chmod(0o755)  # munged wants its socket folder readable by all
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    ctld_port, d_port = _free_ports(2)
    conf = root / "slurm.conf"
    conf.write_text(CONF.format(host=host, ctld_port=ctld_port, d_port=d_port, root=root, cpus=cpus))
    env = os.environ | {"SLURM_CONF": str(conf)}
    munge_pid = root / "munged.pid"
    try:
        key = root / "munge.key"
        subprocess.run([_exe("mungekey"), "-c", "-k", str(key)], check=True, capture_output=True)
        subprocess.run(
            [_exe("munged"), "--force", f"--key-file={key}", f"--socket={root}/munge.sock",
             f"--pid-file={munge_pid}", f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run([_exe("slurmctld")], env=env, check=True, capture_output=True)
        subprocess.run([_exe("slurmd")], env=env, check=True, capture_output=True)
        deadline = time.time() + 60
        while True:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            if out.stdout.strip() == "idle":
                break
            if time.time() > deadline:
                logs = [(root / f).read_text()[-2000:] for f in ("slurmctld.log", "slurmd.log") if (root / f).exists()]
                raise RuntimeError(f"the SLURM node never became idle: {out.stdout}{out.stderr}\n{''.join(logs)}")
            time.sleep(0.3)
        yield env
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
        deadline = time.time() + 15  # let slurmd end the cancelled jobs' processes before it stops itself
        while time.time() < deadline:
            out = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
            if out.returncode != 0 or not out.stdout.strip():
                break
            time.sleep(0.5)
        _stop(_pid(root / "slurmd.pid"))
        _stop(_pid(root / "slurmctld.pid"))
        _stop(_pid(munge_pid))
        shutil.rmtree(root, ignore_errors=True)


def job_state(env: dict[str, str], job_id: str) -> str:
    """The job's state as slurmctld holds it (no accounting needed), e.g. RUNNING, PENDING, COMPLETED."""
    out = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True)
    for word in out.stdout.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return "UNKNOWN"
