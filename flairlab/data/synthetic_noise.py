"""Coordinate-keyed hashing and noise for the synthetic sample (pure numpy).

Values depend only on a 64-bit key and integer / Lambert-93 coordinates, so adjacent patches of an
ROI join seamlessly: `subkey`, `hash_u01`, `lattice_hash`, `value_noise`, `fbm`, `worley`.
"""

from __future__ import annotations

import hashlib

import numpy as np

_U = np.uint64


def subkey(*parts: object) -> int:
    """A 64-bit key from any printable parts (stable across runs and platforms)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def hash_u01(key: int, *coords: np.ndarray | int) -> np.ndarray:
    """Uniform [0, 1) per integer coordinate tuple (splitmix64 mixing, vectorised)."""
    shape = np.broadcast_shapes(*(np.shape(c) for c in coords))
    h = np.full(shape or (1,), key, dtype=_U)
    with np.errstate(over="ignore"):
        for c in coords:
            ci = np.broadcast_to(np.asarray(c, dtype=np.int64), shape or (1,)).view(_U)
            h = h ^ (ci + _U(0x9E3779B97F4A7C15))
            h = (h ^ (h >> _U(30))) * _U(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> _U(27))) * _U(0x94D049BB133111EB)
            h = h ^ (h >> _U(31))
    out = (h >> _U(11)).astype(np.float64) * 2.0**-53
    return out.reshape(shape)


def lattice_hash(key: int, *idx: np.ndarray, extra: tuple[int, ...] = ()) -> np.ndarray:
    """Same values as `hash_u01(key, *idx, *extra)`, computed once per lattice node in range."""
    idx = tuple(np.asarray(a, dtype=np.int64) for a in idx)
    lo = [int(a.min()) for a in idx]
    sizes = [int(a.max()) - m + 1 for a, m in zip(idx, lo, strict=True)]
    if idx[0].size < 1024 or np.prod(sizes) > idx[0].size:
        return hash_u01(key, *idx, *extra)
    axes = [np.arange(m, m + n) for m, n in zip(lo, sizes, strict=True)]
    table = hash_u01(key, *np.meshgrid(*axes, indexing="ij"), *extra).ravel()
    return table[np.ravel_multi_index([a - m for a, m in zip(idx, lo, strict=True)], sizes)]


_CORNERS = ((0, 0), (1, 0), (0, 1), (1, 1))


def value_noise(x: np.ndarray, y: np.ndarray, scale: float, key: int) -> np.ndarray:
    """Smooth lattice noise in [0, 1] with feature size `scale` metres."""
    gx, gy = x / scale, y / scale
    fx, fy = np.floor(gx), np.floor(gy)
    tx, ty = (gx - fx).astype(np.float32), (gy - fy).astype(np.float32)
    ix, iy = fx.astype(np.int64), fy.astype(np.int64)
    sx, sy = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
    x0, y0 = int(ix.min()), int(iy.min())
    nx, ny = int(ix.max()) - x0 + 2, int(iy.max()) - y0 + 2
    if nx * ny <= 4 * ix.size:  # compact: hash each lattice node once, then gather
        ax, ay = np.meshgrid(np.arange(x0, x0 + nx), np.arange(y0, y0 + ny), indexing="ij")
        table = hash_u01(key, ax, ay).astype(np.float32).ravel()
        flat = (ix - x0) * ny + (iy - y0)
        a, b, c, d = table[flat], table[flat + ny], table[flat + 1], table[flat + ny + 1]
    else:
        a, b, c, d = (hash_u01(key, ix + i, iy + j).astype(np.float32) for i, j in _CORNERS)
    top = a + (b - a) * sx
    return top + (c + (d - c) * sx - top) * sy


def fbm(x: np.ndarray, y: np.ndarray, scales: list[float], key: int) -> np.ndarray:
    """Sum of value-noise octaves (weights ∝ scale), normalised to mean 0.5 in [0, 1]."""
    w = np.asarray(scales, dtype=float) / sum(scales)
    return sum(
        wi * value_noise(x, y, s, key + i) for i, (s, wi) in enumerate(zip(scales, w, strict=True))
    )


_NEIGH = np.array([(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)])


def worley(u: np.ndarray, v: np.ndarray, sx: float, sy: float, key: int) -> dict[str, np.ndarray]:
    """Voronoi parcels of a jittered (sx × sy m) lattice: nearest / second cell, edge distance."""
    nd = (9,) + (1,) * u.ndim
    ci = np.floor(u / sx).astype(np.int64)[None] + _NEIGH[:, 0].reshape(nd)
    cj = np.floor(v / sy).astype(np.int64)[None] + _NEIGH[:, 1].reshape(nd)
    su = (ci + 0.1 + 0.8 * lattice_hash(key, ci, cj, extra=(0,))) * sx
    sv = (cj + 0.1 + 0.8 * lattice_hash(key, ci, cj, extra=(1,))) * sy
    d = (u[None] - su) ** 2 + (v[None] - sv) ** 2

    def take(a: np.ndarray, k: np.ndarray) -> np.ndarray:
        return np.take_along_axis(a, k[None], 0)[0]

    k1 = d.argmin(0)
    d1 = take(d, k1)
    np.put_along_axis(d, k1[None], np.inf, 0)
    k2 = d.argmin(0)
    gap = np.hypot(take(su, k2) - take(su, k1), take(sv, k2) - take(sv, k1))
    edge = (take(d, k2) - d1) / (2 * np.maximum(gap, 1e-6))  # distance to the bisector (m)
    return {
        "i": take(ci, k1),
        "j": take(cj, k1),
        "i2": take(ci, k2),
        "j2": take(cj, k2),
        "su": take(su, k1),
        "sv": take(sv, k1),
        "edge": edge,
    }
