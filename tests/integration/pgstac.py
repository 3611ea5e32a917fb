"""A real pgstac STAC API on loopback: PostgreSQL + PostGIS (Debian), pypgstac, stac-fastapi-pgstac.

:class:`LocalPgstac` bootstraps everything from the project's own files:

1. the Debian packages ``postgresql-<major>`` and ``postgresql-<major>-postgis-3`` (apt-get, only
   when missing; 15 on Debian 12);
2. the server's own venv ``.venv-pgstac`` (its pins, ``requirements-pgstac-server.txt`` next to
   this file, conflict with the project's fastapi/starlette), rebuilt only when the pins change;
3. a throw-away cluster (``initdb`` as user ``postgres`` -- PostgreSQL refuses to run as root --
   in a temporary folder owned by it) started on a free loopback port, a ``pgstac`` database with
   PostGIS, ``pypgstac migrate``;
4. ``uvicorn --factory stac_fastapi.pgstac.app:create_app`` on another free port.

:meth:`LocalPgstac.load_catalog` loads a folder with ``collection.json`` + ``items.json`` (the
demo catalog layout) or ``items.ndjson`` with ``pypgstac load``. :meth:`LocalPgstac.stop` stops uvicorn and the
cluster (``pg_ctl stop -m fast``) and deletes the temporary folder.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .services import (
    ServiceError,
    Unavailable,
    apt_install,
    free_port,
    run,
    stop_pid,
    tail_file,
    tail_text,
    wait_for,
)

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REQUIREMENTS = HERE / "requirements-pgstac-server.txt"
VENV = REPO / ".venv-pgstac"
PG_MAJOR_DEFAULT = 15
DB = "pgstac"
PGUSER = "postgres"
PGPASSWORD = "postgres"
START_TIMEOUT_S = 90
PIP_TIMEOUT_S = 900


@dataclass(frozen=True)
class PgstacInfo:
    """A running pgstac API: its base URL and how to reach its database."""

    url: str
    dsn: str
    pg_port: int
    api_port: int
    root: Path
    timings: dict[str, float] = field(default_factory=dict)


def pg_major() -> int:
    """The installed PostgreSQL major version (highest), else the distribution default."""
    base = Path("/usr/lib/postgresql")
    versions = sorted(
        int(p.name) for p in base.glob("*") if p.name.isdigit() and (p / "bin" / "initdb").exists()
    )
    return versions[-1] if versions else PG_MAJOR_DEFAULT


def ensure_server_venv(venv: Path = VENV, requirements: Path = REQUIREMENTS) -> float:
    """Create/refresh the pgstac server venv from its pins; return seconds spent (0 if current)."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = venv / ".installed"
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return 0.0
    key = hashlib.sha256(str(venv.resolve()).encode()).hexdigest()[:12]
    lock = Path(tempfile.gettempdir()) / f"s2lc-pgstac-venv-{key}.lock"
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text().strip() == digest:
            return 0.0
        t0 = time.monotonic()
        if venv.exists():
            shutil.rmtree(venv)
        base_python = getattr(sys, "_base_executable", None) or shutil.which("python3")
        run([base_python, "-m", "venv", str(venv)], timeout=120)
        # Ignored by git wherever it lives, whatever the project's .gitignore says.
        (venv / ".gitignore").write_text("# created by tests/integration/pgstac.py\n*\n")
        proc = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
                str(requirements),
            ],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_S,
        )
        if proc.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise Unavailable(
                f"could not install the pgstac server venv from {requirements.name}:\n"
                + tail_text(proc.stdout + proc.stderr, 15)
            )
        stamp.write_text(digest + "\n")
        return time.monotonic() - t0


class LocalPgstac:
    """Start/stop PostgreSQL + pgstac + stac-fastapi-pgstac on loopback."""

    def __init__(self, venv: Path = VENV) -> None:
        self.venv = Path(venv)
        self.timings: dict[str, float] = {}
        self.root: Path | None = None
        self.pg_started = False
        self.api: subprocess.Popen | None = None
        self._api_log = None
        self.collection: str | None = None
        """The collection loaded last (:meth:`load_catalog`)."""
        self.catalog: Path | None = None
        """The catalog folder loaded last."""

    # ------------------------------------------------------------------ public
    def start(self) -> PgstacInfo:
        t0 = time.monotonic()
        major = pg_major()
        self.bindir = Path(f"/usr/lib/postgresql/{major}/bin")
        self.timings["apt_install_s"] = apt_install(
            (f"postgresql-{major}", f"postgresql-{major}-postgis-3"),
            purpose="the pgstac integration test",
        )
        if not (self.bindir / "initdb").exists():
            raise Unavailable(f"{self.bindir}/initdb missing after installing postgresql-{major}")
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(PGUSER)
            except KeyError:
                raise Unavailable("running as root but there is no 'postgres' user") from None
        self.timings["venv_s"] = ensure_server_venv(self.venv)
        # Safety net: stop the daemons even if the test session dies without teardown.
        atexit.register(self.stop)
        t1 = time.monotonic()
        try:
            self._init_cluster()
            self._start_postgres()
            self._create_database()
            self._migrate()
            self._start_api()
        except BaseException:
            self.stop()
            raise
        self.timings["startup_s"] = time.monotonic() - t1
        self.timings["total_s"] = time.monotonic() - t0
        log.info("pgstac API up at %s (%s)", self.url, self.timings)
        return self.info()

    def info(self) -> PgstacInfo:
        assert self.root is not None
        return PgstacInfo(
            url=self.url,
            dsn=self.dsn,
            pg_port=self.pg_port,
            api_port=self.api_port,
            root=self.root,
            timings=dict(self.timings),
        )

    def load_catalog(self, catalog_dir: Path) -> str:
        """Load ``collection.json`` + ``items.json`` (a FeatureCollection) or ``items.ndjson``
        (one item per line, streamed: a continental catalog need not fit in memory) into pgstac.

        Returns the collection id. Uses ``pypgstac load`` on ndjson files (upsert, so loading
        the same catalog twice is harmless).
        """
        assert self.root is not None
        t0 = time.monotonic()
        catalog_dir = Path(catalog_dir)
        collection = json.loads((catalog_dir / "collection.json").read_text())
        if (catalog_dir / "items.ndjson").is_file():
            lines = open(catalog_dir / "items.ndjson")  # closed below
            items = (json.loads(line) for line in lines if line.strip())
        else:
            lines = None
            items_doc = json.loads((catalog_dir / "items.json").read_text())
            items = items_doc["features"] if isinstance(items_doc, dict) else items_doc
        cid = collection["id"]
        coll_nd = self.root / f"{cid}.collection.ndjson"
        items_nd = self.root / f"{cid}.items.ndjson"
        coll_nd.write_text(json.dumps(collection, separators=(",", ":")) + "\n")
        count = 0
        try:
            with open(items_nd, "w") as fh:
                for item in items:
                    item = dict(item)
                    item.setdefault("collection", cid)
                    if item["collection"] != cid:
                        raise ServiceError(
                            f"item {item.get('id')} belongs to {item['collection']}, not {cid}"
                        )
                    fh.write(json.dumps(item, separators=(",", ":")) + "\n")
                    count += 1
        finally:
            if lines is not None:
                lines.close()
        self._pypgstac("load", "collections", str(coll_nd), "--method", "upsert")
        self._pypgstac("load", "items", str(items_nd), "--method", "upsert")
        n = self.sql(f"SELECT count(*) FROM pgstac.items WHERE collection = '{cid}'").strip()
        if int(n) != count:
            raise ServiceError(f"loaded {n} items of {cid} into pgstac, expected {count}")
        self.timings["load_s"] = time.monotonic() - t0
        self.collection, self.catalog = cid, catalog_dir
        return cid

    def sql(self, query: str) -> str:
        """Run one SQL statement with psql on the pgstac database; return unaligned output."""
        return run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.dsn,
                "-c",
                query,
            ],
            timeout=60,
        ).stdout

    def recorded_searches(self) -> list[dict]:
        """The searches pgstac has run (its own ``pgstac.searches`` table), newest first.

        Every /search the API serves goes through pgstac's ``search()``, which records the
        request (collections, filter, query...) there: proof of what the server was asked.
        """
        out = self.sql("SELECT search::text FROM pgstac.searches ORDER BY lastused DESC")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def clear_recorded_searches(self) -> None:
        self.sql("DELETE FROM pgstac.searches")

    def stop(self) -> None:
        """Stop uvicorn and PostgreSQL; delete the cluster's folder."""
        if self.api is not None:
            stop_pid(self.api.pid, name="uvicorn (stac-fastapi-pgstac)")
            try:
                self.api.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log.warning("uvicorn (pid %d) did not exit", self.api.pid)
            self.api = None
        if self._api_log is not None:
            self._api_log.close()
            self._api_log = None
        if self.pg_started and self.root is not None:
            proc = run(
                [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"],
                timeout=60,
                check=False,
                user=self._pg_user,
                cwd="/",
            )
            if proc.returncode != 0:
                log.warning("pg_ctl stop failed: %s", proc.stderr.strip())
                pid = self._postmaster_pid()
                stop_pid(pid, name="postgres")
            self.pg_started = False
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        atexit.unregister(self.stop)

    def logs(self) -> list[Path]:
        if self.root is None:
            return []
        return [self.root / "postgres.log", self.root / "api.log"]

    # ------------------------------------------------------------------ steps
    @property
    def _pg_user(self) -> str | None:
        return PGUSER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def dsn(self) -> str:
        return f"postgresql://{PGUSER}:{PGPASSWORD}@127.0.0.1:{self.pg_port}/{DB}"

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _init_cluster(self) -> None:
        t0 = time.monotonic()
        self.root = Path(tempfile.mkdtemp(prefix="s2lc-pgstac-"))
        self.datadir = self.root / "data"
        if self._pg_user:
            pw = pwd.getpwnam(self._pg_user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                PGUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            timeout=120,
            user=self._pg_user,
            cwd=self.root,
        )
        self.timings["initdb_s"] = time.monotonic() - t0

    def _start_postgres(self) -> None:
        t0 = time.monotonic()
        self.pg_port = free_port()
        opts = (
            f"-p {self.pg_port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.root} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=64MB"
        )
        proc = run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.root / "postgres.log"),
                "-o",
                opts,
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
            ],
            timeout=START_TIMEOUT_S + 30,
            check=False,
            user=self._pg_user,
            cwd=self.root,
        )
        self.pg_started = True  # pg_ctl may have started it even when it reports a failure
        if proc.returncode != 0:
            raise ServiceError(
                f"pg_ctl start failed:\n{proc.stdout}{proc.stderr}\n"
                + tail_file(self.root / "postgres.log")
            )
        self.timings["postgres_start_s"] = time.monotonic() - t0

    def _psql_admin(self, query: str, db: str = "postgres") -> None:
        run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.pg_port),
                "-U",
                PGUSER,
                "-d",
                db,
                "-c",
                query,
            ],
            timeout=120,
        )

    def _create_database(self) -> None:
        t0 = time.monotonic()
        self._psql_admin(f"ALTER USER {PGUSER} PASSWORD '{PGPASSWORD}'")
        self._psql_admin(f"CREATE DATABASE {DB}")
        self._psql_admin("CREATE EXTENSION IF NOT EXISTS postgis", db=DB)
        self.timings["createdb_s"] = time.monotonic() - t0

    def _pypgstac(self, *args: str) -> str:
        return run(
            [str(self.venv / "bin" / "pypgstac"), *args, "--dsn", self.dsn], timeout=600
        ).stdout

    def _migrate(self) -> None:
        t0 = time.monotonic()
        self._pypgstac("migrate")
        # Report numberMatched (the server's own count) so tests can compare result totals.
        self.sql(
            "INSERT INTO pgstac.pgstac_settings (name, value) VALUES ('context', 'on') "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
        )
        self.timings["migrate_s"] = time.monotonic() - t0

    def _start_api(self) -> None:
        assert self.root is not None
        t0 = time.monotonic()
        self.api_port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PG", "POSTGRES_", "ENABLED_EXTENSIONS", "VIRTUAL_ENV"))
        }
        env.update(
            PGHOST="127.0.0.1",
            PGPORT=str(self.pg_port),
            PGUSER=PGUSER,
            PGPASSWORD=PGPASSWORD,
            PGDATABASE=DB,
            PYTHONUNBUFFERED="1",
            PATH=f"{self.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
        )
        self._api_log = open(self.root / "api.log", "w")  # noqa: SIM115 - closed in stop()
        self.api = subprocess.Popen(
            [
                str(self.venv / "bin" / "uvicorn"),
                "--factory",
                "stac_fastapi.pgstac.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
                "--log-level",
                "info",
            ],
            stdout=self._api_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.root,  # no stray .env file is picked up
            start_new_session=True,
        )

        def ready() -> bool:
            if self.api.poll() is not None:
                raise ServiceError(
                    f"uvicorn exited with status {self.api.returncode}\n"
                    + tail_file(self.root / "api.log")
                )
            with urllib.request.urlopen(f"{self.url}/_mgmt/ping", timeout=5) as resp:
                return resp.status == 200

        wait_for(
            ready, timeout=START_TIMEOUT_S, what="stac-fastapi-pgstac /_mgmt/ping", logs=self.logs()
        )
        self.timings["api_start_s"] = time.monotonic() - t0
