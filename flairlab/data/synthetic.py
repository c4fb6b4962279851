"""Procedural FLAIR-HUB-like scenes: land cover, spectra, phenology, SAR, elevation and history.

Pure numpy. Every value is a function of (seed, `DOMAIN_ROI`, absolute Lambert-93 coordinates) or
of (seed, `DOMAIN_ROI`, row, col), so adjacent patches of an ROI are continuous across their shared
edge and a patch is bit-identical whatever other patches are generated with it. This module holds
the scene layout (ROI parameters, land cover) and `render_patch`; the tables live in
`synthetic_tables`, hashing and noise in `synthetic_noise`, radiometry in `synthetic_sensors`.

>>> sc = make_scene(0, "D051-2019", "AA-S1-17", origin=(790_000.0, 6_880_000.0))
>>> arrays = render_patch(sc, 2, 10)
>>> arrays["SENTINEL2_TS"].shape[1:], arrays["AERIAL_RGBI"].dtype
((10, 10), dtype('uint8'))
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from flairlab.data.synthetic_noise import fbm, hash_u01, lattice_hash, subkey, value_noise, worley
from flairlab.data.synthetic_sensors import (
    RoiDates,
    RoiScene,
    aerial_elevation_labels,
    historical_pan,
    reflectance,
    sentinel1,
    sentinel2,
)
from flairlab.data.synthetic_tables import (
    AERIAL_BANDS,
    B_ASPHALT,
    B_BARK,
    B_DRYGRASS,
    B_GRAVEL,
    B_PLASTIC,
    B_POOL,
    B_ROOF,
    B_SOIL,
    B_TILE,
    B_WATER,
    BARE,
    BUILDING,
    CAT_COVER,
    CAT_PHENO,
    CATS,
    CROP,
    CROP_L3,
    DECID,
    DEPARTMENTS,
    GREENHOUSE,
    HERB,
    IMPERVIOUS,
    LIGNEOUS,
    LPIS_BG,
    P_ALFALFA,
    P_BRUSH,
    P_CONIF,
    P_DECID,
    P_GARDEN,
    P_GRASS,
    P_HEDGE,
    P_INTERROW,
    P_NONE,
    P_WWHEAT,
    PATCH_M,
    PERVIOUS,
    PHENO,
    PHENO_BGM,
    PHENO_VEGM,
    POOL,
    SPOT_HAZE,
    SPOT_K,
    STRATA,
    VINE,
    WATER,
    crop_weights,
)
from flairlab.data.synthetic_tables import (
    L2_TO_L1 as L2_TO_L1,  # re-exported for tests/test_sample.py
)
from flairlab.data.synthetic_tables import (
    L3_TO_L2 as L3_TO_L2,  # re-exported for tests/test_sample.py
)


def _lines(t: np.ndarray, spacing: float, key: int, prob: float, width: tuple[float, float]):
    """Pixels on a set of parallel jittered lines (roads) at ~`spacing` m along coordinate t."""
    k = np.floor(t / spacing + 0.5).astype(np.int64)
    centre = (k + 0.3 * (lattice_hash(key, k, extra=(0,)) - 0.5)) * spacing
    w = width[0] + (width[1] - width[0]) * lattice_hash(key, k, extra=(1,))
    return (lattice_hash(key, k, extra=(2,)) < prob) & (np.abs(t - centre) < w / 2)


# -- ROI-level parameters --------------------------------------------------------------------
def roi_origins(seed: int, domain: str, rois: list[str]) -> dict[str, tuple[float, float]]:
    """Upper-left corners of a domain's ROIs: distinct 3 km cells around the department centre."""
    code = domain.split("-")[0]
    cx, cy = DEPARTMENTS.get(code, {}).get("centre", (650_000.0, 6_600_000.0))
    rng = np.random.default_rng(subkey("origins", seed, domain))
    side = int(np.ceil(np.sqrt(max(len(rois), 1) * 2)))
    cells = rng.permutation(side * side)[: len(rois)]
    out = {}
    for roi, cell in zip(sorted(rois), cells, strict=True):
        jx, jy = rng.integers(0, 300, size=2)
        x = cx + (cell % side - side / 2) * 3000 + jx
        y = cy + (cell // side - side / 2) * 3000 + 2560 + jy
        out[roi] = (float(x), float(y))
    return out


def _stratified(rng: np.random.Generator, candidates: np.ndarray, n: int) -> np.ndarray:
    """n sorted candidates, one per equal slice of the year (so every season is observed)."""
    edges = np.linspace(0, len(candidates), n + 1).astype(int)
    return candidates[[rng.integers(a, max(a + 1, b)) for a, b in pairwise(edges)]]


def make_dates(key: int, year: int, mountain: bool) -> RoiDates:
    rng = np.random.default_rng(subkey(key, "dates"))
    ndays = 366 if year % 4 == 0 else 365
    s2 = _stratified(rng, np.arange(rng.integers(1, 6), ndays + 1, 5), int(rng.integers(20, 41)))
    cloud = np.where(rng.random(len(s2)) < 0.5, 0.0, rng.beta(0.9, 0.9, len(s2)))
    cloud[rng.permutation(len(s2))[:6]] = 0.0  # always enough clear acquisitions (spec B.20)
    winter = (s2 < 80) | (s2 > 330)
    amount = np.where(winter & (rng.random(len(s2)) < (0.6 if mountain else 0.1)), 0.9, 0.0)
    line = np.where(mountain, rng.uniform(300, 1500, len(s2)), -1e4)
    step = 6 if year < 2022 else 12  # Sentinel-1B failed in December 2021
    orbits = {}
    for name in ("asc", "desc"):
        cand = np.arange(rng.integers(1, step + 1), ndays + 1, step)
        orbits[name] = _stratified(rng, cand, int(rng.integers(12, 31)))
    moist = {k: rng.uniform(0.6, 1.8, len(d)) for k, d in orbits.items()}
    wind = {k: rng.uniform(0.4, 3.0, len(d)) for k, d in orbits.items()}
    rlt_day = "00" if rng.random() < 0.25 else f"{rng.integers(1, 29):02d}"
    rlt = f"{rng.integers(1947, 1966)}{rng.integers(4, 10):02d}{rlt_day}"
    return RoiDates(year, s2, cloud, np.stack([amount, line], 1), orbits["asc"], orbits["desc"],
                    moist, wind, aerial=int(rng.integers(150, 251)),
                    spot=int(rng.integers(100, 281)), rlt=rlt)  # fmt: skip


def make_scene(seed: int, domain: str, roi: str, origin: tuple[float, float]) -> RoiScene:
    """Draw the parameters of one ROI (its land-cover mix follows the ROI's stratum letters)."""
    code, year = domain.split("-")[0], int(domain.split("-")[1])
    dep = DEPARTMENTS.get(code, {})
    key = subkey("flairlab-sample", seed, f"{domain}_{roi}")
    rng = np.random.default_rng(key)
    letters = [ch for ch in roi.split("-")[0] if ch in STRATA] or ["A"]
    w = 0.6 * STRATA[letters[0]] + 0.4 * STRATA[letters[-1]]
    for cat, factor in dep.get("cats", {}).items():
        w[CATS.index(cat)] *= factor
    size = {"U": (45.0, 32.0), "A": (120.0, 75.0), "F": (95.0, 90.0), "V": (60.0, 40.0)}
    pm = size.get(letters[0], (85.0, 70.0))
    urban = letters[0] == "U"
    roads = (110.0, 140.0, 0.85) if urban else (380.0, 520.0, 0.5)
    river = None
    if rng.random() < 0.45:
        river = (rng.uniform(0, np.pi), rng.uniform(300, 2300), rng.uniform(20, 120),
                 rng.uniform(500, 1500), rng.uniform(0, 2 * np.pi), rng.uniform(8, 25))  # fmt: skip
    parcel_m = (pm[0] * rng.uniform(0.85, 1.15), pm[1] * rng.uniform(0.85, 1.15))
    return RoiScene(domain, roi, key, origin[0], origin[1], rng.uniform(-0.5, 0.5), parcel_m,
                    w / w.sum(), crop_weights(code), roads, river, dep.get("dtm", (250.0, 40.0)),
                    bool(dep.get("south", False)),
                    make_dates(key, year, bool(dep.get("mountain", False))),
                    rng.uniform(0.92, 1.08, 4))  # fmt: skip


def patch_bounds(sc: RoiScene, row: int, col: int) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of patch R-C: columns go east, rows go south (spec §13)."""
    left = sc.x0 + (col - 1) * PATCH_M
    top = sc.y0 - (row - 1) * PATCH_M
    return left, top - PATCH_M, left + PATCH_M, top


# -- land cover ---------------------------------------------------------------------------------
def sample_scene(sc: RoiScene, X: np.ndarray, Y: np.ndarray) -> dict[str, np.ndarray]:
    """Land cover and its attributes at points (X, Y) (EPSG:2154, any shape).

    Returns arrays shaped like X: cover (COSIA id, modern), hist (COSIA id, 1950s), pheno, vegm,
    bgm (spectral model ids), l3 (LPIS level 3), shift (days), mow1 (doy), bright, tex (-1..1),
    height0 (m, buildings and trees), tone (historical field tone) and dtm (m).
    """
    k = sc.key
    ex, ey = X - sc.x0, Y - sc.y0
    cs, sn = np.cos(sc.theta), np.sin(sc.theta)
    u, v = cs * ex + sn * ey, -sn * ex + cs * ey
    w = worley(u, v, *sc.parcel_m, subkey(k, "parcels"))
    # parcel-level attributes, computed once per parcel present
    cid = w["i"] * 2**24 + w["j"]
    _, first, inv = np.unique(cid.ravel(), return_index=True, return_inverse=True)
    inv = inv.reshape(X.shape)
    pi, pj = w["i"].ravel()[first], w["j"].ravel()[first]
    psu, psv = w["su"].ravel()[first], w["sv"].ravel()[first]
    # categories cluster: each category's weight is modulated by a 700 m noise field
    mod = np.stack([value_noise(psu, psv, 700.0, subkey(k, "cat", c)) for c in CATS], 1)
    cum = np.cumsum(sc.cat_w * np.exp(4.0 * (mod - 0.5)), 1)
    cat = (hash_u01(k, pi, pj, 1)[:, None] * cum[:, -1:] > cum).sum(1)
    crop_cum = np.cumsum(sc.crop_w)
    crop = np.minimum((hash_u01(k, pi, pj, 2)[:, None] > crop_cum).sum(1), len(PHENO) - 1)
    h = [hash_u01(k, pi, pj, 10 + n) for n in range(6)]
    pheno_p = np.where(cat == 0, crop, CAT_PHENO[cat])
    l3_p = np.full(len(pi), LPIS_BG)
    for p, code in CROP_L3.items():
        l3_p[pheno_p == p] = code
    l3_p[(cat == 1) & (h[0] < 0.7)] = np.where(h[1] < 0.5, 0, 1)[(cat == 1) & (h[0] < 0.7)]
    l3_p[cat == 6] = 37
    tree_h = np.where(cat == 3, 16 + 12 * h[2], 13 + 10 * h[2])
    changed = np.select(
        [np.isin(cat, [7, 8, 9]), np.isin(cat, [2, 3, 4, 12]), cat <= 1],
        [h[3] < 0.55, h[3] < 0.3, h[3] < 0.1],
        False,
    )
    hist_p = np.where(cat <= 1, DECID, np.where(h[4] < 0.5, CROP, HERB))
    # per-pixel fields
    catx = cat[inv]
    cover = CAT_COVER[catx].copy()
    pheno = pheno_p[inv].astype(np.uint8)
    l3 = l3_p[inv].astype(np.uint8)
    shift = ((h[5][inv] - 0.5) * 12).astype(np.float32)  # sowing / weather jitter, ±6 days
    mow1 = (125 + 40 * h[2][inv]).astype(np.float32)
    bright = (0.85 + 0.3 * h[1][inv]).astype(np.float32)
    height0 = np.where(np.isin(catx, [2, 3, 4]), tree_h[inv], 0.0)
    tex = np.clip((fbm(X, Y, [0.7, 2.2, 6.0], subkey(k, "tex")) - 0.5) * 3.0, -1, 1)
    tex = tex.astype(np.float32)
    hist = np.where(changed[inv], hist_p[inv], cover).astype(np.uint8)
    bgm = PHENO_BGM[pheno].copy()
    # mixed forest = patches of both leaf types; garden trees; clear cuts regrow
    mixed = catx == 4
    broad = value_noise(X, Y, 8.0, subkey(k, "mix")) > 0.5
    pheno[mixed] = np.where(broad, P_DECID, P_CONIF)[mixed]
    # urban blocks: houses in 18 × 15 m slots with driveways, gardens, pools, garden trees
    a, b = np.floor(u / 18.0).astype(np.int64), np.floor(v / 15.0).astype(np.int64)
    lu, lv = u - a * 18.0, v - b * 15.0
    sh = [lattice_hash(subkey(k, "slot"), a, b, extra=(n,)) for n in range(7)]
    bw, bd = 7 + 6 * sh[0], 6 + 4 * sh[1]
    in_house = (np.abs(lu - 9.5 - (sh[2] - 0.5) * 3) < bw / 2) & (np.abs(lv - 7) < bd / 2)
    urban = catx == 7
    house = urban & in_house & (sh[3] < 0.8)
    pool = (
        urban
        & ~in_house
        & (sh[4] < (0.35 if sc.south else 0.12))
        & (np.abs(lu - 9) < 3)
        & (lv > 12.3)
    )
    drive = urban & ~house & ~pool & (lu < 2.5)
    garden_tree = urban & ~house & ~pool & ~drive & (tex > 0.55)
    gravel = urban & ~house & ~pool & ~drive & ~garden_tree & (value_noise(X, Y, 4.0, k + 7) > 0.7)
    ridge = 2.5 * (1 - np.abs(2 * (lv - 7) / bd))
    roof = np.where(sh[5] < (0.35 if sc.south else 0.2), B_TILE, B_ROOF)
    # industrial: one big flat building around the parcel seed, parking around
    du, dv = np.abs(u - w["su"]), np.abs(v - w["sv"])
    indus = catx == 8
    shed = indus & (du < 0.3 * sc.parcel_m[0]) & (dv < 0.3 * sc.parcel_m[1])
    green = (catx == 9) & ((u / 9.0) % 1.0 < 0.75)
    vine = catx == 6
    rows = vine & ((v / 2.2) % 1.0 < 0.45)
    for mask, cov, ph, bg, hgt in (
        (urban, HERB, P_GARDEN, B_DRYGRASS, 0.0),
        (gravel, PERVIOUS, P_NONE, B_GRAVEL, 0.0),
        (drive, IMPERVIOUS, P_NONE, B_ASPHALT, 0.0),
        (garden_tree, DECID, P_DECID, B_BARK, 8 + 4 * sh[6]),
        (pool, POOL, P_NONE, B_POOL, 0.0),
        (house, BUILDING, P_NONE, roof, 4 + 10 * sh[6] + ridge),
        (indus & ~shed, IMPERVIOUS, P_NONE, B_ASPHALT, 0.0),
        (shed, BUILDING, P_NONE, B_ROOF, 7 + 5 * h[2][inv]),
        (green, GREENHOUSE, P_NONE, B_PLASTIC, 3.0),
        (vine & ~rows, VINE, P_INTERROW, B_SOIL, 0.0),
        (np.isin(catx, [10, 11, 13]), cover, P_NONE, np.where(catx == 10, B_WATER, B_GRAVEL), 0.0),
        (catx == 11, BARE, P_NONE, B_SOIL, 0.0),
    ):
        cover = np.where(mask, cov, cover)
        pheno = np.where(mask, ph, pheno)
        bgm = np.where(mask, bg, bgm)
        height0 = np.where(mask, hgt, height0)
    # the 1950s: about half the houses and sheds did not exist yet, no greenhouses
    old = ~changed[inv] & ((house & (sh[6] < 0.55)) | (shed & (h[4][inv] < 0.4)))
    hist = np.where(~changed[inv] & (urban | indus), HERB, hist)
    hist = np.where(old, BUILDING, np.where(catx == 9, CROP, hist))
    # field margins: grass strips or hedgerows (ligneous) along some rural parcel borders
    rural = np.isin(catx, [0, 1, 6, 11])
    bh = hash_u01(
        subkey(k, "border"),
        np.minimum(cid, w["i2"] * 2**24 + w["j2"]),
        np.maximum(cid, w["i2"] * 2**24 + w["j2"]),
    )
    hedge = rural & (w["edge"] < 1.6) & (bh < 0.3)
    strip = rural & (w["edge"] < 1.2) & (bh >= 0.3) & (bh < 0.7)
    # roads on a jittered grid, a meandering river with riparian trees
    road = _lines(v, sc.roads[0], subkey(k, "ru"), sc.roads[2], (5, 9)) | _lines(
        u, sc.roads[1], subkey(k, "rv"), sc.roads[2], (5, 9)
    )
    water = riparian = np.zeros(X.shape, bool)
    if sc.river is not None:
        th, off, amp, lam, ph0, wid = sc.river
        ur, vr = np.cos(th) * ex + np.sin(th) * ey, -np.sin(th) * ex + np.cos(th) * ey
        dist = np.abs(vr + off - amp * np.sin(2 * np.pi * ur / lam + ph0))
        water, riparian = dist < wid / 2, (dist >= wid / 2) & (dist < wid / 2 + 7)
    overlays = (
        (hedge, LIGNEOUS, P_HEDGE, B_BARK, 4 + 3 * bh),
        (strip, HERB, P_GRASS, B_DRYGRASS, 0),
        (riparian & ~road, DECID, P_DECID, B_BARK, 15.0),
        (road, IMPERVIOUS, P_NONE, B_ASPHALT, 0),
        (water & ~road, WATER, P_NONE, B_WATER, 0),
    )
    for mask, cov, ph, bg, hgt in overlays:
        cover, hist = np.where(mask, cov, cover), np.where(mask, cov, hist)
        pheno, bgm = np.where(mask, ph, pheno), np.where(mask, bg, bgm)
        height0 = np.where(mask, hgt, height0)
        l3 = np.where(mask, LPIS_BG, l3)
    tex = class_texture(k, X, Y, u, v, cid, pheno, tex)
    trees = np.isin(pheno, [P_DECID, P_CONIF, P_HEDGE])
    height0 = np.where(trees, height0 * (0.8 + 0.25 * tex), height0)
    strip_tone = 0.5 + 0.9 * (
        hash_u01(subkey(k, "strips"), cid, np.floor(u / 22.0).astype(np.int64)) - 0.5
    )
    dtm = sc.dtm[0] + sc.dtm[1] * 2 * (fbm(X, Y, [1500.0, 600.0, 250.0], subkey(k, "dtm")) - 0.5)
    return dict(
        cover=cover.astype(np.uint8),
        hist=hist.astype(np.uint8),
        pheno=pheno.astype(np.uint8),
        vegm=PHENO_VEGM[pheno],
        bgm=bgm.astype(np.uint8),
        l3=l3,
        shift=shift,
        mow1=mow1,
        bright=bright,
        tex=tex,
        height0=np.maximum(height0, 0).astype(np.float32),
        tone=strip_tone.astype(np.float32),
        dtm=dtm,
    )


# crowns: (phenology, lattice spacing m, share of the spacing a crown covers)
CROWNS = ((P_DECID, 6.0, 0.65), (P_CONIF, 3.6, 0.55), (P_HEDGE, 4.0, 0.7), (P_BRUSH, 2.4, 0.6))


def class_texture(k: int, X, Y, u, v, cid, pheno, base) -> np.ndarray:
    """Optical texture (-1..1) whose *pattern* depends on the class, the same in every domain —
    the structure that unlabelled imagery reveals (per-patch normalised aerial tokens of an
    isotropic noise texture carry nothing a masked autoencoder can predict):

    * crops (every crop phenology): rows / tramlines along one side of the parcel, period 3-6 m
      drawn per parcel — stripes that continue from one token to the next;
    * trees, hedges, brushwood: crowns on a jittered lattice (deciduous 6 m, coniferous 3.6 m,
      brushwood 2.4 m), bright tops and dark gaps (they also shape the DSM);
    * grassland, gardens, alfalfa: smooth mottling (9 m);
    * everything else keeps `base` (fine isotropic noise).
    """
    out = base.copy()
    crop = pheno >= P_WWHEAT
    if crop.any():
        c = cid[crop]
        period = 3.0 + 3.0 * hash_u01(subkey(k, "row period"), c)
        along = np.where(hash_u01(subkey(k, "row side"), c) < 0.5, u[crop], v[crop])
        out[crop] = 0.3 * base[crop] + 0.7 * np.cos(2 * np.pi * along / period)
    for ph, cell, cover in CROWNS:
        m = pheno == ph
        if m.any():
            w = worley(X[m], Y[m], cell, cell, subkey(k, "crowns", ph))
            d = np.hypot(X[m] - w["su"], Y[m] - w["sv"]) / (cover * cell)
            out[m] = 0.25 * base[m] + 0.75 * (1 - 2 * np.clip(d, 0, 1) ** 2)
    grass = np.isin(pheno, [P_GRASS, P_GARDEN, P_ALFALFA])
    if grass.any():
        mottle = 2 * value_noise(X[grass], Y[grass], 9.0, subkey(k, "mottle")) - 1
        out[grass] = 0.3 * base[grass] + 0.7 * mottle
    return np.clip(out, -1, 1).astype(np.float32)


def _grid(left: float, top: float, res: float, n: int, pad: int = 0):
    ax = (np.arange(-pad, n + pad) + 0.5) * res
    return np.meshgrid(left + ax, top - ax)


def _rng(sc: RoiScene, row: int, col: int, what: str) -> np.random.Generator:
    """Independent noise stream per patch and sensor."""
    return np.random.default_rng([sc.key, row, col, subkey(what)])


def render_patch(sc: RoiScene, row: int, col: int) -> dict[str, np.ndarray]:
    """All ten FLAIR-HUB arrays of patch R-C (band-first, dataset dtypes; spec §4.1)."""
    left, _, _, top = patch_bounds(sc, row, col)
    X, Y = _grid(left, top, 0.2, 512, pad=1)  # one extra pixel for the shading gradient
    st = sample_scene(sc, X, Y)
    out = aerial_elevation_labels(sc, st, _rng(sc, row, col, "aerial"))
    out["AERIAL-RLT_PAN"] = historical_pan(st, _rng(sc, row, col, "rlt"))
    co = {name: a[3:512:4, 3:512:4] for name, a in st.items()}  # 0.8 m points for 10 m sensors
    xc, yc = X[3:512:4, 3:512:4], Y[3:512:4, 3:512:4]
    spot = reflectance(co, [sc.dates.spot], AERIAL_BANDS)[0].reshape(4, 64, 2, 64, 2).mean((2, 4))
    spot = 4000 * (spot * SPOT_K[:, None, None] + SPOT_HAZE[:, None, None])
    spot += _rng(sc, row, col, "spot").normal(0, 6, spot.shape)
    out["SPOT_RGBI"] = np.clip(np.rint(spot), 1, 65535).astype(np.uint16)
    out.update(sentinel2(sc, co, xc, yc, _rng(sc, row, col, "s2")))
    for orbit, name in (("asc", "SENTINEL1-ASC_TS"), ("desc", "SENTINEL1-DESC_TS")):
        out[name] = sentinel1(sc, co, orbit, _rng(sc, row, col, name))
    return out
