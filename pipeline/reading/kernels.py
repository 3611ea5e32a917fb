"""Compiled per-pixel kernels of the native-grid read path (pure computation, no I/O).

* :func:`upsample2x_bilinear` / :func:`upsample2x_nearest`: a 20 m raster onto the 10 m lattice
  that shares its origin, exactly as GDAL's warper samples it (pixel-centre convention: 10 m pixel
  ``g`` sits at 20 m pixel coordinate ``g / 2 - 0.25``, so bilinear weights are always 0.75/0.25).
  Like GDAL's bilinear kernel with a source nodata value, nodata (and off-raster) neighbours get
  no weight and the remaining weights are renormalised; the result is rounded half up to uint16
  (GDAL's ``GWKRoundValueT``). A pixel whose valid weights sum to less than 0.5 (its nearest
  source pixel is nodata) is nodata (0), as in GDAL 3.10 (measured: ``tests/pipeline/reading/test_reading.py``).
* :func:`reflectance`: scaling, harmonisation and masking in one pass over the integer DN:
  ``DN * scale + offset`` in float32 (the same two float32 operations, in the same order, as
  :func:`pipeline.reading.cube.load_cube`), NaN where the DN is 0 or the SCL class is masked.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _axis_taps(g: int) -> tuple[int, float]:
    """(lower 20 m index, weight of the upper neighbour) of global 10 m index ``g``."""
    if g % 2 == 0:
        return g // 2 - 1, 0.75
    return g // 2, 0.25


@numba.njit(cache=True, nogil=True)
def upsample2x_bilinear(src, src_row0, src_col0, g_row0, g_col0, out):  # pragma: no cover - jit
    """Bilinear 2x upsampling of uint16 DN with nodata 0 into ``out`` (uint16, (ny, nx)).

    Args:
        src: (h, w) uint16 20 m DN; ``src[0, 0]`` is 20 m raster pixel (``src_row0``, ``src_col0``)
            of the asset. Pixels outside ``src`` count as nodata.
        g_row0, g_col0: the 10 m raster pixel of ``out[0, 0]``, counted from the 20 m raster's
            origin (both grids share that origin).
        out: (ny, nx) uint16, written in place.
    """
    h, w = src.shape
    ny, nx = out.shape
    for i in range(ny):
        y0, fy = _axis_taps(g_row0 + i)
        r0 = y0 - src_row0
        for j in range(nx):
            x0, fx = _axis_taps(g_col0 + j)
            c0 = x0 - src_col0
            acc = 0.0
            wsum = 0.0
            for dy in range(2):
                r = r0 + dy
                if r < 0 or r >= h:
                    continue
                wy = fy if dy == 1 else 1.0 - fy
                for dx in range(2):
                    c = c0 + dx
                    if c < 0 or c >= w:
                        continue
                    v = src[r, c]
                    if v == 0:
                        continue
                    wgt = wy * (fx if dx == 1 else 1.0 - fx)
                    acc += wgt * v
                    wsum += wgt
            if wsum >= 0.5:
                out[i, j] = np.uint16(np.floor(acc / wsum + 0.5))
            else:
                out[i, j] = 0


@numba.njit(cache=True, nogil=True)
def upsample2x_nearest(src, src_row0, src_col0, g_row0, g_col0, out):  # pragma: no cover - jit
    """Nearest-neighbour 2x upsampling (SCL); same arguments as :func:`upsample2x_bilinear`."""
    h, w = src.shape
    ny, nx = out.shape
    # Output columns [j0, j1) fall inside ``src``; the others are nodata.
    j0 = min(max(2 * src_col0 - g_col0, 0), nx)
    j1 = max(min(2 * (src_col0 + w) - g_col0, nx), j0)
    prev = -1
    for i in range(ny):
        r = (g_row0 + i) // 2 - src_row0
        row = out[i]
        if r < 0 or r >= h:
            row[:] = 0
        elif i > 0 and r == prev:
            row[:] = out[i - 1]  # the 20 m row under two 10 m rows: copied, not recomputed
        else:
            row[:j0] = 0
            row[j1:] = 0
            s = src[r]
            for j in range(j0, j1):
                row[j] = s[(g_col0 + j) // 2 - src_col0]
        prev = r


@numba.njit(cache=True, nogil=True)
def fill_nodata(dst, src):  # pragma: no cover - jit
    """Fuse ``src`` into ``dst`` where ``dst`` is nodata (0): the first valid scene wins."""
    a = dst.ravel()
    b = src.ravel()
    for k in range(a.size):
        if a[k] == 0:
            a[k] = b[k]


@numba.njit(cache=True, nogil=True)
def reflectance(dn, scl, scale, offset, masked, out):  # pragma: no cover - jit
    """DN -> float32 reflectance, NaN where DN is 0 or the SCL class is masked.

    Args:
        dn: (T, B, ny, nx) uint16 digital numbers.
        scl: (T, ny, nx) uint8 SCL classes.
        scale, offset: (T,) float32 per time step (:class:`pipeline.stac.bands.Harmonisation`).
        masked: (256,) bool, True for the SCL classes that become NaN.
        out: (T, B, ny, nx) float32, written in place.
    """
    nt, nb, ny, nx = dn.shape
    nan = np.float32(np.nan)
    bad = np.empty(nx, np.bool_)
    for t in range(nt):
        s = scale[t]
        o = offset[t]
        for i in range(ny):
            # The SCL lookup once per pixel, then each band over contiguous x (branch-free).
            for j in range(nx):
                bad[j] = masked[scl[t, i, j]]
            for b in range(nb):
                src = dn[t, b, i]
                dst = out[t, b, i]
                for j in range(nx):
                    v = src[j]
                    r = np.float32(v) * s + o
                    dst[j] = nan if ((v == 0) | bad[j]) else r  # `|`: no branch, vectorises
