"""Radiometry of the synthetic sample: phenology, reflectance, S1 backscatter and the sensors.

Turns the land cover sampled by `flairlab.data.synthetic.sample_scene` into the FLAIR-HUB arrays:
aerial RGBI + DEM + COSIA / LPIS labels (0.2 m), the 1950s panchromatic photo, Sentinel-2 (with
snow / cloud masks) and Sentinel-1 time series (10 m). Pure numpy. Also holds the scene records
(`RoiDates`, `RoiScene`) that `flairlab.data.synthetic` draws and every sensor here reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from flairlab.data.synthetic_noise import fbm, subkey, value_noise
from flairlab.data.synthetic_tables import (
    AERIAL_BANDS,
    AERIAL_HAZE,
    AERIAL_K,
    B_CLOUD,
    B_SNOW,
    BG,
    BG_S1,
    CROP,
    DRY,
    DRY_S1,
    FLOWER,
    L2_TO_L1,
    L3_TO_L2,
    PAN_TONE,
    PHENO,
    PLOWED,
    SOILLIKE,
    TEX_AMP,
    VEG,
    VEG_S1,
    WETLIKE,
)


# -- the scene records (drawn by flairlab.data.synthetic.make_scene) --------------------------
@dataclass(frozen=True, eq=False)
class RoiDates:
    """Acquisition calendar of one ROI (shared by all its patches); doys are 1-based."""

    year: int
    s2: np.ndarray  # (T,) day of year
    cloud: np.ndarray  # (T,) cloud cover fraction of the date
    snow: np.ndarray  # (T, 2) snow amount 0..1, snow line (m a.s.l.)
    s1_asc: np.ndarray
    s1_desc: np.ndarray
    moist: dict  # orbit -> (T,) soil-moisture factor for S1
    wind: dict  # orbit -> (T,) water roughness factor for S1
    aerial: int
    spot: int
    rlt: str  # YYYYMMDD, day may be "00" (unknown day, spec §4.3)

    def as_dates(self, doys: np.ndarray) -> np.ndarray:
        return np.datetime64(f"{self.year}-01-01") + (np.asarray(doys) - 1).astype("timedelta64[D]")

    def yyyymmdd(self, doys: np.ndarray | int) -> list[str]:
        return [str(d).replace("-", "") for d in np.atleast_1d(self.as_dates(doys))]


@dataclass(frozen=True, eq=False)
class RoiScene:
    """Everything needed to render any patch of one `DOMAIN_ROI`."""

    domain: str
    roi: str
    key: int
    x0: float  # upper-left corner of patch 1-1 (EPSG:2154, m)
    y0: float
    theta: float  # orientation of the parcel / street grid (rad)
    parcel_m: tuple[float, float]
    cat_w: np.ndarray  # (n_cats,) parcel category weights
    crop_w: np.ndarray  # (n_pheno,) crop mix
    roads: tuple[float, float, float]  # spacing u, spacing v, probability
    river: tuple[float, ...] | None  # theta, offset, amplitude, wavelength, phase, width
    dtm: tuple[float, float]  # base, relief (m)
    south: bool
    dates: RoiDates
    gain: np.ndarray  # (4,) aerial radiometric gain



def _sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


# -- sensors ------------------------------------------------------------------------------------
def phenology(st: dict, doys: np.ndarray) -> tuple[np.ndarray, ...]:
    """Green, dry and flower cover fractions (T, N) of the points of `st` on days `doys`."""
    P = PHENO[st["pheno"].ravel()].T.astype(np.float32)
    g0, g1, a1, b1, gw, ga, ta, s1, hv, stb, fl = P[:11]
    d = np.asarray(doys, np.float32)[:, None] - st["shift"].ravel()[None]

    def dl(a, b):
        return _sig((d - a) / 7) * _sig((b - d) / 7)

    g = g0 + g1 * dl(a1, b1) + gw * _sig((a1 + 20 - d) / 8) + ga * _sig((d - ta) / 8)
    s = s1 * dl(b1 - 5, hv) + stb * dl(hv, ta)
    f = np.minimum(fl * dl(95, 130), g)
    mow1, ncut = st["mow1"].ravel(), P[12]
    for n in range(3):
        md = mow1 + 45 * n
        cut = (ncut > n) & (d >= md)
        g = g * (1 - 0.6 * cut * np.exp(-np.maximum(d - md, 0) / 18))
    total = np.maximum(g + s, 1.0)
    return (g - f) / total, s / total, f / total


def reflectance(st: dict, doys, bands: list[int] | None = None, gsf=None) -> np.ndarray:
    """Surface reflectance (T, B, N) of the points of `st`: linear mix of endmembers."""
    bands = list(range(10)) if bands is None else bands
    g, s, f = phenology(st, doys) if gsf is None else gsf
    veg, bg = VEG[st["vegm"].ravel()][:, bands].T, BG[st["bgm"].ravel()][:, bands].T
    rest = 1 - g - s - f
    r = (
        g[:, None] * veg
        + s[:, None] * DRY[bands, None]
        + f[:, None] * FLOWER[bands, None]
        + rest[:, None] * bg
    )
    cover = st["cover"].ravel()
    scale = st["bright"].ravel() * (1 + TEX_AMP[cover] * st["tex"].ravel())
    return (r * scale).astype(np.float32)


def backscatter(st: dict, doys: np.ndarray, moist: np.ndarray, wind: np.ndarray) -> np.ndarray:
    """Linear sigma0 (T, 2, N): vegetation volume + dry matter + (moist / rough) background."""
    g, s, f = phenology(st, doys)
    lin = lambda db: 10.0 ** (np.asarray(db) / 10)  # noqa: E731
    bgm = st["bgm"].ravel()
    fac = np.where(SOILLIKE[bgm], moist[:, None], np.where(WETLIKE[bgm], wind[:, None], 1.0))
    veg = lin(VEG_S1[st["vegm"].ravel()]).T
    out = (
        (g + f)[:, None] * veg
        + s[:, None] * lin(DRY_S1)[:, None]
        + ((1 - g - s - f) * fac)[:, None] * lin(BG_S1[bgm]).T
    )
    return out.astype(np.float32)


def canopy(st: dict, doy: int, gsf=None) -> np.ndarray:
    """Fraction (N,) of standing vegetation on day `doy` (green, flowering, dry before harvest)."""
    g, s, f = phenology(st, [doy]) if gsf is None else gsf
    harvest = PHENO[st["pheno"].ravel(), 8] + st["shift"].ravel()
    return g[0] + f[0] + np.where(doy < harvest, s[0], 0.0)


def heights(st: dict, doy: int, gsf=None) -> np.ndarray:
    """Object height above the terrain (m) on day `doy`: buildings, trees, growing crops."""
    crop_h = PHENO[st["pheno"].ravel(), 11] * np.minimum(1.0, canopy(st, doy, gsf))
    return np.maximum(st["height0"], crop_h.reshape(st["height0"].shape))


def area_matrix(n_fine: int, fine_m: float, n_coarse: int) -> np.ndarray:
    """(n_coarse, n_fine) weights averaging fine pixels into coarse ones by overlap area."""
    edges_f = np.arange(n_fine + 1) * fine_m
    edges_c = np.arange(n_coarse + 1) * (n_fine * fine_m / n_coarse)
    lo = np.maximum(edges_c[:-1, None], edges_f[None, :-1])
    hi = np.minimum(edges_c[1:, None], edges_f[None, 1:])
    w = np.clip(hi - lo, 0, None)
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def aerial_elevation_labels(sc: RoiScene, st: dict, rng: np.random.Generator) -> dict:
    """AERIAL_RGBI, DEM_ELEV, COSIA and LPIS from the padded (514 × 514) 0.2 m scene sample."""
    doy = sc.dates.aerial
    gsf = phenology(st, [doy])
    dsm = st["dtm"] + heights(st, doy, gsf)
    gy, gx = np.gradient(dsm, 0.2)  # shading of roofs, crowns and walls (sun from the SSE)
    az, el = np.radians(160.0), np.radians(55.0)
    shade = -gx * np.sin(az) * np.cos(el) + gy * np.cos(az) * np.cos(el) + np.sin(el)
    shade = np.clip(shade / np.sqrt(gx**2 + gy**2 + 1) / np.sin(el), 0.35, 1.3)[1:-1, 1:-1]
    sti = {name: a[1:-1, 1:-1] for name, a in st.items()}
    g, s, f = (a.reshape(514, 514)[1:-1, 1:-1].reshape(1, -1) for a in gsf)
    refl = reflectance(sti, [doy], AERIAL_BANDS, (g, s, f))[0] * sc.gain[:, None] * shade.ravel()
    aerial = 255 * np.clip(refl * AERIAL_K + AERIAL_HAZE, 0, 1) ** 0.65
    aerial = np.clip(np.rint(aerial + rng.normal(0, 1.5, refl.shape)), 0, 255)
    cosia = sti["cover"].copy()
    bare = canopy(sti, doy, (g, s, f)).reshape(512, 512) < 0.25  # harvested or not sown yet
    cosia[(cosia == CROP) & bare] = PLOWED
    dtm = sti["dtm"].astype(np.float32)
    dsm = dsm[1:-1, 1:-1].astype(np.float32)
    noise = rng.normal(0, 0.03, dtm.shape).astype(np.float32) * (dsm > dtm + 0.5)
    l3 = sti["l3"]
    return {"AERIAL_RGBI": aerial.astype(np.uint8).reshape(4, 512, 512),
            "DEM_ELEV": np.stack([np.maximum(dsm + noise, dtm), dtm]),
            "AERIAL_LABEL-COSIA": cosia[None],
            "ALL_LABEL-LPIS": np.stack([L2_TO_L1[L3_TO_L2[l3]], L3_TO_L2[l3], l3])}  # fmt: skip


def historical_pan(st: dict, rng: np.random.Generator) -> np.ndarray:
    """AERIAL-RLT_PAN (1, 256, 256): the 1950s land cover on panchromatic film, with grain."""
    hist = st["hist"][1:-1, 1:-1]
    tone = PAN_TONE[hist] * np.where(hist == CROP, st["tone"][1:-1, 1:-1] * 1.4, 1.0)
    pan = 255 * np.clip(tone * (1 + 0.25 * st["tex"][1:-1, 1:-1]), 0, 1) ** 0.8
    pan = pan.reshape(256, 2, 256, 2).mean((1, 3)) * rng.uniform(0.85, 1.1)
    return np.clip(np.rint(pan + rng.normal(0, 5, pan.shape)), 0, 255).astype(np.uint8)[None]


def sentinel2(sc: RoiScene, co: dict, xc, yc, rng: np.random.Generator) -> dict:
    """SENTINEL2_TS (10·T) and SENTINEL2_MSK-SC (2·T) from the 0.8 m sample: snow, clouds."""
    dt, T = sc.dates, len(sc.dates.s2)
    A = area_matrix(128, 0.8, 10)
    s2 = reflectance(co, dt.s2).reshape(T, 10, 128, 128)
    snow = np.zeros((T, 128, 128), np.float32)
    cloud = np.zeros_like(snow)
    for t in range(T):
        key_t = subkey(sc.key, "sky", int(dt.s2[t]))
        if dt.snow[t, 0] > 0:
            patchy = 0.6 + 0.4 * value_noise(xc, yc, 60.0, key_t + 1)
            snow[t] = dt.snow[t, 0] * _sig((co["dtm"] - dt.snow[t, 1]) / 40) * patchy
        if dt.cloud[t] > 0:  # threshold a 900/300 m noise field to the date's cloud cover
            thr = 0.5 + 0.12 * ndtri(1 - np.clip(dt.cloud[t], 1e-3, 1 - 1e-3))
            cloud[t] = np.clip((fbm(xc, yc, [900.0, 300.0], key_t) - thr) / 0.06, 0, 1)
    s2 = s2 * (1 - snow[:, None]) + snow[:, None] * BG[B_SNOW][None, :, None, None]
    s2 = s2 * (1 - cloud[:, None]) + cloud[:, None] * BG[B_CLOUD][None, :, None, None]
    s2 = A @ s2 @ A.T + rng.normal(0, 0.003, (T, 10, 10, 10))
    probs = np.clip(np.stack([A @ snow @ A.T, A @ cloud @ A.T], 1) * 1.15, 0, 1) ** 0.8
    s2 = np.clip(np.rint(s2 * 1e4), 1, 65535).astype(np.uint16)  # never an all-zero frame
    msk = np.rint(100 * probs).astype(np.uint8)
    return {"SENTINEL2_TS": s2.reshape(-1, 10, 10), "SENTINEL2_MSK-SC": msk.reshape(-1, 10, 10)}


def sentinel1(sc: RoiScene, co: dict, orbit: str, rng: np.random.Generator) -> np.ndarray:
    """SENTINEL1-*_TS (2·T, 10, 10): linear sigma0 with multi-look speckle (ENL 5)."""
    doys = sc.dates.s1_asc if orbit == "asc" else sc.dates.s1_desc
    A = area_matrix(128, 0.8, 10)
    sig = backscatter(co, doys, sc.dates.moist[orbit], sc.dates.wind[orbit])
    sig = A @ sig.reshape(len(doys), 2, 128, 128) @ A.T
    sig = sig * (1.0 if orbit == "asc" else 0.9) * rng.uniform(0.95, 1.05, (len(doys), 1, 1, 1))
    speckle = rng.gamma(5.0, 1 / 5.0, sig.shape)
    return np.maximum(sig * speckle, 1e-5).astype(np.float32).reshape(-1, 10, 10)
