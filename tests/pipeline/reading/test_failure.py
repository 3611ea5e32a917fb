"""A read failure crosses the Dask process boundary as itself, not as a plain Exception."""

from __future__ import annotations

import pytest
from distributed import protocol
from distributed.core import error_message

from pipeline.reading.failure import ReadFailure, classify_read_error, detached_read_failures


def _refused_read():
    from rasterio._err import CPLE_HttpResponseError
    from rasterio.errors import RasterioIOError

    try:  # as rasterio.open raises it for a refused HTTP request: GDAL's error chained
        try:
            raise CPLE_HttpResponseError(11, 1, "HTTP response code: 403")
        except CPLE_HttpResponseError as gdal:
            raise RasterioIOError("HTTP response code: 403") from gdal
    except RasterioIOError as exc:
        raise classify_read_error(exc, ["S2A_X"]) from None


def _as_driver_sees_it(task) -> BaseException:
    """What Dask's worker sends back for ``task``'s exception, unpickled on the driver."""
    try:
        task()
    except Exception as exc:
        msg = error_message(exc)
    return protocol.pickle.loads(msg["exception"].data)


def test_read_failure_keeps_its_type_status_and_scenes_across_dask():
    got = _as_driver_sees_it(detached_read_failures(_refused_read))
    assert isinstance(got, ReadFailure)
    assert (got.kind, got.status, got.scenes) == ("http", 403, ("S2A_X",))


def test_without_detaching_dask_would_lose_the_type():
    """The fault the wrapper exists for (GDAL's chained error does not unpickle)."""
    got = _as_driver_sees_it(_refused_read)
    if isinstance(got, ReadFailure):
        pytest.skip("this rasterio's errors unpickle: the wrapper is belt and braces here")
    assert type(got) is Exception and "ReadFailure" in str(got)


def test_404_410_and_corrupt_are_permanent_other_failures_transient():
    import pickle

    gone = ReadFailure("HTTP 404: gone", "http", 404, ["s1"], asset="http://h/s1/B04.tif")
    assert gone.permanent and ReadFailure("x", "http", 410, ["s1"]).permanent
    assert ReadFailure("bad tiff", "corrupt", None, ["s1"]).permanent
    for transient in (
        ReadFailure("x", "http", 503, ["s1"]),
        ReadFailure("x", "http", 429, ["s1"]),
        ReadFailure("x", "http", 403, ["s1"]),
        ReadFailure("reset", "io", None, ["s1"]),
    ):
        assert not transient.permanent and transient.permanent_scenes() == {}
    rec = gone.permanent_scenes()["s1"]
    assert (rec["status"], rec["permanent"], rec["asset"]) == (404, True, "http://h/s1/B04.tif")
    # a failure that names several scenes is pinned on none of them, unless each has its record
    assert ReadFailure("x", "http", 404, ["s1", "s2"]).permanent_scenes() == {}
    per = {"s1": rec, "s2": {**ReadFailure("x", "http", 503, ["s2"]).to_dict()}}
    both = ReadFailure("x", "http", 404, ["s1", "s2"], per_scene=per)
    assert list(both.permanent_scenes()) == ["s1"]
    again = pickle.loads(pickle.dumps(both))
    assert (again.asset, again.per_scene, again.permanent) == (both.asset, per, True)
