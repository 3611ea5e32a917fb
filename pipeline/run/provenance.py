"""Provenance for ``run.json``: package versions, host, timings; what makes a map reproducible."""

from __future__ import annotations

import platform
import socket
import sys
from importlib import metadata

PACKAGES = (
    "numpy",
    "torch",
    "open_clip_torch",
    "xarray",
    "dask",
    "distributed",
    "odc-stac",
    "odc-geo",
    "pystac-client",
    "rasterio",
    "zarr",
    "rioxarray",
    "dask-jobqueue",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the outputs."""
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        import rasterio  # noqa: PLC0415 (optional: reported when installed)

        out["gdal"] = rasterio.__gdal_version__
    except ImportError:
        pass
    return out


def host_info() -> dict[str, str]:
    info = {"hostname": socket.gethostname(), "platform": platform.platform()}
    try:
        import torch  # noqa: PLC0415 (optional: reported when installed)

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # provenance must never fail a run
        pass
    return info
