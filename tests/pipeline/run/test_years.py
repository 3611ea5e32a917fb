"""``run --years`` parsing (the runs themselves: tests/pipeline/run/test_years_change.py)."""

from __future__ import annotations

import pytest

from pipeline.base.errors import UserError
from pipeline.run.years import parse_years


def test_ranges_and_lists():
    assert parse_years("2019-2021") == [2019, 2020, 2021]
    assert parse_years("2023,2021") == [2021, 2023]
    assert parse_years("2017-2018, 2023") == [2017, 2018, 2023]


@pytest.mark.parametrize("spec", ["2021-2019", "twenty", "2021;2023", "2010-2012", ""])
def test_bad_years_are_one_line_errors(spec):
    with pytest.raises(UserError):
        parse_years(spec)
