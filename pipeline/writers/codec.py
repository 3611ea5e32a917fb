"""The compact embedding field's encoding: a linear projection, then int8 with a per-pixel scale.

Pure numpy, no I/O. A field stores, per pixel, ``d`` int8 codes and one float16 scale, so a pixel
costs ``d + 2`` bytes instead of ``2 * D`` (float16) or ``4 * D`` (float32) for a D-dimensional
embedding. The recipe (:func:`fit_codec`, :meth:`FieldCodec.encode`, :meth:`FieldCodec.decode`):

1. **Projection** (optional): ``z = B^T (e - mu)`` with ``mu`` (D,) the mean and ``B`` (D, d) the
   first ``d`` principal axes (orthonormal columns) of a reference sample of the model's
   embeddings (principal component analysis: eigenvectors of the centred sample's scatter matrix;
   one basis per model checkpoint, :mod:`pipeline.run.basis`). ``d = D`` keeps every
   dimension (``B`` = identity, ``mu`` = 0).
2. **Quantisation**: ``s = max_i |z_i| / 127`` rounded to float16, ``q = round(z / s)`` clipped to
   [-127, 127] as int8 (symmetric absmax quantisation, one scale per pixel).
3. **Decoding**: ``e' = normalise(mu + B (q * s))``: the embedding models' outputs are
   L2-normalised, so only the direction matters. Nodata pixels have ``s = NaN`` and decode to NaN.

**Cosines in the code space** (:meth:`FieldCodec.project`, :meth:`FieldCodec.cosines`): for a
unit vector ``t`` (a class or text embedding) and a pixel ``z = q s``, because ``B`` has
orthonormal columns,

    cos(t, e') = (t.mu + (B^T t).z) / sqrt(|mu|^2 + 2 (B^T mu).z + |z|^2)

so ``K`` vectors are projected once into the ``d`` components (``B^T t``, plus ``t.mu``, ``B^T mu``
and ``|mu|^2``), and each pixel costs one ``d x (K + 1)`` product of its codes and ``|q|^2``
instead of a ``D``-dimensional decode and normalisation. The result equals
``decode(codes, scale) @ t`` up to float32 rounding (about 1e-6).

The error bound of step 2 is ``|z_i - q_i s| <= s / 2`` per component; step 1 drops the variance
outside the ``d`` leading axes (reported by :attr:`FieldCodec.explained_variance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Name and version of the encoding, stored in the field's metadata.
ENCODING = "s2lc-field-pca-int8"
ENCODING_VERSION = 1
#: int8 code range used (symmetric; -128 is never written).
QMAX = 127


@dataclass(frozen=True)
class FieldCodec:
    """A fitted encoding: ``mean`` (D,) and ``basis`` (D, d) float32 (orthonormal columns)."""

    mean: np.ndarray
    basis: np.ndarray
    explained_variance: float = 1.0
    """Share of the reference sample's variance the ``d`` axes keep (1.0 without projection)."""

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float32)
        basis = np.asarray(self.basis, dtype=np.float32)
        if basis.ndim != 2 or mean.shape != (basis.shape[0],) or basis.shape[1] > basis.shape[0]:
            raise ValueError(f"mean {mean.shape} and basis {basis.shape} do not form a codec")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "basis", basis)

    @property
    def embed_dim(self) -> int:
        """D: the model's embedding size."""
        return int(self.basis.shape[0])

    @property
    def dims(self) -> int:
        """d: int8 codes per pixel."""
        return int(self.basis.shape[1])

    @property
    def bytes_per_pixel(self) -> int:
        """Stored bytes per pixel before compression: d int8 codes + a float16 scale."""
        return self.dims + 2

    def encode(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) embeddings -> codes (N, d) int8 and scales (N,) float16.

        Rows with a non-finite value get code 0 and scale NaN (nodata).
        """
        e = np.asarray(emb, dtype=np.float32)
        if e.ndim != 2 or e.shape[1] != self.embed_dim:
            raise ValueError(f"expected (N, {self.embed_dim}) embeddings, got {e.shape}")
        ok = np.isfinite(e).all(axis=1)
        z = (np.where(ok[:, None], e, 0.0) - self.mean) @ self.basis
        amax = np.abs(z).max(axis=1) if z.size else np.zeros(len(z), np.float32)
        scale = (amax / QMAX).astype(np.float16)
        s = scale.astype(np.float32)
        s = np.where(s > 0, s, np.float32(1.0))  # an all-zero vector: codes 0, any scale
        codes = np.clip(np.rint(z / s[:, None]), -QMAX, QMAX).astype(np.int8)
        scale = np.where(ok, scale, np.float16(np.nan)).astype(np.float16)
        codes[~ok] = 0
        return codes, scale

    def decode(self, codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """codes (N, d) int8 and scales (N,) -> (N, D) float32 L2-normalised; NaN where nodata."""
        q = np.asarray(codes)
        s = np.asarray(scale, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dims or s.shape != (q.shape[0],):
            raise ValueError(
                f"codes {q.shape} and scales {s.shape} do not fit a {self.dims}-d field"
            )
        z = q.astype(np.float32) * np.where(np.isfinite(s), s, 0.0)[:, None]
        e = self.mean + z @ self.basis.T
        norm = np.linalg.norm(e, axis=1, keepdims=True)
        e /= np.maximum(norm, np.float32(1e-12))
        e[~np.isfinite(s)] = np.nan
        return e

    def project(self, vectors: np.ndarray) -> ProjectedVectors:
        """Project (K, D) vectors (class or text embeddings) once into the component space.

        Each row is L2-normalised first (as :func:`model.zeroshot.cosine` does).

        Raises:
            ValueError: not a (K, D) array of this codec's D, or a non-finite value.
        """
        t = np.asarray(vectors, dtype=np.float64)
        if t.ndim != 2 or t.shape[1] != self.embed_dim:
            raise ValueError(f"expected (K, {self.embed_dim}) vectors, got {t.shape}")
        if not np.isfinite(t).all():
            raise ValueError("the vectors to project have non-finite values")
        t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
        b, mu = self.basis.astype(np.float64), self.mean.astype(np.float64)
        proj = np.concatenate([b.T @ t.T, (b.T @ mu)[:, None]], axis=1)
        return ProjectedVectors(
            proj=proj.astype(np.float32),
            t_mean=(t @ mu).astype(np.float32),
            mean_sq=float(mu @ mu),
        )

    def cosines(
        self, codes: np.ndarray, scale: np.ndarray, vectors: ProjectedVectors
    ) -> np.ndarray:
        """Cosine of each pixel's decoded embedding with each projected vector, from the codes.

        Args:
            codes: (N, d) int8 (a transposed view of a stored (d, N) block costs no copy).
            scale: (N,) float16/float32 scales; NaN = nodata.
            vectors: :meth:`project` of the K vectors.

        Returns:
            (N, K) float32, equal to ``decode(codes, scale) @ normalise(t).T`` to ~1e-6, without
            the (N, D) decode; NaN rows where nodata.

        Raises:
            ValueError: shapes that do not fit this codec.
        """
        q = np.asarray(codes)
        s = np.asarray(scale)
        if q.ndim != 2 or q.shape[1] != self.dims or s.shape != (q.shape[0],):
            raise ValueError(
                f"codes {q.shape} and scales {s.shape} do not fit a {self.dims}-d field"
            )
        if vectors.proj.shape[0] != self.dims:
            raise ValueError(f"vectors projected to {vectors.proj.shape[0]}-d, not {self.dims}")
        return _cosines_from_codes(q.T, s, vectors)

    @property
    def sha256(self) -> str:
        """SHA-256 (hex) of the decoding recipe's content: float32 mean then basis (C order)."""
        import hashlib

        h = hashlib.sha256(np.ascontiguousarray(self.mean, np.float32).tobytes())
        h.update(np.ascontiguousarray(self.basis, np.float32).tobytes())
        return h.hexdigest()

    def roundtrip(self, emb: np.ndarray) -> np.ndarray:
        """``decode(encode(emb))``: what a field keeps of ``emb``."""
        return self.decode(*self.encode(emb))


@dataclass(frozen=True)
class ProjectedVectors:
    """K unit vectors in a codec's component space (made by :meth:`FieldCodec.project`).

    Attributes:
        proj: (d, K + 1) float32: ``B^T t_k`` per column, then ``B^T mu`` as the last column.
        t_mean: (K,) float32: ``t_k . mu``.
        mean_sq: ``|mu|^2`` (float).
    """

    proj: np.ndarray
    t_mean: np.ndarray
    mean_sq: float

    @property
    def count(self) -> int:
        """K: how many vectors."""
        return int(self.t_mean.shape[0])


def _cosines_from_codes(codes_t: np.ndarray, scale: np.ndarray, pv: ProjectedVectors) -> np.ndarray:
    """codes_t (d, N) int8, scale (N,) -> (N, K) float32 cosines; NaN where scale is NaN."""
    q = codes_t.astype(np.float32)
    g = pv.proj.T @ q  # (K + 1, N): one float32 GEMM
    qq = np.einsum("dn,dn->n", q, q, dtype=np.float64)
    s = np.asarray(scale, dtype=np.float32)
    ok = np.isfinite(s)
    s0 = np.where(ok, s, np.float32(0.0))
    k = pv.count
    s64 = s0.astype(np.float64)
    den2 = pv.mean_sq + 2.0 * s64 * g[k].astype(np.float64) + s64 * s64 * qq
    inv = (1.0 / np.maximum(np.sqrt(np.maximum(den2, 0.0)), 1e-12)).astype(np.float32)
    cos = (g[:k] * s0 + pv.t_mean[:, None]) * inv  # (K, N)
    cos[:, ~ok] = np.nan
    return cos.T


def identity_codec(embed_dim: int) -> FieldCodec:
    """No projection: int8 codes of all D dimensions (``D + 2`` bytes per pixel)."""
    return FieldCodec(np.zeros(embed_dim, np.float32), np.eye(embed_dim, dtype=np.float32))


def fit_codec(sample: np.ndarray, dims: int) -> FieldCodec:
    """Fit the projection on a reference sample (N, D) of embeddings; ``dims >= D`` keeps all.

    Principal axes from the eigendecomposition of the centred sample's scatter matrix (float64);
    their signs are fixed (largest loading positive) so that the same sample always gives the
    same basis. With fewer samples than ``dims``, the trailing axes span the rest of the space.

    Raises:
        ValueError: an empty sample, non-finite values, or ``dims < 1``.
    """
    x = np.asarray(sample, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"the field projection needs a non-empty (N, D) sample, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("the field projection sample has non-finite values")
    if dims < 1:
        raise ValueError(f"field dimensions must be >= 1, got {dims}")
    n, d_full = x.shape
    if dims >= d_full:
        return identity_codec(d_full)
    mean = x.mean(axis=0)
    xc = x - mean
    # Principal axes = eigenvectors of the (D, D) scatter matrix, largest eigenvalues first
    # (cheaper than the SVD of the (N, D) sample for N >> D; the same axes).
    var, vecs = np.linalg.eigh(xc.T @ xc)
    order = np.argsort(var)[::-1]
    var, basis = np.clip(var[order], 0.0, None), vecs[:, order[:dims]]
    signs = np.sign(basis[np.abs(basis).argmax(axis=0), np.arange(dims)])
    basis = basis * np.where(signs == 0, 1.0, signs)
    explained = float(var[:dims].sum() / var.sum()) if var.sum() > 0 else 1.0
    return FieldCodec(mean.astype(np.float32), basis.astype(np.float32), explained)
