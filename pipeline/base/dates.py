"""Dates users write (region periods, ``--start``/``--end``): one parser with a one-line error."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pipeline.base.errors import UserError

__all__ = ["parse_date"]


def parse_date(value: Any, where: str = "date") -> dt.date:
    """Parse YYYY-MM-DD (or a date/datetime) with a one-line error otherwise.

    Raises :class:`UserError` naming ``where`` when ``value`` is not a date.
    """
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise UserError(f"{where}: {value!r} is not a date (expected YYYY-MM-DD)") from None
