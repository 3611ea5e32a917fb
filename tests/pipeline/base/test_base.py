"""pipeline.base: the one JSON rule, file hash, digest and colour helpers every layer shares."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from pipeline.base.colours import TAB20, palette, parse_color, to_hex
from pipeline.base.dates import parse_date
from pipeline.base.errors import UserError
from pipeline.base.hashing import json_digest, sha256_file
from pipeline.base.jsonio import to_json_safe, write_json


def test_tab20_is_matplotlibs_and_palette_cycles():
    cmap = matplotlib.colormaps["tab20"]
    assert list(TAB20) == [matplotlib.colors.to_hex(cmap(i)) for i in range(20)]
    assert palette(22)[20:] == [TAB20[0], TAB20[1]]


@pytest.mark.parametrize(
    ("colour", "rgb"),
    [("#1F77b4", (31, 119, 180)), ("abc", (170, 187, 204)), ([1.0, 0.5, 0.0], (255, 128, 0))],
)
def test_parse_color_and_hex_round_trip(colour, rgb):
    assert parse_color(colour) == rgb
    assert parse_color(to_hex(colour)) == rgb
    assert to_hex(colour) == to_hex(colour).lower()


def test_parse_color_rejects_garbage():
    with pytest.raises(ValueError):
        parse_color("#12345")


def test_to_json_safe_handles_dataclasses_numpy_dates_and_non_finite():
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        path: Path
        when: dt.date
        scale: np.float32
        ids: tuple[int, ...]

    doc = to_json_safe(
        {"cfg": Cfg(Path("/x"), dt.date(2023, 5, 1), np.float32(0.5), (1, 2)), 3: math.nan}
    )
    assert doc == {
        "cfg": {"path": "/x", "when": "2023-05-01", "scale": 0.5, "ids": [1, 2]},
        "3": None,
    }
    json.dumps(doc, allow_nan=False)


def test_write_json_is_atomic_and_readable(tmp_path):
    out = write_json(tmp_path / "a" / "doc.json", {"v": np.int64(3)})
    assert json.loads(out.read_text()) == {"v": 3}
    assert os.listdir(out.parent) == ["doc.json"]  # no temporary left behind


def test_sha256_file_sees_a_rewrite(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"abc")
    assert sha256_file(p) == hashlib.sha256(b"abc").hexdigest()
    p.write_bytes(b"abcd")
    os.utime(p, ns=(1, 1))  # a new mtime, as any rewrite gets
    assert sha256_file(p) == hashlib.sha256(b"abcd").hexdigest()


def test_json_digest_is_the_sorted_json_sha256_prefix():
    obj = {"b": 1, "a": [1, 2]}
    expected = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    assert json_digest(obj) == expected == json_digest({"a": [1, 2], "b": 1})


def test_parse_date_says_where():
    assert parse_date("2023-01-31") == dt.date(2023, 1, 31)
    with pytest.raises(UserError, match="period.start"):
        parse_date("31/01/2023", "period.start")
