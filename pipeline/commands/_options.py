"""Options shared by the commands that search and composite (``run``, ``plan``, ``search``,
``extract-points``): when (``--year``/``--start``/``--end``/``--period``) and which data
(``--profile``/``--stac-url``/``--collection``/``--max-cloud``/``--keep-snow``), spelt and
resolved one way (:func:`pipeline.base.config.period_dates`, :func:`pipeline.base.config.stac_profile`).
"""

from __future__ import annotations

import argparse

PERIOD_CHOICES = ("monthly", "quarterly", "annual")


def add_when(
    g: argparse._ActionsContainer,
    *,
    start_help: str = "first date, YYYY-MM-DD (default: the region's period)",
    period: bool = True,
    period_default: str | None = None,
    period_help: str = "composite period",
) -> None:
    """``--year``, ``--start``, ``--end`` and (with ``period``) ``--period``."""
    g.add_argument("--year", type=int, help="one calendar year (sets --start/--end)")
    g.add_argument("--start", help=start_help)
    g.add_argument("--end", help="last date, YYYY-MM-DD (inclusive)")
    if period:
        g.add_argument("--period", choices=PERIOD_CHOICES, default=period_default, help=period_help)


def add_data(
    g: argparse._ActionsContainer,
    *,
    max_cloud_default: float | None = None,
    keep_snow: bool = True,
    collection_help: str = "STAC collection (default: the profile's)",
) -> None:
    """``--profile``, ``--stac-url``, ``--collection``, ``--max-cloud`` (and ``--keep-snow``)."""
    g.add_argument(
        "--profile",
        help="STAC profile: earth-search, planetary-computer, cdse-zarr, demo, custom (default: the "
        "region's, or earth-search; custom when only --stac-url is given)",
    )
    g.add_argument("--stac-url", help="any STAC API root URL (implies --profile custom)")
    g.add_argument("--collection", help=collection_help)
    g.add_argument(
        "--max-cloud",
        type=float,
        default=max_cloud_default,
        help="maximum scene cloud cover in %% (default 60)",
    )
    if keep_snow:
        g.add_argument(
            "--scl-mask",
            metavar="CLASSES",
            help="SCL classes masked as not clear: presets (default, clouds, none) and class "
            "numbers, comma-separated, e.g. 'clouds,2' (default: 'default' = 0,1,2,3,8,9,10,11; "
            "see the README's 'Cloud and shadow mask')",
        )
        g.add_argument(
            "--keep-snow",
            action="store_true",
            help="do not mask SCL snow/ice: removes class 11 from --scl-mask",
        )
