"""``--year``/``--start``/``--end`` mean the same in ``run``, ``plan``, ``search`` and
``extract-points``: one resolver (:func:`pipeline.base.config.period_dates`) and one option group."""

from __future__ import annotations

import argparse
import datetime as dt

import pytest

from pipeline.base.config import period_dates
from pipeline.base.errors import UserError
from pipeline.commands import extract_points, plan, run, search
from pipeline.stac.profiles import stac_profile

REGION = (dt.date(2023, 1, 1), dt.date(2023, 12, 31))


def test_a_year_is_its_calendar_days():
    assert period_dates(2021, None, None, REGION) == (dt.date(2021, 1, 1), dt.date(2021, 12, 31))
    assert period_dates(2021) == (dt.date(2021, 1, 1), dt.date(2021, 12, 31))


def test_dates_default_one_by_one_to_the_regions_period():
    assert period_dates(None, "2023-03-01", None, REGION) == (dt.date(2023, 3, 1), REGION[1])
    assert period_dates(None, None, "2023-06-30", REGION) == (REGION[0], dt.date(2023, 6, 30))
    assert period_dates(None, None, None, REGION) == REGION


@pytest.mark.parametrize(
    ("year", "start", "end", "default", "message"),
    [
        (2023, "2023-01-01", None, REGION, "cannot be combined"),
        (1999, None, None, REGION, "sentinel-2 era"),
        (dt.date.today().year + 1, None, None, REGION, "sentinel-2 era"),
        (None, "2023-02-30", None, REGION, "not a date"),
        (None, "2023-05-01", "2023-04-01", REGION, "before --start"),
        (None, "2023-05-01", None, None, "give --start and --end"),
    ],
)
def test_bad_periods_are_one_line_errors(year, start, end, default, message):
    with pytest.raises(UserError, match=f"(?i){message}"):
        period_dates(year, start, end, default)


def test_profile_defaults():
    assert stac_profile("demo", "http://x", "earth-search") == "demo"
    assert stac_profile(None, "http://x", "earth-search") == "custom"
    assert stac_profile(None, None, "planetary-computer") == "planetary-computer"


@pytest.mark.parametrize("command", [run, plan, search, extract_points])
def test_every_searching_command_spells_the_period_and_data_options_alike(command):
    p = argparse.ArgumentParser()
    command.add_arguments(p)
    opts = {o: a for a in p._actions for o in a.option_strings}
    for name in ("--year", "--start", "--end", "--profile", "--stac-url", "--max-cloud"):
        assert name in opts, f"{command.NAME} lacks {name}"
    assert opts["--year"].type is int
    assert opts["--year"].help == "one calendar year (sets --start/--end)"
