"""The local cluster the run starts: workers that need time to exit are let go, not killed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipeline.run.cluster import ClusterConfig, local_layout, open_client


def _slow_exit(marker: str, seconds: float) -> int:
    """Make this worker process take ``seconds`` to finish exiting, then leave ``marker``.

    Stands for a worker whose interpreter spends seconds in finalisation after a run (torch,
    GDAL and a model loaded, a busy machine).
    """
    import atexit
    import os
    import time

    def finish() -> None:
        time.sleep(seconds)
        Path(marker).write_text("exited")

    atexit.register(finish)
    return os.getpid()


@pytest.mark.timeout(180)
def test_workers_slow_to_exit_are_not_killed(tmp_path: Path, caplog) -> None:
    marker = tmp_path / "exited"
    caplog.set_level(logging.WARNING, logger="distributed.nanny")
    with open_client(ClusterConfig(kind="local", workers=1)) as client:
        pid = client.submit(_slow_exit, str(marker), 6.0, pure=False).result()
    assert pid > 0
    # distributed's own close would have killed the process after 4 s, before it got here.
    assert marker.read_text() == "exited"
    assert not [r for r in caplog.records if "still alive" in r.getMessage()], caplog.text


def test_local_layout_shares_the_cores() -> None:
    assert local_layout(cores=16, gpus=0, workers=None, threads=None) == (2, 8)
    assert local_layout(cores=1, gpus=0, workers=None, threads=None) == (1, 1)
    assert local_layout(cores=16, gpus=2, workers=None, threads=None) == (8, 2)
    assert local_layout(cores=8, gpus=0, workers=4, threads=None) == (4, 2)


def sigint_as_in_a_terminal() -> None:
    """A child's SIGINT as a terminal starts a command: the default disposition. A suite started
    in the background by a non-interactive shell (``make test &``) runs with SIGINT ignored, and
    its children would inherit that (Python then installs no handler, and Ctrl-C does nothing)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_is_python_s_own_after_importing_the_cluster_code() -> None:
    """dask-jobqueue replaces the SIGINT handler with ``sys.exit()`` when imported; the run's
    code imports it only for Slurm and puts Python's handler back (else Ctrl-C exited 0)."""
    import subprocess
    import sys

    from tests.paths import REPO_ROOT

    probe = (
        "import signal, pipeline.cli, pipeline.run.driver, pipeline.run.cluster as c\n"
        "a = signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
        "c._slurm_cluster_class()\n"
        "print(a, signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        preexec_fn=sigint_as_in_a_terminal,
    )  # fmt: skip
    assert out.stdout.split() == ["True", "True"], out.stderr[-2000:]


@pytest.mark.timeout(400)
def test_ctrl_c_during_a_run_is_one_line_and_exit_130(demo_catalog, tmp_path: Path) -> None:
    """Ctrl-C reaches the run and its worker processes (one process group): the run stops within
    seconds with exit code 130 and one line saying a rerun resumes; no worker prints a
    traceback, and nothing is reported as a finished map."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.paths import REPO_ROOT

    out = tmp_path / "out"
    log = tmp_path / "log.txt"
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", "--region", "demo", "--untrained",
             "--tile-size", "100", "--no-progress", "--out", str(out)],
            cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"}, preexec_fn=sigint_as_in_a_terminal,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while "local cluster:" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
        time.sleep(3)  # the workers are computing tiles
        os.killpg(proc.pid, signal.SIGINT)
        t = time.monotonic()
        rc = proc.wait(timeout=120)
    text = log.read_text()
    assert rc == 130, text[-3000:]
    assert time.monotonic() - t < 30, "the interrupted run took long to stop"
    assert text.strip().splitlines()[-1].startswith("interrupted: run the same command again")
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert "map written" not in text and not (out / "run.json").exists()
