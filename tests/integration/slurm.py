"""A real single-node Slurm (munged + slurmctld + slurmd) on localhost, for integration tests.

:class:`LocalSlurm` installs the Debian packages (``slurm-wlm``, ``munge``) when ``slurmctld`` is
missing, writes a minimal ``slurm.conf`` for one node (this machine's real CPUs and memory, one
partition, ``select/cons_tres``, ``proctrack/linuxproc``, ``task/none``, no accounting), creates
a private munge key and socket, starts the three daemons on free loopback ports with all state
in one directory, and waits until ``sinfo`` shows the node idle. Clients find the cluster through
``SLURM_CONF`` (set in ``os.environ`` while it runs; jobs inherit it). :meth:`LocalSlurm.stop`
cancels all jobs, runs ``scontrol shutdown`` and stops munged; nothing is left running.

Nothing outside the state directory is touched except the package installation, so a system
munged or slurmd (if any) is left alone.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .services import (
    ServiceError,
    Unavailable,
    apt_install,
    free_port,
    pid_alive,
    run,
    stop_pid,
    tail_file,
    tail_text,
    wait_for,
    wait_gone,
)

log = logging.getLogger(__name__)

PACKAGES = ("slurm-wlm", "munge")
PARTITION = "debug"
NODE = "localhost"
START_TIMEOUT_S = 60


@dataclass(frozen=True)
class SlurmInfo:
    """What tests need to use the running cluster."""

    partition: str
    node: str
    conf: Path
    root: Path
    cpus: int
    real_memory_mb: int
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)


def _node_hardware() -> tuple[int, int, str]:
    """(CPUs, RealMemory MB, the full ``slurmd -C`` line) as slurmd itself detects them."""
    out = run(["slurmd", "-C"], timeout=30).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("NodeName=")), "")
    cpus = re.search(r"\bCPUs=(\d+)", line)
    mem = re.search(r"\bRealMemory=(\d+)", line)
    if not (cpus and mem):
        raise ServiceError(f"could not parse 'slurmd -C' output:\n{out}")
    return int(cpus.group(1)), int(mem.group(1)), line


def _hardware_fields(line: str) -> str:
    """The topology fields of ``slurmd -C`` (CPUs, Boards, Sockets..., ThreadsPerCore)."""
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    parts = [p for p in line.split() if p.split("=")[0] in keep]
    return " ".join(parts)


class LocalSlurm:
    """Start/stop a private single-node Slurm cluster rooted at ``root``."""

    def __init__(self, root: Path, partition: str = PARTITION) -> None:
        self.root = Path(root)
        self.partition = partition
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket.2"
        self.log_dir = self.root / "log"
        self.procs: dict[str, subprocess.Popen] = {}
        self._old_env: dict[str, str | None] = {}
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ public
    def start(self) -> SlurmInfo:
        t0 = time.monotonic()
        if os.geteuid() != 0:
            raise Unavailable(
                "the real-Slurm test starts slurmd, which must run as root (CI runs as root)"
            )
        if not shutil.which("slurmctld") or not shutil.which("munged"):
            self.timings["apt_install_s"] = apt_install(PACKAGES, purpose="the real-Slurm test")
        for tool in ("slurmctld", "slurmd", "munged", "sinfo", "sbatch", "scontrol"):
            if not shutil.which(tool):
                raise Unavailable(f"'{tool}' is not on PATH even after installing {PACKAGES}")
        # Safety net: stop the daemons even if the test session dies without teardown.
        atexit.register(self.stop)
        t1 = time.monotonic()
        try:
            self._write_config()
            self._start_munge()
            self._set_env()
            self._start_slurm()
        except BaseException:
            self.stop()
            raise
        self.timings["startup_s"] = time.monotonic() - t1
        self.timings["total_s"] = time.monotonic() - t0
        log.info("slurm up in %.1fs (%s)", self.timings["total_s"], self.timings)
        return SlurmInfo(
            partition=self.partition,
            node=NODE,
            conf=self.conf,
            root=self.root,
            cpus=self.cpus,
            real_memory_mb=self.real_memory_mb,
            env={"SLURM_CONF": str(self.conf)},
            timings=dict(self.timings),
        )

    def stop(self) -> None:
        """Cancel all jobs, shut the daemons down, stop munged, restore the environment."""
        ctld = self.procs.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            try:
                self._cancel_all_jobs()
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                log.warning("cancelling jobs failed: %s", exc)
            try:
                run(["scontrol", "shutdown"], timeout=30, check=False, env=self._env())
            except Exception as exc:  # noqa: BLE001
                log.warning("scontrol shutdown failed: %s", exc)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None:
                continue
            if not wait_gone(proc.pid, 15 if name != "munged" else 0):
                stop_pid(proc.pid, name=name)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not exit", name, proc.pid)
            for fh in (proc.stdout, proc.stderr):
                if fh:
                    fh.close()
        self.procs.clear()
        for key, old in self._old_env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        self._old_env.clear()
        atexit.unregister(self.stop)

    def logs(self) -> list[Path]:
        return [
            self.log_dir / "slurmctld.log",
            self.log_dir / "slurmd.log",
            self.log_dir / "munged.log",
        ]

    def diagnostics(self) -> str:
        return "\n".join(tail_file(p, 30) for p in self.logs())

    # ------------------------------------------------------------------ steps
    def _env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _set_env(self) -> None:
        for key, value in self._env().items():
            self._old_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def _write_config(self) -> None:
        self.cpus, self.real_memory_mb, hw_line = _node_hardware()
        for d in ("etc", "state", "spool", "log", "run", "munge", "jobs"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.munge_dir.chmod(0o700)
        ctld_port, d_port = free_port(), free_port()
        while d_port == ctld_port:
            d_port = free_port()
        host = socket.gethostname().split(".")[0]
        r = self.root
        conf = f"""\
# Written by tests/integration/slurm.py: a private single-node cluster for integration tests.
ClusterName=s2lc-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
SlurmctldTimeout=60
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=60
KillWait=5
Waittime=0
# slurmd -C: {hw_line}
NodeName={NODE} NodeAddr=127.0.0.1 {_hardware_fields(hw_line)} RealMemory={self.real_memory_mb} State=UNKNOWN
PartitionName={self.partition} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""
        self.conf.write_text(conf)
        # Slurm's plugin stack: an empty one of our own, so a system plugstack.conf is ignored.
        (r / "etc" / "plugstack.conf").write_text("")

    def _popen(self, name: str, cmd: list[str]) -> subprocess.Popen:
        out = open(self.log_dir / f"{name}.stdout", "w")  # noqa: SIM115 - closed in stop()
        log.info("starting %s", " ".join(cmd))
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self._env()},
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def _check_running(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise ServiceError(
                f"{name} exited with status {proc.returncode} during startup\n"
                + tail_file(self.log_dir / f"{name}.stdout", 30)
                + "\n"
                + self.diagnostics()
            )

    def _start_munge(self) -> None:
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        t0 = time.monotonic()
        self._popen(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.root / 'run' / 'munged.pid'}",
                f"--log-file={self.log_dir / 'munged.log'}",
                f"--seed-file={self.munge_dir / 'munged.seed'}",
            ],
        )

        def munge_ok() -> bool:
            self._check_running("munged")
            if not self.munge_socket.exists():
                return False
            cred = run(["munge", "-n", "-S", str(self.munge_socket)], timeout=10).stdout
            back = subprocess.run(
                ["unmunge", "-S", str(self.munge_socket)],
                input=cred,
                capture_output=True,
                text=True,
                timeout=10,
            )
            return back.returncode == 0

        wait_for(munge_ok, timeout=START_TIMEOUT_S, what="munged to answer", logs=self.logs())
        self.timings["munged_s"] = time.monotonic() - t0

    def _start_slurm(self) -> None:
        t0 = time.monotonic()
        # -D: stay in the foreground as our child (we hold its pid); -i: ignore stale state.
        self._popen("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])

        def ctld_ok() -> bool:
            self._check_running("slurmctld")
            ping = run(["scontrol", "ping"], timeout=10, check=False)
            return ping.returncode == 0 and "UP" in ping.stdout

        wait_for(ctld_ok, timeout=START_TIMEOUT_S, what="slurmctld to answer", logs=self.logs())
        self.timings["slurmctld_s"] = time.monotonic() - t0
        t1 = time.monotonic()
        self._popen("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(self.conf)])

        def node_idle() -> bool:
            self._check_running("slurmctld")
            self._check_running("slurmd")
            out = run(["sinfo", "-h", "-N", "-o", "%N %t"], timeout=10, check=False).stdout
            states = dict(ln.split()[:2] for ln in out.splitlines() if len(ln.split()) >= 2)
            state = states.get(NODE, "")
            if state.startswith(("drain", "down", "fail")) and "*" not in state:
                detail = run(["scontrol", "show", "node", NODE], timeout=10, check=False)
                raise ServiceError(
                    f"node {NODE} is {state}:\n{tail_text(detail.stdout, 20)}\n"
                    + self.diagnostics()
                )
            return state == "idle"

        wait_for(node_idle, timeout=START_TIMEOUT_S, what=f"node {NODE} idle", logs=self.logs())
        self.timings["slurmd_s"] = time.monotonic() - t1

    def _cancel_all_jobs(self) -> None:
        ids = run(["squeue", "-h", "-o", "%i"], timeout=15, check=False).stdout.split()
        if not ids:
            return
        run(["scancel", *ids], timeout=30, check=False)

        def none_left() -> bool:
            return not run(["squeue", "-h", "-o", "%i"], timeout=15, check=False).stdout.split()

        try:
            wait_for(none_left, timeout=60, what="jobs to end after scancel", logs=self.logs())
        except ServiceError as exc:
            log.warning("%s", exc)


def is_running(slurm: LocalSlurm) -> bool:
    return all(p.poll() is None and pid_alive(p.pid) for p in slurm.procs.values())
