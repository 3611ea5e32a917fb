"""``run``: map a region to a land-cover map (Zarr + COGs + legend, quicklook, STAC item)."""

from __future__ import annotations

import argparse
import logging
import os

from pipeline import adapters
from pipeline.commands._options import add_data, add_when

NAME = "run"
#: The default of --backend where set (fp32, openvino-bf16, ...): a site that knows its nodes'
#: answer skips the per-machine measurement of --backend auto.
BACKEND_ENV = "S2LC_BACKEND"
HELP = "map a region: STAC search -> composites -> SenCLIP/TimeSenCLIP per tile -> Zarr + COGs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what and when")
    g.add_argument(
        "--region",
        help="a named region (see 'regions') or a vector file (or give only --bbox; or in --config)",
    )
    g.add_argument(
        "--bbox",
        nargs=4,
        type=float,
        metavar=("W", "S", "E", "N"),
        help="clip the region to this lon/lat box; alone, the box is the region",
    )
    add_when(g, period_help="composite period (default: the model's own, e.g. monthly for "
             "timesenclip)")  # fmt: skip
    g.add_argument(
        "--years",
        help="yearly maps on one grid: a range (2019-2024) or a list (2021,2023); each year in "
        "OUT/<year>/ (skipped when done), all stacked in OUT/map.zarr on a time dimension",
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", choices=adapters.names(), help=f"the model (default {adapters.DEFAULT})"
    )
    g.add_argument("--checkpoint", help="weights: a file, or a cached name (see 'weights list')")
    g.add_argument(
        "--untrained",
        action="store_true",
        help="random weights (offline demo only; every output says so)",
    )
    g.add_argument("--clip-checkpoint", help="CLIP/SenCLIP weights for TimeSenCLIP's text encoder")
    g.add_argument("--arch", default=None, choices=("ViT-B-32", "RN50"), help="SenCLIP backbone")
    g.add_argument(
        "--legend",
        help="legend name (see 'legends') or a YAML/JSON/NPZ file (default: demo for the demo "
        "region, else lucas-lc8; with --head only its colours, default the head's legend)",
    )
    g.add_argument("--style", choices=("aerial", "ground", "generic"), help="prompt style")
    g.add_argument("--head", help="a few-shot head from 'probe' instead of zero-shot prompts")
    g.add_argument(
        "--calibration",
        choices=("reference", "none"),
        help="class-mean calibration on a fixed reference sample or none (default: the model's "
        "own, e.g. reference for senclip zero-shot, none with a head)",
    )
    g.add_argument("--top-k", type=int, help="probabilities kept per pixel (default 3)")
    g.add_argument("--window", type=int, help="SenCLIP chip size in pixels (default 64)")
    g.add_argument("--stride", type=int, help="SenCLIP chip stride in pixels (default 32)")
    g.add_argument("--seed", type=int, help="seed for --untrained weights and sampling")
    from model.backend_names import BACKENDS

    g.add_argument(
        "--backend",
        "--precision",
        dest="precision",
        choices=("auto", *BACKENDS),
        help="CPU inference backend (default: $S2LC_BACKEND if set, else auto: the fastest of "
        "these on this machine that agrees with fp32 on >= 99.5 %% of a fixed sample covering "
        "the legend, and its batch; recorded in run.json). --precision is the old name",
    )
    g = p.add_argument_group("data")
    add_data(g)
    g = p.add_argument_group("execution")
    g.add_argument("--tile-size", type=int, help="tile size in pixels (default 256)")
    g.add_argument(
        "--cluster", help="local (default), slurm, or a scheduler address tcp://HOST:PORT"
    )
    g.add_argument(
        "--cluster-config", help="Slurm profile YAML (default pipeline/run/profiles/slurm.yaml)"
    )
    g.add_argument("--workers", type=int, help="local worker processes, or Slurm jobs")
    g.add_argument(
        "--allow-large",
        action="store_true",
        help="allow a local run over a large region (hours of CPU)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument(
        "--retry-failed",
        action="store_true",
        help="redo only the tiles that failed before, including the dead-letter list",
    )
    g.add_argument(
        "--max-attempts",
        type=int,
        help="attempts over all runs before a failing tile is dead-lettered (default 6: two "
        "runs with 2 retries each)",
    )
    g.add_argument(
        "--max-unreadable",
        help="permanently unreadable scenes (HTTP 404/410, corrupt files) a run tolerates: they "
        "are dropped and the map made from the others; the run fails when they exceed every "
        "limit given: a share (5%%), a count (2) or both (default 5%%,2)",
    )
    g = p.add_argument_group("outputs")
    g.add_argument("--out", help="output folder (default outputs/<region>/<period>/<model>/)")
    g.add_argument("--save-composite", action="store_true", help="add the composites to map.zarr")
    g.add_argument(
        "--save-embeddings",
        action="store_true",
        help="store the compact embedding field (map.zarr, field.tif) for 'classify --field' "
        "and 'query --field'",
    )
    g.add_argument(
        "--field-dims",
        type=int,
        help="components of the embedding field (default 62: 64 bytes/pixel)",
    )
    g.add_argument(
        "--ood",
        action="store_true",
        help="add the out-of-distribution layer ood.tif (k-NN distance to the region's reference "
        "sample over its 99th percentile: > 1 is flagged)",
    )
    g.add_argument(
        "--majority",
        type=int,
        metavar="RADIUS_PX",
        help="post-process: majority filter over a (2R+1)^2 window (ties: lower class index); "
        "raw classes in classes_raw.tif, changed pixels in postprocessed.tif (default off)",
    )
    g.add_argument(
        "--mmu",
        type=int,
        metavar="PX",
        help="post-process: minimum mapping unit, regions (8-connected) under PX pixels take the "
        "class of their largest neighbour, as gdal_sieve does (default off)",
    )
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument(
        "--config",
        help="YAML mapping with any of the options above, spelt as on the command line without "
        "'--' (e.g. region: freising, year: 2023, bbox: [11.6, 48.3, 11.8, 48.45]); CLI options win",
    )


#: RunConfig keys a config file may set that are not spelt as a CLI option (``mask_snow``,
#: ``progress``, ``retries``: the CLI spells the first two ``--keep-snow``, ``--no-progress``).
_CONFIG_ONLY = {"mask_snow", "progress", "retries"}


def _parser_actions() -> dict[str, argparse.Action]:
    """The ``run`` options by destination (a fresh parser: this command's single source of truth)."""
    p = argparse.ArgumentParser(add_help=False)
    add_arguments(p)
    return {a.dest: a for a in p._actions if a.dest not in ("config", "help")}


def _config_value(action: argparse.Action, value: object, where: str):
    """A YAML value checked like the CLI checks it: type, number of values, choices."""
    from pipeline.base.errors import UserError

    if action.nargs == 0:  # store_true flags
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    values = value if action.nargs else [value]
    if action.nargs:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list of {action.nargs} values, got {value!r}")
        if isinstance(action.nargs, int) and len(value) != action.nargs:
            raise UserError(f"{where}: expected {action.nargs} values, got {len(value)}")
    out = []
    for v in values:
        if action.type is not None:
            try:
                v = action.type(v)
            except (TypeError, ValueError):
                raise UserError(f"{where}: invalid value {v!r}") from None
        elif not isinstance(v, str):
            v = str(v)
        if action.choices is not None and v not in action.choices:
            raise UserError(f"{where}: {v!r} is not one of {', '.join(map(str, action.choices))}")
        out.append(v)
    return out if action.nargs else out[0]


def apply_config(args: argparse.Namespace, doc: dict) -> tuple[argparse.Namespace, dict]:
    """Fill the options not given on the command line from a ``--config`` mapping.

    Keys are the CLI option names without ``--`` (``-`` or ``_``), or the RunConfig-only fields
    ``mask_snow``, ``progress``, ``retries`` (returned separately). An unknown key is a one-line
    UserError naming the nearest valid key.
    """
    import difflib

    from pipeline.base.errors import UserError

    actions = _parser_actions()
    out = argparse.Namespace(**vars(args))
    extra: dict = {}
    valid = sorted({k.replace("_", "-") for k in actions} | _CONFIG_ONLY)
    for raw, value in doc.items():
        key = str(raw).lstrip("-").replace("-", "_")
        where = f"{args.config}: {raw}"
        if key in _CONFIG_ONLY:
            extra[key] = value
            continue
        action = actions.get(key)
        if action is None:
            near = difflib.get_close_matches(str(raw).lstrip("-").replace("_", "-"), valid, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(valid)}"
            raise UserError(f"{args.config}: unknown key {raw!r}{hint}")
        if value is None:
            continue
        if getattr(out, key, None) in (None, False, action.default):
            setattr(out, key, _config_value(action, value, where))
    return out, extra


def resolve(args: argparse.Namespace):
    """Build the RunConfig from defaults, the optional YAML file and the CLI options."""
    from aoi import load_region
    from pipeline.base.config import load_yaml, merged, period_dates
    from pipeline.base.errors import UserError
    from pipeline.run.config import FLAT_KEYS, RunConfig
    from pipeline.stac.profiles import stac_profile

    base: dict = {}
    if args.config:
        args, base = apply_config(args, load_yaml(args.config))
    region_name = args.region
    if not region_name and args.bbox:  # --bbox alone defines the region
        from aoi import BBOX_PREFIX, bbox_number

        # Full precision: %g kept 6 significant digits (up to 5.5 m in latitude, 55 m in longitude)
        region_name = BBOX_PREFIX + ",".join(bbox_number(v) for v in args.bbox)
    if not region_name:
        raise UserError(
            "give the region: --region NAME|FILE (see 'python -m pipeline regions'), "
            "or --bbox W S E N"
        )
    region = load_region(region_name)
    model = args.model or adapters.DEFAULT
    adapter = adapters.get(model)
    start, end = period_dates(args.year, args.start, args.end, (region.start, region.end))
    if args.year is None:
        if not (args.start or args.end) and not str(region.source).endswith((".yaml", ".yml")):
            logging.getLogger(__name__).info(
                "no --year or --start/--end: mapping %s..%s, the last full year (a vector file "
                "has no period of its own); pass --year to choose",
                start,
                end,
            )
    profile = stac_profile(args.profile, args.stac_url, region.stac)
    head = args.head
    defaults = {
        "period": adapter.default_period,
        "calibration": adapter.default_calibration(head),
        # a head brings its classes (and the legend it was fitted with, for the colours)
        "legend": None if head else ("demo" if region.stac == "demo" else "lucas-lc8"),
    }
    if os.environ.get(BACKEND_ENV):  # a site's known answer: no measurement per machine and model
        defaults["precision"] = os.environ[BACKEND_ENV]
    from pipeline.grid.cells import GRIDDED_TILE_SIZE, is_gridded

    if is_gridded(region.crs):  # tiles must divide the 100 km output cells
        defaults["tile_size"] = GRIDDED_TILE_SIZE
    # the options spelt like a RunConfig key; an unset flag (False) leaves the key to the YAML
    # file or the default, like an unset option (None)
    cli = {k: (None if v is False else v) for k, v in vars(args).items() if k in FLAT_KEYS}
    cli.update(
        region=region_name,
        start=start,
        end=end,
        model=model,
        profile=profile,
        mask_snow=False if args.keep_snow else None,
        progress=False if args.no_progress else None,
    )
    return RunConfig.from_flat(merged(merged(defaults, base), cli), where="run")


#: Errors of the output filesystem, reported as one line (nothing is published on them).
_WRITE_ERRNOS = {"ENOSPC", "EFBIG", "EDQUOT", "EROFS", "EACCES", "EIO", "EPERM"}


def run(args: argparse.Namespace) -> int:
    import errno

    from pipeline.base.errors import UserError
    from pipeline.run.driver import execute

    years = None
    if args.config and not getattr(args, "years", None):  # --years from the YAML file
        from pipeline.base.config import load_yaml

        doc = load_yaml(args.config) or {}
        value = doc.get("years")
        if value is not None:
            args.years = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    if getattr(args, "years", None):
        from pipeline.run.years import execute_years, parse_years

        if args.year or args.start or args.end:
            raise UserError("--years sets the dates: leave out --year, --start and --end")
        years = parse_years(args.years)
        args.year = years[0]
    cfg = resolve(args)
    try:
        return execute(cfg) if years is None else execute_years(cfg, years)
    except OSError as exc:
        if errno.errorcode.get(exc.errno or 0) not in _WRITE_ERRNOS:
            raise
        where = exc.filename or cfg.execution.out or "the output folder"
        raise UserError(
            f"writing {where} failed: {exc.strerror}; nothing was published, finished tiles are "
            "kept: free space (or fix the folder) and rerun"
        ) from None
