"""A real Slurm controller + daemon on localhost: plain jobs, Dask workers as Slurm jobs, a map.

The ``slurm`` fixture (conftest.py) installs slurm-wlm + munge if needed and starts a private
single-node cluster; these tests submit real jobs to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .slurm import SlurmInfo

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUN_COMMAND = REPO / "pipeline" / "commands" / "run.py"


def _squeue_ids() -> set[str]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=15
    ).stdout
    return set(out.split())


@pytest.mark.timeout(300)
def test_sbatch_and_srun_run_real_jobs(slurm: SlurmInfo, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    out = tmp_path / "job-%j.out"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/bash
            #SBATCH --job-name=s2lc-smoke
            #SBATCH --partition={slurm.partition}
            #SBATCH --ntasks=1
            #SBATCH --cpus-per-task=1
            #SBATCH --time=00:02:00
            #SBATCH --output={out}
            echo "job=$SLURM_JOB_ID node=$SLURMD_NODENAME partition=$SLURM_JOB_PARTITION"
            srun --ntasks=1 echo "step on $SLURMD_NODENAME"
            """
        )
    )
    proc = subprocess.run(
        ["sbatch", "--parsable", "--wait", str(script)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    text = (tmp_path / f"job-{job_id}.out").read_text()
    assert f"job={job_id} node={slurm.node} partition={slurm.partition}" in text
    assert f"step on {slurm.node}" in text

    direct = subprocess.run(
        [
            "srun",
            f"--partition={slurm.partition}",
            "--ntasks=1",
            "--time=1",
            "printenv",
            "SLURM_JOB_ID",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout.strip().isdigit()


@pytest.mark.timeout(600)
def test_dask_jobqueue_workers_are_slurm_jobs(slurm: SlurmInfo, tmp_path: Path) -> None:
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    def identity() -> dict:
        # Defined here so that cloudpickle ships it by value (workers cannot import this module).
        import os
        import socket

        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job": os.environ.get("SLURM_JOB_ID"),
            "node": os.environ.get("SLURMD_NODENAME"),
        }

    def square(i: int) -> tuple[int, str | None]:
        import os

        return i * i, os.environ.get("SLURM_JOB_ID")

    logs = tmp_path / "logs"
    with SLURMCluster(
        queue=slurm.partition,
        cores=1,
        memory="2GB",
        processes=1,
        walltime="00:10:00",
        python=sys.executable,
        interface="lo",
        local_directory=str(tmp_path / "dask"),
        log_directory=str(logs),
        job_extra_directives=[f"--chdir={tmp_path}"],
        job_script_prologue=[f"export SLURM_CONF={slurm.conf}"],
        worker_extra_args=["--nthreads", "1"],
    ) as cluster:
        assert f"#SBATCH -p {slurm.partition}" in cluster.job_script()
        cluster.scale(2)
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=240)
            identities = client.run(identity)
            # Real distributed work: each task reports which worker (Slurm job) ran it.
            futures = client.map(square, range(20))
            results = client.gather(futures)
            running = _squeue_ids()

    assert len(identities) == 2
    jobs = {ident["job"] for ident in identities.values()}
    assert None not in jobs and len(jobs) == 2, identities
    assert jobs <= running, (jobs, running)
    assert {ident["node"] for ident in identities.values()} == {slurm.node}
    assert len({ident["pid"] for ident in identities.values()}) == 2
    assert all(ident["pid"] != os.getpid() for ident in identities.values())
    assert [r[0] for r in results] == [i * i for i in range(20)]
    assert {r[1] for r in results} <= jobs
    # dask-jobqueue's log_directory: Slurm wrote each job's stderr (the worker's log) there.
    for job in jobs:
        err = logs / f"dask-worker-{job}.err"
        assert err.exists(), sorted(p.name for p in logs.iterdir())
        assert "Start worker" in err.read_text() or "Starting Worker" in err.read_text()


@pytest.mark.timeout(1200)
@pytest.mark.skipif(
    not RUN_COMMAND.exists(),
    reason="pipeline/commands/run.py ('python -m pipeline run') not present yet",
)
def test_map_on_slurm(
    slurm: SlurmInfo, demo_catalog: Path, demo_bbox: tuple[float, ...], tmp_path: Path
) -> None:
    """`python -m pipeline run --cluster slurm`: Dask workers as Slurm jobs make a small map."""
    job_logs = tmp_path / "job-logs"
    job_logs.mkdir()
    profile = tmp_path / "slurm.yaml"
    profile.write_text(
        textwrap.dedent(
            f"""\
            queue: {slurm.partition}
            cores: 1
            processes: 1
            memory: 6GB
            walltime: "00:20:00"
            interface: lo
            local_directory: {tmp_path / "dask-scratch"}
            job_extra_directives:
              - "--output={job_logs}/job-%j.out"
            """
        )
    )
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        "--region",
        "demo",
        "--untrained",
        "--model",
        "timesenclip",
        "--bbox",
        *map(str, demo_bbox),
        "--cluster",
        "slurm",
        "--cluster-config",
        str(profile),
        "--workers",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SLURM_CONF": str(slurm.conf)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1100, cwd=REPO, env=env)
    job_tails = "\n".join(
        f"--- {p.name} ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
        for p in sorted(job_logs.glob("job-*.out"))
    )
    assert proc.returncode == 0, (
        f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}\n"
        f"Slurm job logs:\n{job_tails[-6000:]}"
    )

    classes = list(out.rglob("classes.tif"))
    assert classes, sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    import rasterio

    with rasterio.open(classes[0]) as ds:
        data = ds.read(1)
        assert data.size > 0
        assert ds.crs is not None
    run_json = next(out.rglob("run.json"))
    assert "slurm" in run_json.read_text().lower()
    json.loads(run_json.read_text())
    # Proof that Slurm ran the workers: each job wrote its log through the profile's directive.
    outs = list(job_logs.glob("job-*.out"))
    assert outs, "no Slurm job output: the workers did not run as Slurm jobs"
    assert any("distributed" in p.read_text() or "worker" in p.read_text().lower() for p in outs)
    # The run closed its cluster: its Slurm jobs are gone (cancelled, not left to walltime).
    deadline = time.monotonic() + 60
    while _squeue_ids() and time.monotonic() < deadline:
        time.sleep(1)
    assert not _squeue_ids(), "the map run left Slurm jobs behind"


def _one_small_job(queue: str, tmp_path: Path, **extra):
    """A Slurm profile of one 1-core worker job on ``queue`` (the cluster tests' job)."""
    from pipeline.run.cluster import SlurmProfile

    return SlurmProfile(
        queue=queue,
        cores=1,
        processes=1,
        memory="1GB",
        walltime="00:05:00",
        jobs=1,
        interface="lo",
        local_directory=str(tmp_path / "dask"),
        **extra,
    )


@pytest.mark.timeout(300)
def test_cluster_that_never_gives_a_worker_fails_after_its_timeout(
    slurm: SlurmInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue that never starts the jobs: one UserError after ``worker_timeout_s``, no hang.

    The jobs are held pending by Slurm itself (``--begin=now+1hour``), as a busy queue would
    hold them. The run must give up after the profile's timeout, say so in one line, and
    cancel the jobs it submitted.
    """
    from pipeline.base.errors import UserError
    from pipeline.run.cluster import ClusterConfig, open_client

    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))  # sbatch/scancel of this test's cluster
    profile = _one_small_job(
        slurm.partition,
        tmp_path,
        job_extra_directives=("--begin=now+1hour",),
        worker_timeout_s=8.0,
    )
    before = _squeue_ids()
    t = time.monotonic()
    with pytest.raises(UserError) as err:
        with open_client(ClusterConfig(kind="slurm", slurm=profile)):
            pytest.fail("a client was handed out although no worker ever started")
    waited = time.monotonic() - t
    message = str(err.value)
    assert "\n" not in message
    assert "no Slurm worker started within 8 s" in message, message
    assert 8.0 <= waited < 90.0, waited
    deadline = time.monotonic() + 60
    while _squeue_ids() - before and time.monotonic() < deadline:
        time.sleep(1)
    assert not _squeue_ids() - before, "the held job was left in the queue"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("fault", ["unknown-partition", "broken-config"])
def test_a_slurm_that_cannot_take_the_job_fails_in_one_line_at_once(
    slurm: SlurmInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """sbatch refusing the worker job is one UserError within seconds: no background tracebacks
    from dask-jobqueue and no wait for workers that cannot start (a new user saw both, then a
    900 s wait, with an ``sbatch`` that had no controller to talk to)."""
    from pipeline.base.errors import UserError
    from pipeline.run.cluster import ClusterConfig, open_client

    before = _squeue_ids()
    conf = slurm.conf
    if fault == "broken-config":  # sbatch cannot find its controller: "Unable to process ..."
        conf = tmp_path / "slurm.conf"
        conf.write_text("")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    queue = "no-such-partition" if fault == "unknown-partition" else slurm.partition
    profile = _one_small_job(queue, tmp_path, worker_timeout_s=600.0)
    t = time.monotonic()
    with pytest.raises(UserError) as err:
        with open_client(ClusterConfig(kind="slurm", slurm=profile)):
            pytest.fail("a client was handed out although sbatch refuses the job")
    message = str(err.value)
    assert time.monotonic() - t < 60.0
    assert "\n" not in message and "sbatch cannot submit the worker job" in message, message
    if fault == "unknown-partition":
        assert "partition" in message.lower(), message
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    assert _squeue_ids() == before  # nothing was submitted
