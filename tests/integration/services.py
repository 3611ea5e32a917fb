"""Shared plumbing for the integration fixtures: Debian packages, ports, daemons, waiting.

The integration tests bootstrap real services (Slurm, PostgreSQL + pgstac) on a fresh machine from
the project's own files. Everything here raises :class:`ServiceError` with the relevant log tail
when something does not come up, and :class:`Unavailable` when the machine cannot provide it at
all (no apt-get, not root, packages not installable); fixtures turn the latter into
``pytest.skip`` with the exact reason.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

APT_TIMEOUT_S = 900


class ServiceError(RuntimeError):
    """A service that should have worked did not (with its log tail in the message)."""


class Unavailable(RuntimeError):
    """The machine cannot provide a service (the reason is meant for ``pytest.skip``)."""


def run(
    cmd: Sequence[str],
    *,
    timeout: float = 120,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    user: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (optionally as ``user`` via runuser), capture output, fail with its tail."""
    full = list(cmd)
    if user is not None and user != _current_user():
        # runuser keeps the environment only with -p; pass what we need explicitly via env(1).
        envargs = [f"{k}={v}" for k, v in (env or {}).items()]
        full = ["runuser", "-u", user, "--", "env", *envargs, *full]
        env = None
    proc = subprocess.run(
        full,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
        cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise ServiceError(
            f"command failed ({proc.returncode}): {' '.join(full)}\n"
            f"--- stdout ---\n{tail_text(proc.stdout)}\n--- stderr ---\n{tail_text(proc.stderr)}"
        )
    return proc


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def tail_text(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def tail_file(path: str | Path, lines: int = 40) -> str:
    p = Path(path)
    if not p.exists():
        return f"({p} does not exist)"
    try:
        return f"--- {p} (last {lines} lines) ---\n" + tail_text(
            p.read_text(errors="replace"), lines
        )
    except OSError as exc:
        return f"({p}: {exc})"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    predicate: Callable[[], object],
    *,
    timeout: float,
    interval: float = 0.25,
    what: str,
    logs: Iterable[str | Path] = (),
) -> object:
    """Poll ``predicate`` until it returns a truthy value; otherwise raise with log tails."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported below if it never succeeds
            last_exc = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            tails = "\n".join(tail_file(p) for p in logs)
            raise ServiceError(
                f"timed out after {timeout:.0f}s waiting for {what}{detail}\n{tails}"
            )
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists"; reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return False


def read_pid(pidfile: str | Path) -> int | None:
    try:
        return int(Path(pidfile).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_pid(pid: int | None, *, name: str, timeout: float = 15) -> None:
    """SIGTERM one process we started, then SIGKILL if it does not exit within ``timeout``."""
    if not pid or not pid_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    log.warning("%s (pid %d) ignored SIGTERM for %.0fs; sending SIGKILL", name, pid, timeout)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def wait_gone(pid: int | None, timeout: float) -> bool:
    if not pid:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid)


# --------------------------------------------------------------------------- Debian packages


def missing_debs(packages: Iterable[str]) -> list[str]:
    """The packages that dpkg does not report as installed."""
    out = []
    for pkg in packages:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True
        )
        if proc.returncode != 0 or "install ok installed" not in proc.stdout:
            out.append(pkg)
    return out


def apt_install(packages: Sequence[str], *, purpose: str) -> float:
    """Install Debian ``packages`` that are missing; return the seconds spent (0 if none).

    Runs ``apt-get update`` only when installing from the current package lists fails (a fresh
    image may have none). Raises :class:`Unavailable` with the exact reason when installation is
    impossible here (no apt-get, not root, packages unknown to the configured archives, no
    network). Package scripts are not allowed to start services (policy-rc.d).
    """
    todo = missing_debs(packages) if shutil.which("dpkg-query") else list(packages)
    if not todo:
        return 0.0
    why = f"{purpose} needs the Debian packages {', '.join(todo)}"
    if not shutil.which("apt-get"):
        raise Unavailable(f"{why}, and this machine has no apt-get")
    if os.geteuid() != 0:
        raise Unavailable(f"{why}; installing them needs root (run as root or pre-install them)")
    t0 = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a"}
    base = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-q", "-y"]
    install = [*base, "install", "--no-install-recommends", *todo]

    def apt(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        log.info("running %s", " ".join(cmd))
        try:
            return subprocess.run(
                cmd, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise Unavailable(
                f"{why}; '{' '.join(cmd)}' did not finish in {APT_TIMEOUT_S}s"
            ) from None

    # Never let a package's maintainer script start a system service (munge, postgresql) that
    # would outlive the tests: Debian's policy-rc.d hook (container images ship one already).
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\n# temporary: tests/integration/services.py\nexit 101\n")
        policy.chmod(0o755)
    try:
        proc = apt(install)
        if proc.returncode != 0:
            # Missing or stale package lists are the usual cause on a fresh image.
            upd = apt([*base, "update"])
            if upd.returncode != 0:
                raise Unavailable(
                    f"{why}; 'apt-get update' failed:\n{tail_text(upd.stdout + upd.stderr, 15)}"
                )
            proc = apt(install)
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise Unavailable(
            f"{why}; 'apt-get install' failed:\n{tail_text(proc.stdout + proc.stderr, 15)}"
        )
    still = missing_debs(todo)
    if still:
        raise Unavailable(f"{why}; after apt-get install, still missing: {', '.join(still)}")
    return time.monotonic() - t0
