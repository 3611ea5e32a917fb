"""A task pinned (loosely) to a worker that dies while no other worker is alive still runs.

distributed leaves such a task unrunnable when a new worker joins (its
``bulk_schedule_unrunnable_after_adding_worker`` ignores loose restrictions); ``run`` pins every
tile so, and the rehearsal's run hung there after two worker kills. Real LocalCluster, one worker
process, SIGKILLed mid-task; the nanny restarts it under a new address.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

pytestmark = pytest.mark.integration


def _slow(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_task_pinned_to_a_dead_worker_runs_on_its_replacement():
    from distributed import Client, LocalCluster

    from pipeline.run.cluster import OrphanedPins

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:  # fmt: skip
        client.register_plugin(OrphanedPins())
        (worker,) = client.scheduler_info()["workers"]
        pid = client.run(os.getpid)[worker]
        fut = client.submit(_slow, 3, workers=[worker], allow_other_workers=True, pure=False)
        time.sleep(1)
        os.kill(pid, signal.SIGKILL)
        assert fut.result(timeout=180) != pid  # without the plugin: unrunnable forever
