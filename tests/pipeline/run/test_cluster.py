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
