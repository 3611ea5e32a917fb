"""Ground-photo embeddings: the published LUCAS format, matching to points, pooling over directions.

The SenCLIP authors publish frozen CLIP ViT-B/32 embeddings of the LUCAS 2018 ground photos as a
``torch.save``'d dict ``{"<NUTS0>_<pointid><direction>": tensor(512)}`` with direction one of
N, E, S, W (REFERENCE_MODELS.md 1.4), e.g. ``"DE_45061526N"``. The vectors are probably stored
unnormalised; every photo embedding is L2-normalised here before pooling.

:class:`GroundEmbeddings` holds them as one (P, K=4, D) array plus a (P, K) availability mask, with
the point keys ``"<NUTS0>_<pointid>"``. Points are matched by that key, or by the bare point id
(LUCAS point ids are unique across countries). Pooling: ``avg`` (mean of the available
directions, then L2-normalised; the TimeSenCLIP v3 choice) or ``attention`` (a learned score per
photo, softmax over the available directions: SenCLIP's ``attpool_perimage``), see
:class:`DirectionPool`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.base.errors import UserError

_log = logging.getLogger(__name__)

DIRECTIONS = ("N", "E", "S", "W")
_KEY = re.compile(r"^(?P<point>.+?)(?P<dir>[NESW])$")


@dataclass(frozen=True)
class GroundEmbeddings:
    """Per-point stacks of directional photo embeddings."""

    keys: tuple[str, ...]
    """``"<NUTS0>_<pointid>"`` (or the bare point id when the file has no country prefix)."""
    vectors: np.ndarray
    """(P, 4, D) float32, L2-normalised; zeros where a direction is missing."""
    mask: np.ndarray
    """(P, 4) bool: which directions exist (order N, E, S, W)."""

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[2])

    def __len__(self) -> int:
        return len(self.keys)

    def index(self) -> dict[str, int]:
        """Lookup from point key *and* bare point id to row (bare ids only when unambiguous)."""
        out: dict[str, int] = {}
        bare: dict[str, list[int]] = {}
        for i, k in enumerate(self.keys):
            out[k] = i
            if "_" in k:
                bare.setdefault(k.split("_", 1)[1], []).append(i)
        for pid, rows in bare.items():
            if len(rows) == 1 and pid not in out:
                out[pid] = rows[0]
        return out

    def match(self, point_ids: Sequence[str]) -> np.ndarray:
        """Row of every point id in this table, -1 where there is none."""
        idx = self.index()
        return np.array([idx.get(_norm_id(p), -1) for p in point_ids], dtype=np.int64)

    def pooled_average(self) -> np.ndarray:
        """(P, D) mean over available directions, L2-normalised."""
        return average_pool(self.vectors, self.mask)


def _norm_id(value: object) -> str:
    s = str(value).strip()
    if re.fullmatch(r"-?\d+\.0+", s):  # ids read as floats from CSV
        s = s.split(".")[0]
    return s


def parse_key(key: str) -> tuple[str, str]:
    """``"DE_45061526N"`` -> ``("DE_45061526", "N")``; other keys are a ValueError."""
    m = _KEY.match(str(key).strip())
    if not m:
        raise ValueError(f"not a ground-embedding key (<NUTS0>_<pointid><N|E|S|W>): {key!r}")
    return m["point"], m["dir"]


def from_mapping(
    data: Mapping[str, object], *, where: str = "ground embeddings"
) -> GroundEmbeddings:
    """Build the table from the published ``{key: vector}`` mapping."""
    rows: dict[str, dict[str, np.ndarray]] = {}
    dim = None
    bad = 0
    for key, value in data.items():
        try:
            point, direction = parse_key(str(key))
        except ValueError:
            bad += 1
            continue
        v = (
            value.detach().float().cpu().numpy()
            if isinstance(value, torch.Tensor)
            else np.asarray(value, np.float32)
        )
        v = v.reshape(-1)
        if dim is None:
            dim = v.shape[0]
        elif v.shape[0] != dim:
            raise UserError(f"{where}: {key!r} has {v.shape[0]} values, others have {dim}")
        rows.setdefault(_norm_id(point), {})[direction] = v
    if not rows:
        raise UserError(
            f"{where}: no keys of the form <NUTS0>_<pointid><N|E|S|W> (e.g. 'DE_45061526N')"
        )
    if bad:
        _log.warning("%s: skipped %d keys not of the form <NUTS0>_<pointid><dir>", where, bad)
    keys = tuple(sorted(rows))
    vectors = np.zeros((len(keys), len(DIRECTIONS), dim), np.float32)
    mask = np.zeros((len(keys), len(DIRECTIONS)), bool)
    for i, k in enumerate(keys):
        for d, direction in enumerate(DIRECTIONS):
            if direction in rows[k]:
                vectors[i, d] = rows[k][direction]
                mask[i, d] = True
    norms = np.linalg.norm(vectors, axis=2, keepdims=True)
    vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    mask &= norms[..., 0] > 0
    return GroundEmbeddings(keys=keys, vectors=vectors, mask=mask)


def load_ground_embeddings(path: str | Path) -> GroundEmbeddings:
    """Read the published ``.pt`` dict (weights-only unpickling) or an ``.npz`` with ``keys`` and
    ``vectors`` arrays of the same keys."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"ground-embedding file not found: {p}")
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                data = dict(zip([str(k) for k in z["keys"]], z["vectors"]))
        except (KeyError, ValueError, OSError) as exc:
            raise UserError(f"{p}: expected an .npz with 'keys' and 'vectors' ({exc})") from None
    else:
        try:
            data = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure: not the published format
            raise UserError(
                f"{p}: not a torch-saved embedding dict ({str(exc).splitlines()[0]})"
            ) from None
        if not isinstance(data, Mapping):
            raise UserError(f"{p}: expected a dict of key -> tensor, found {type(data).__name__}")
    table = from_mapping(data, where=str(p))
    _log.info(
        "%s: %d points, %d photos, %d-d", p.name, len(table), int(table.mask.sum()), table.dim
    )
    return table


def save_ground_embeddings(
    path: str | Path,
    point_keys: Sequence[str],
    vectors: np.ndarray,
    directions: Sequence[str] = DIRECTIONS,
) -> Path:
    """Write (P, K, D) vectors in the published dict format (tests, synthetic experiments)."""
    vectors = np.asarray(vectors, np.float32)
    data = {
        f"{k}{d}": torch.from_numpy(vectors[i, j].copy())
        for i, k in enumerate(point_keys)
        for j, d in enumerate(directions)
    }
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, p)
    return p


def average_pool(vectors: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor):
    """Mean over the available directions of (…, K, D) vectors, L2-normalised (numpy or torch)."""
    if isinstance(vectors, torch.Tensor):
        m = torch.as_tensor(mask, device=vectors.device).to(vectors.dtype).unsqueeze(-1)
        s = (vectors * m).sum(-2) / m.sum(-2).clamp(min=1)
        return F.normalize(s, dim=-1)
    m = np.asarray(mask, np.float32)[..., None]
    s = (vectors * m).sum(-2) / np.maximum(m.sum(-2), 1)
    n = np.linalg.norm(s, axis=-1, keepdims=True)
    return np.divide(s, n, out=np.zeros_like(s), where=n > 0)


class DirectionPool(nn.Module):
    """Pool (B, K, D) directional embeddings into (B, D) unit vectors.

    ``avg``: the masked mean (no parameters). ``attention``: ``w = softmax_k(a^T g_k)`` over the
    available photos with a learned ``a`` (``Linear(D, 1, bias=False)``, SenCLIP's
    ``attpool_perimage``, aggregated by sum), zero-initialised so training starts from the average.
    """

    def __init__(self, dim: int, mode: str = "avg") -> None:
        super().__init__()
        if mode not in ("avg", "attention"):
            raise UserError(f"pooling must be 'avg' or 'attention', got {mode!r}")
        self.mode = mode
        self.score = nn.Linear(dim, 1, bias=False) if mode == "attention" else None
        if self.score is not None:
            nn.init.zeros_(self.score.weight)

    def forward(self, vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.score is None:
            return average_pool(vectors, mask)
        logits = self.score(vectors).squeeze(-1).float()
        logits = logits.masked_fill(~mask.bool(), float("-inf"))
        w = torch.softmax(logits, dim=-1).nan_to_num(0.0).to(vectors.dtype)
        return F.normalize((w.unsqueeze(-1) * vectors).sum(-2), dim=-1)
