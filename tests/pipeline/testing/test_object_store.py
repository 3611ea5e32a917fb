"""The loopback object store is real HTTP: latency, bandwidth, faults and 404s as a client sees them."""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import pytest

from pipeline.testing.object_store import StoreConfig, serve_store


@pytest.fixture()
def blob(tmp_path) -> Path:
    p = tmp_path / "scene" / "B04.tif"
    p.parent.mkdir()
    p.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    return p


def _get(url: str, path: str, rng: str | None = None):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers={"Range": rng} if rng else {})
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def test_ranges_are_served_and_counted(blob, tmp_path):
    with serve_store(tmp_path) as store:
        status, body, headers = _get(store.url, "/scene/B04.tif", "bytes=10-19")
        assert store.href(blob) == f"{store.url}/scene/B04.tif"
    assert status == 206 and body == blob.read_bytes()[10:20]
    assert headers["Content-Range"] == f"bytes 10-19/{blob.stat().st_size}"
    c = store.counter
    assert (c.requests, c.range_requests, c.bytes) == (1, 1, 10)


def test_no_delay_of_its_own_after_a_small_answer(blob, tmp_path):
    """The store adds no time of its own: a 16 KiB range (GDAL's first read of a COG) comes back
    at once on a keep-alive connection. With Nagle's algorithm on the server socket the body,
    written after the headers, waited for the client's delayed ACK: 40-45 ms per request
    (measured), which no object store adds and which the reader then seemed to hide."""
    with serve_store(tmp_path) as store:
        host, port = store.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        took = []
        for _ in range(9):
            t = time.perf_counter()
            conn.request("GET", "/scene/B04.tif", headers={"Range": "bytes=0-16383"})
            assert len(conn.getresponse().read()) == 16384
            took.append(time.perf_counter() - t)
        conn.close()
    assert sorted(took)[4] < 0.02, took  # the median: 0.3-7 ms measured, 42-45 ms with Nagle


def test_time_to_first_byte_is_per_request_and_bandwidth_limits_the_body(blob, tmp_path):
    with serve_store(tmp_path, StoreConfig(ttfb_s=0.05)) as store:
        host, port = store.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        t = time.perf_counter()
        for _ in range(4):  # one keep-alive connection: the latency is paid per request
            conn.request("GET", "/scene/B04.tif", headers={"Range": "bytes=0-99"})
            assert conn.getresponse().read() == blob.read_bytes()[:100]
        assert time.perf_counter() - t >= 4 * 0.05
        conn.close()
        store.config.ttfb_s = 0.0
        store.config.bandwidth_mbps = 40.0  # 1 MiB at 40 Mbit/s: >= 0.21 s
        t = time.perf_counter()
        status, body, _ = _get(store.url, "/scene/B04.tif")
        assert status == 200 and len(body) == blob.stat().st_size
        assert time.perf_counter() - t >= 2**20 * 8 / 40e6


def test_missing_objects_answer_404_forever(blob, tmp_path):
    with serve_store(tmp_path, StoreConfig(missing={"scene/B04.tif"})) as store:
        assert [_get(store.url, "/scene/B04.tif")[0] for _ in range(3)] == [404] * 3
        assert _get(store.url, "/scene/B08.tif")[0] == 404  # no such file
        assert store.counter.not_found == 4 and store.counter.bytes == 0


def test_transient_faults_come_in_seeded_bursts_of_each_kind(blob, tmp_path):
    def outcomes(kind: str, seed: int) -> list[str]:
        cfg = StoreConfig(fault_rate=0.3, fault_kinds=(kind,), burst=2, seed=seed)
        out = []
        with serve_store(tmp_path, cfg) as store:
            for _ in range(30):
                try:
                    status, body, _ = _get(store.url, "/scene/B04.tif", "bytes=0-65535")
                    out.append(str(status) if status != 206 or len(body) == 65536 else "short")
                except http.client.IncompleteRead:
                    out.append("truncate")
                except (ConnectionError, http.client.RemoteDisconnected):
                    out.append("reset")
            assert sum(store.counter.faults.values()) == sum(o != "206" for o in out)
        return out

    for kind in ("429", "503", "reset", "truncate"):
        got = outcomes(kind, seed=3)
        assert got == outcomes(kind, seed=3)  # reproducible
        faults = [k for k, o in enumerate(got) if o != "206"]
        assert faults and set(got) == {"206", kind}
        # bursts: every fault starts a run of 2 (or ends the sequence)
        starts = [k for k in faults if k - 1 not in faults]
        assert all(k + 1 in faults or k == 29 for k in starts)


def test_fail_paths_answer_503_until_cleared(blob, tmp_path):
    cfg = StoreConfig(fail_paths={"scene/B04.tif"})
    with serve_store(tmp_path, cfg) as store:
        assert _get(store.url, "/scene/B04.tif")[0] == 503
        store.config.fail_paths.clear()
        assert _get(store.url, "/scene/B04.tif")[0] == 200


def test_request_log_gives_requests_in_flight_and_reset_zeroes_it(blob, tmp_path):
    """Four concurrent 50 ms requests: the log has their ranges and overlapping times, so the
    mean in flight is about 4; reset empties counts and log."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.testing.object_store import in_flight_profile

    with serve_store(tmp_path, StoreConfig(ttfb_s=0.05)) as store:
        rngs = [f"bytes={i * 100}-{i * 100 + 9}" for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda r: _get(store.url, "/scene/B04.tif", r), rngs))
        # The store logs a request once its body is sent: the client can be ahead by a moment.
        deadline = time.monotonic() + 5
        while len(store.counter.log) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        log = list(store.counter.log)
        store.counter.reset()
        assert store.counter.log == [] and store.counter.requests == 0
    assert sorted((r[2], r[3], r[4], r[5]) for r in log) == [
        ("GET", "scene/B04.tif", i * 100, 10) for i in range(4)
    ]
    assert all(r[1] - r[0] >= 0.05 for r in log)
    flight = in_flight_profile(log, step_s=0.01)
    assert 2.5 < flight["mean"] <= 4.0
    assert flight["busy_s"] <= flight["span_s"] + 1e-9
    assert in_flight_profile([])["mean"] == 0.0


def test_in_flight_profile_of_a_known_log():
    """Two requests, [0, 1] and [0.5, 1.5] s: span 1.5 s, 2 request-seconds, mean 4/3."""
    from pipeline.testing.object_store import in_flight_profile

    got = in_flight_profile([(0.0, 1.0, "GET", "a", 0, 1), (0.5, 1.5, "GET", "b", 0, 1)], 0.5)
    assert got["span_s"] == 1.5 and got["busy_s"] == 1.5
    assert got["mean"] == pytest.approx(2.0 / 1.5)
    assert got["per_step"] == [1.0, 2.0, 1.0, 0.0]


def test_request_structure_of_a_known_log():
    """The latency bench's structural figures from a store's log (pipeline.bench.reading): two
    files, one with three requests back to back (3 round trips of 10 ms), one with a 10 ms gap
    between its two requests; nothing in flight between 0.03 and 0.05 s."""
    from pipeline.bench.reading import request_structure

    log = [
        (0.00, 0.01, "HEAD", "a", -1, -1),
        (0.01, 0.02, "GET", "a", 0, 16384),
        (0.02, 0.03, "GET", "a", 16384, 99),
        (0.05, 0.06, "GET", "b", 0, 16384),
        (0.07, 0.08, "GET", "b", 16384, 99),
    ]
    got = request_structure(log, 0.01)
    assert got["requests_per_file"] == 2.5
    assert abs(got["file_chain_rt"] - 3.0) < 1e-9  # (3 + 3) / 2
    assert abs(got["span_rt"] - 8.0) < 1e-9
    assert abs(got["idle_s"] - 0.03) < 1e-9  # 0.03-0.05 and 0.06-0.07
    assert request_structure(log, 0.0)["span_rt"] is None
