"""Dask clusters for tiled mapping: a local one, Slurm through dask-jobqueue, or any scheduler.

``open_client`` is the single place that decides where tile tasks run:

- ``local``: a :class:`distributed.LocalCluster` of worker *processes* (torch releases the GIL
  only partly, and each worker holds its own model), with torch threads per worker chosen so that
  workers x threads = cores.
- ``slurm``: :class:`dask_jobqueue.SLURMCluster` from a YAML profile (``pipeline/run/profiles/slurm.yaml``
  by default): queue, cores, memory, walltime, GPUs as ``--gres`` job directives, worker lifetime
  staggering so long runs survive walltime.
- ``tcp://host:port`` (or any scheduler address): an existing cluster (Kubernetes, Coiled,
  dask-gateway).

Workers that have a GPU advertise a ``GPU`` resource; tile tasks request one when the run uses GPUs,
so at most one tile per GPU runs at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from pipeline.base.config import from_mapping, load_yaml
from pipeline.base.errors import UserError

if TYPE_CHECKING:
    from pipeline.run.config import ExecutionConfig

_log = logging.getLogger(__name__)

DEFAULT_SLURM_PROFILE = Path(__file__).parent / "profiles" / "slurm.yaml"


@dataclass(frozen=True)
class SlurmProfile:
    """One Slurm job template; see ``pipeline/run/profiles/slurm.yaml`` for the meaning of each key."""

    queue: str | None = None
    account: str | None = None
    cores: int = 8
    processes: int = 1
    memory: str = "32GB"
    walltime: str = "02:00:00"
    gpus: int = 0
    jobs: int = 2
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()
    local_directory: str | None = None
    lifetime: str | None = "110m"
    lifetime_stagger: str | None = "5m"
    interface: str | None = None
    python: str | None = None
    worker_timeout_s: float = 900.0
    """Seconds to wait for the first worker after submitting the jobs; then the run fails with
    one line instead of waiting forever (a queue that never starts the jobs, a job that dies)."""

    def __post_init__(self) -> None:
        if not self.worker_timeout_s > 0:
            raise UserError("slurm profile: worker_timeout_s must be > 0 seconds")
        if self.cores < 1 or self.processes < 1 or self.jobs < 1 or self.gpus < 0:
            raise UserError("slurm profile: cores, processes and jobs must be >= 1, gpus >= 0")
        if self.processes > self.cores:
            raise UserError("slurm profile: processes per job cannot exceed cores per job")


@dataclass(frozen=True)
class ClusterConfig:
    """Where tile tasks run. ``kind`` is ``local``, ``slurm`` or a scheduler address."""

    kind: str = "local"
    workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str = "auto"
    slurm: SlurmProfile = field(default_factory=SlurmProfile)
    torch: bool = True
    """Whether the workers' tasks use torch (its threads are then pinned on each worker). False
    for work that never imports it (``classify``/``query --field``): workers start without it
    and only ``OMP_NUM_THREADS`` is set."""

    def __post_init__(self) -> None:
        from pipeline.run.config import check_cluster  # noqa: PLC0415

        check_cluster(self.kind, self.workers)

    def planned_workers(self) -> int | None:
        """How many worker processes the tiles will be spread over (None: not known before
        connecting, i.e. an existing scheduler's address)."""
        if self.kind == "local":
            return local_layout(os.cpu_count() or 1, _cuda_devices(), self.workers, None)[0]
        if self.kind == "slurm":
            return self.slurm.jobs * self.slurm.processes
        return None


def load_slurm_profile(path: str | Path | None, jobs: int | None = None) -> SlurmProfile:
    """Read a Slurm profile YAML (default: the bundled one), optionally overriding ``jobs``."""
    data = load_yaml(path or DEFAULT_SLURM_PROFILE)
    if jobs is not None:
        data["jobs"] = jobs
    return from_mapping(SlurmProfile, data, where=f"slurm profile {path or 'default'}")


#: Local runs larger than this (km²) need --allow-large: hours of CPU inference.
LOCAL_CPU_LIMIT_KM2 = 100.0
LOCAL_GPU_LIMIT_KM2 = 20_000.0


def check_local_size(execution: ExecutionConfig, area_km2: float) -> None:
    """Refuse a local run far beyond what a laptop does in reasonable time, unless confirmed
    (``--allow-large``): above :data:`LOCAL_CPU_LIMIT_KM2` without a GPU, above
    :data:`LOCAL_GPU_LIMIT_KM2` with one. Other clusters are not limited.

    Raises:
        UserError: the region is larger than the local limit.
    """
    if execution.cluster != "local" or execution.allow_large:
        return
    if area_km2 <= min(LOCAL_CPU_LIMIT_KM2, LOCAL_GPU_LIMIT_KM2):
        return  # small enough either way: no GPU count, so torch is not imported for it
    limit = LOCAL_GPU_LIMIT_KM2 if _cuda_devices() else LOCAL_CPU_LIMIT_KM2
    if area_km2 > limit:
        raise UserError(
            f"the region covers {area_km2:,.0f} km2, more than a local cluster maps in reasonable "
            f"time ({limit:,.0f} km2 here); use --cluster slurm|tcp://..., a smaller --bbox, "
            "or pass --allow-large to run it anyway"
        )


def _cuda_devices() -> int:
    try:
        import torch  # noqa: PLC0415 (optional: torch only to count GPUs)

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # torch missing or broken CUDA: run on CPU
        return 0


def worker_threads(cfg: ClusterConfig) -> int | None:
    """Torch threads each worker of ``cfg`` will get (what ``--backend auto`` times with).

    Local: :func:`local_layout`'s (workers x threads <= cores); Slurm: cores per job //
    processes per job; a remote scheduler: None (not known before it is connected).
    """
    if cfg.kind == "local":
        return local_layout(
            os.cpu_count() or 1, _cuda_devices(), cfg.workers, cfg.threads_per_worker
        )[1]
    if cfg.kind == "slurm":
        return max(1, cfg.slurm.cores // cfg.slurm.processes)
    return None


class OmpThreads(WorkerPlugin):
    """Worker plugin: ``OMP_NUM_THREADS`` only, for tasks that never import torch."""

    name = "s2lc-omp-threads"

    def __init__(self, threads: int) -> None:
        self.threads = max(1, int(threads))

    def setup(self, worker) -> None:  # noqa: ANN001 (distributed's Worker)
        os.environ["OMP_NUM_THREADS"] = str(self.threads)


class TorchThreads(WorkerPlugin):
    """Worker plugin: pin torch's intra-op threads so workers do not oversubscribe the cores."""

    name = "s2lc-torch-threads"

    def __init__(self, threads: int) -> None:
        self.threads = max(1, int(threads))

    def setup(self, worker) -> None:  # noqa: ANN001 (distributed's Worker)
        import torch  # noqa: PLC0415 (lazy: torch only to count GPUs)

        torch.set_num_threads(self.threads)
        os.environ["OMP_NUM_THREADS"] = str(self.threads)


def local_layout(
    cores: int, gpus: int, workers: int | None, threads: int | None
) -> tuple[int, int]:
    """(workers, torch threads per worker) for a local cluster.

    Without GPUs: by default two workers (one loads data while the other infers), never more
    than the cores, the cores shared out among them for torch. With GPUs: one worker per two
    cores (at least one per GPU), all sharing the GPU(s): decoding and compositing are CPU-bound
    and the models are small enough for several processes per device, so one tile's GPU
    inference overlaps other tiles' CPU work.
    """
    if workers is None:
        workers = max(gpus, cores // 2) if gpus else max(1, min(2, cores))
    if threads is None:
        threads = max(1, cores // workers)
    return workers, threads


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Start local worker processes with SIGINT ignored, then put the handler back.

    Ctrl-C in a terminal reaches the whole process group: the run's own process (which says that
    a rerun resumes and closes its cluster) and every worker process, which each printed a
    ``KeyboardInterrupt`` traceback while being closed. Workers inherit an ignored SIGINT across
    their spawn (POSIX keeps ignored dispositions over ``exec``; Python and asyncio then install
    no handler), so only the run's process handles it.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@contextlib.contextmanager
def open_client(cfg: ClusterConfig) -> Iterator[object]:
    """A connected :class:`distributed.Client` for ``cfg``; clusters we start are closed on exit."""

    if cfg.kind == "local":
        gpus = _cuda_devices() if cfg.torch else 0  # torch-free work uses no GPU
        workers, threads = local_layout(
            os.cpu_count() or 1, gpus, cfg.workers, cfg.threads_per_worker
        )
        with _workers_ignore_ctrl_c():
            cluster = LocalCluster(
                n_workers=workers,
                resources={"GPU": 1} if gpus else None,  # tile tasks request it (one at a time)
                threads_per_worker=1,  # one tile at a time per worker; torch gets `threads`
                processes=True,
                memory_limit=cfg.memory_limit,
                dashboard_address=":0",
                silence_logs=logging.WARNING,
            )
        client = Client(cluster)
        with _serving(client, cluster, threads, cfg.torch):
            _log.info(
                "local cluster: %d worker processes x %d torch threads%s; dashboard %s",
                workers,
                threads,
                f", {gpus} GPU(s)" if gpus else "",
                client.dashboard_link,
            )
            yield client
        return
    if cfg.kind == "slurm":
        with _slurm_client(cfg) as client:
            yield client
        return
    try:
        client = Client(cfg.kind, timeout="30s")
    except OSError as exc:
        raise UserError(f"cannot connect to the Dask scheduler at {cfg.kind}: {exc}") from None
    _log.info(
        "connected to %s (%d workers); dashboard %s",
        cfg.kind,
        len(client.scheduler_info().get("workers", {})),
        client.dashboard_link,
    )
    try:
        yield client
    finally:
        client.close()


class OnDemandClient:
    """A stand-in for :func:`open_client`'s client that opens it on first use.

    Any attribute (``submit``, ``scheduler_info``, ...) opens the cluster and is then the real
    :class:`distributed.Client`'s. A run resumed with every tile done and nothing left to fit
    (the calibration in the manifest, the OOD reference on disk) then publishes without
    starting a worker: on Slurm that is no job submitted, on a local machine no seconds of
    worker start-up. Made by :func:`open_client_on_demand`, which closes what was opened.
    """

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._opener, self._client = opener, None

    def __getattr__(self, name: str):  # noqa: ANN204 (the real client's attribute)
        if self._client is None:
            self._client = self._opener()
        return getattr(self._client, name)


@contextlib.contextmanager
def open_client_on_demand(cfg: ClusterConfig) -> Iterator[OnDemandClient]:
    """:func:`open_client`, entered only when the client is first used (:class:`OnDemandClient`);
    an exception in the ``with`` block reaches the opened cluster's context as it would there."""
    with contextlib.ExitStack() as stack:
        yield OnDemandClient(lambda: stack.enter_context(open_client(cfg)))


def check_sbatch() -> None:
    """Raise UserError (one line) when Slurm's ``sbatch`` is not on PATH: no job can be
    submitted from this host (checked before any work, and again before submitting)."""
    import shutil

    if shutil.which("sbatch") is None:
        raise UserError(
            "--cluster slurm: 'sbatch' is not on PATH here; run from a Slurm login node, or use "
            "--cluster local or a scheduler address"
        )


def check_submission(job_script: str, timeout_s: float = 30.0) -> None:
    """Ask Slurm to validate ``job_script`` without submitting it (``sbatch --test-only``).

    dask-jobqueue submits jobs in the background and only logs a failed ``sbatch`` (a traceback
    per attempt) while the run waits for workers that can never start, up to the profile's
    ``worker_timeout_s``. Checking one submission first turns a Slurm that cannot take the job
    (no controller reachable, an unknown partition or account, directives it refuses) into one
    line within seconds.

    Raises:
        UserError: ``sbatch`` refused the script or did not answer within ``timeout_s``; the
            message carries sbatch's own first line.
    """
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="s2lc-job-") as f:
        f.write(job_script)
        f.flush()
        try:
            proc = subprocess.run(
                ["sbatch", "--test-only", f.name],
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise UserError(
                f"--cluster slurm: 'sbatch --test-only' did not answer within {timeout_s:g} s: "
                "is the Slurm controller reachable from this host?"
            ) from None
    if proc.returncode != 0:
        said = proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}"
        raise UserError(
            f"--cluster slurm: sbatch cannot submit the worker job: {said.splitlines()[-1]}"
        )


def _slurm_cluster_class() -> type:
    """:class:`dask_jobqueue.SLURMCluster`, imported without losing Ctrl-C.

    Importing ``dask_jobqueue`` runs its ``runner`` module, which replaces Python's SIGINT
    handler with ``sys.exit()`` (dask-jobqueue 0.9). Ctrl-C then ended a run with exit code 0,
    no "interrupted ... resume" line and the workers' tracebacks. Imported only for Slurm runs,
    and the handler that was in place is put back.
    """
    import signal
    import threading

    before = signal.getsignal(signal.SIGINT)
    from dask_jobqueue import SLURMCluster  # noqa: PLC0415

    if threading.current_thread() is threading.main_thread() and before is not None:
        signal.signal(signal.SIGINT, before)
    return SLURMCluster


@contextlib.contextmanager
def _slurm_client(cfg: ClusterConfig) -> Iterator[object]:

    p = cfg.slurm
    check_sbatch()
    directives = list(p.job_extra_directives)
    extra_args: list[str] = []
    if p.gpus:
        directives.append(f"--gres=gpu:{p.gpus}")
        extra_args += ["--resources", f"GPU={max(1, p.gpus // p.processes)}"]
    if p.lifetime:
        extra_args += ["--lifetime", p.lifetime, "--lifetime-restart"]
        if p.lifetime_stagger:
            extra_args += ["--lifetime-stagger", p.lifetime_stagger]
    threads = max(1, p.cores // p.processes)
    prologue = [
        *p.job_script_prologue,
        f"export OMP_NUM_THREADS={threads}",
        # Job logs are files for later reading: keep the workers' INFO lines there even though
        # the driver's terminal is quieted (sbatch exports the driver's environment).
        "export DASK_LOGGING__DISTRIBUTED=info",
    ]
    try:
        cluster = _slurm_cluster_class()(
            queue=p.queue,
            account=p.account,
            cores=p.cores,
            processes=p.processes,
            memory=p.memory,
            walltime=p.walltime,
            job_extra_directives=directives,
            job_script_prologue=prologue,
            worker_extra_args=extra_args,
            local_directory=p.local_directory,
            interface=p.interface,
            python=p.python or sys.executable,
            scheduler_options={"dashboard_address": ":0"},
        )
    except Exception as exc:  # sbatch missing, bad directives
        raise UserError(f"cannot start a Slurm cluster: {str(exc).splitlines()[0]}") from None
    jobs = cfg.workers or p.jobs
    _log.info("Slurm job script:\n%s", cluster.job_script())
    try:
        check_submission(cluster.job_script())
    except UserError:
        cluster.close()
        raise
    cluster.scale(jobs=jobs)
    client = Client(cluster)
    try:
        client.wait_for_workers(1, timeout=p.worker_timeout_s)
    except Exception:  # noqa: BLE001 - dask raises TimeoutError (or OSError) here
        client.close()
        cluster.close()
        raise UserError(
            f"no Slurm worker started within {p.worker_timeout_s:g} s of submitting {jobs} "
            "job(s): check 'squeue -u $USER' and the job logs; raise worker_timeout_s in the "
            "Slurm profile for a busy queue; a rerun resumes"
        ) from None
    with _serving(client, cluster, threads, cfg.torch):
        _log.info(
            "Slurm cluster: %d job(s) x %d worker(s); dashboard %s",
            jobs,
            p.processes,
            client.dashboard_link,
        )
        yield client


WORKER_EXIT_S = 60.0
"""Seconds a local worker process gets to exit when the run closes its cluster."""


def close_local_workers(cluster, timeout_s: float = WORKER_EXIT_S) -> None:  # noqa: ANN001
    """Close a :class:`LocalCluster`'s nannies, giving each worker process ``timeout_s`` to exit.

    ``LocalCluster.close`` gives a worker process 4 s (0.8 x the nanny's default 5 s) to exit,
    then kills it and warns "Worker process still alive after 4.0 seconds, killing". A worker
    that has loaded torch, GDAL and a model spends that long in the interpreter's own
    finalisation after all of its Python-level cleanup has run (seen on every demo run here with
    the machine busy: the process still alive, no Python frame left), so the warning came on
    healthy runs. Closing the nannies first with a generous timeout lets the processes end on
    their own; one that still hangs is killed after ``timeout_s``, with the same warning.
    """
    import asyncio

    async def close_all() -> None:
        nannies = [w for w in list(cluster.workers.values()) if hasattr(w, "kill")]
        await asyncio.gather(*(n.close(timeout=timeout_s) for n in nannies))

    with contextlib.suppress(Exception):  # a cluster already closing closes its own workers
        cluster.sync(close_all)


@contextlib.contextmanager
def _serving(client, cluster, threads: int, torch: bool = True) -> Iterator[None]:
    """Pin torch (or only OpenMP) threads on every worker; close the client and the cluster."""
    local = isinstance(cluster, LocalCluster)
    try:
        client.register_plugin(TorchThreads(threads) if torch else OmpThreads(threads))
        yield
    except KeyboardInterrupt:
        if local:  # Ctrl-C: stop now; finished tiles are kept, a rerun redoes the others
            with _distributed_quiet():
                kill_local_workers(cluster)
                client.close()
                cluster.close()
        raise
    finally:
        if local:
            close_local_workers(cluster)
        client.close()
        cluster.close()


def kill_local_workers(cluster) -> None:  # noqa: ANN001
    """SIGKILL a :class:`LocalCluster`'s worker processes (on Ctrl-C).

    Closing them gracefully waits for the tile each is computing (a task in a thread cannot be
    cancelled), up to :data:`WORKER_EXIT_S`, and makes each print that its task was cancelled. A
    tile cut off this way is not marked done, so a rerun computes it again (as after a crash).
    """
    import signal

    for nanny in list(cluster.workers.values()):
        proc = getattr(getattr(nanny, "process", None), "process", None)
        pid = getattr(proc, "pid", None)
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _distributed_quiet() -> Iterator[None]:
    """Silence distributed's loggers here while a cluster is torn down on purpose."""
    log = logging.getLogger("distributed")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


class OrphanedPins(SchedulerPlugin):
    """A scheduler plugin: tasks pinned to a worker that died are freed when a worker joins.

    ``run_tiles`` pins a tile to its read group's worker (``allow_other_workers=True``). When no
    worker is alive for a moment (both killed, one restarting), such a task becomes unrunnable,
    and distributed's ``bulk_schedule_unrunnable_after_adding_worker`` ignores loose
    restrictions, so a new worker never gets it and the run waits forever (found by the
    rehearsal, :mod:`pipeline.bench.rehearsal`). On every ``add_worker`` (called before that
    step), this drops the worker restriction of unrunnable loose tasks whose pinned workers are
    all gone.
    """

    name = "s2lc-orphaned-pins"

    def add_worker(self, scheduler, worker: str) -> None:  # noqa: ANN001
        for ts in list(scheduler.unrunnable):
            pins = ts.worker_restrictions
            if ts.loose_restrictions and pins and not any(w in scheduler.workers for w in pins):
                ts.worker_restrictions = set()
