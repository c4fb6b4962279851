"""Tables and constants of the synthetic sample (`flairlab.data.synthetic`): COSIA and phenology
ids, parcel-category mixes per ROI stratum, double-logistic phenology parameters, reflectance / S1
endmembers, LPIS hierarchy, per-department settings, and the aerial / SPOT radiometry constants.
"""

from __future__ import annotations

import numpy as np

PATCH_M = 102.4  # every modality of a patch covers this square (spec §3)
AERIAL_BANDS = [2, 1, 0, 6]  # R, G, B, NIR taken from the S2 bands B04, B03, B02, B08
# radiometry: DN = 255·(K·reflectance + haze)^0.65 (aerial), 4000·(K·reflectance + haze) (SPOT);
# tuned so that the band means land near the published statistics (spec §7)
AERIAL_K, AERIAL_HAZE = (
    np.array([[2.4], [2.4], [2.8], [0.85]]),
    np.array([[0.08], [0.09], [0.11], [0]]),
)
SPOT_K, SPOT_HAZE = np.array([1.0, 1.0, 1.0, 0.9]), np.array([0.03, 0.04, 0.06, 0.0])

# fmt: off
# -- tables -------------------------------------------------------------------------------------
# COSIA ids (spec §6.1); CROP becomes PLOWED where the field is bare on the aerial date
(BUILDING, GREENHOUSE, POOL, IMPERVIOUS, PERVIOUS, BARE, WATER, SNOW, HERB, CROP, PLOWED, VINE,
 DECID, CONIF, BRUSH, CLEARCUT, LIGNEOUS, MIXED, UNDEF) = range(19)
CATS = ["crop", "grass", "decid", "conif", "mixed", "brush", "vine", "urban", "indus", "green",
        "water", "bare", "clear", "undef"]  # parcel categories
CAT_COVER = np.array([CROP, HERB, DECID, CONIF, MIXED, BRUSH, VINE, HERB, IMPERVIOUS, PERVIOUS,
                      WATER, BARE, CLEARCUT, UNDEF], dtype=np.uint8)
# parcel-category weights per ROI stratum letter (ROI names like "UA-S1-10": U/N/A/F/V strata)
STRATA = {k: np.array(v, dtype=float) for k, v in {
    "U": [.08, .12, .08, .01, .005, .02, .01, .50, .12, .02, .01, .01, 0, .01],
    "A": [.55, .18, .07, .02, .005, .03, .03, .06, .01, .01, .01, .01, 0, .005],
    "F": [.06, .10, .37, .33, .015, .06, 0, .02, 0, 0, .01, .01, .03, 0],
    "N": [.08, .30, .18, .10, .01, .20, .02, .03, 0, 0, .03, .04, .01, .005],
    "V": [.15, .12, .06, .02, .005, .05, .45, .06, .01, .01, .01, .02, 0, .005]}.items()}
# phenology ids: non-crop classes, then crops (the crop ids map to LPIS level 3 through CROP_L3)
(P_NONE, P_GRASS, P_DECID, P_CONIF, P_VINE, P_BRUSH, P_CLEAR, P_HEDGE, P_GARDEN, P_INTERROW,
 P_WWHEAT, P_WBARLEY, P_RAPE, P_MAIZE, P_SUNF, P_SBARLEY, P_BEET, P_POTATO, P_SOY,
 P_ALFALFA) = range(20)
CROP_L3 = {P_WWHEAT: 2, P_WBARLEY: 4, P_RAPE: 21, P_MAIZE: 6, P_SUNF: 20, P_SBARLEY: 5,
           P_BEET: 31, P_POTATO: 32, P_SOY: 24, P_ALFALFA: 28}
# green g = g0 + g1·dl(a1, b1) + gw·[before a1] + ga·[after ta];
# dry s = s1·dl(b1, h) + st·dl(h, ta);
# flowers fl (rapeseed); hmax = canopy height (m); mow = number of cuts. dl = double logistic.
#                 g0    g1   a1   b1   gw   ga   ta   s1   h    st   fl  hmax mow
PHENO = np.array([[0,    0,   0,   0,   0,   0,  999, 0,   0,   0,   0,  0,   0],   # none
                  [.55, .30,  70, 175,  0,   0,  999, .15, 250, 0,   0,  .4,  1],   # grassland
                  [.12, .78, 105, 295,  0,   0,  999, .10, 325, 0,   0,  0,   0],   # deciduous
                  [.78, .07, 110, 280,  0,   0,  999, 0,   0,   0,   0,  0,   0],   # coniferous
                  [.05, .60, 120, 285,  0,   0,  999, .20, 310, 0,   0,  1.6, 0],   # vine rows
                  [.35, .30,  95, 270,  0,   0,  999, .15, 300, 0,   0,  2.5, 0],   # brushwood
                  [.10, .35, 110, 260,  0,   0,  999, .15, 300, 0,   0,  .8,  0],   # clear cut
                  [.15, .70, 100, 300,  0,   0,  999, .10, 325, 0,   0,  0,   0],   # hedge
                  [.60, .25,  70, 290,  0,   0,  999, .05, 300, 0,   0,  .2,  2],   # garden
                  [.15, .20,  80, 180,  0,   0,  999, .10, 220, 0,   0,  .1,  0],   # inter-row
                  [.02, .85,  75, 168, .30, .15, 300, .85, 200, .45, 0,  1.0, 0],   # winter wheat
                  [.02, .85,  55, 140, .30, .15, 290, .85, 178, .45, 0,  .9,  0],   # winter barley
                  [.02, .75,  50, 145, .55, .45, 245, .75, 188, .40, .5, 1.5, 0],   # rapeseed
                  [0,   .92, 160, 255,  0,   0,  999, .85, 285, .40, 0,  2.6, 0],   # maize
                  [0,   .85, 125, 215,  0,   0,  999, .85, 255, .40, 0,  1.8, 0],   # sunflower
                  [0,   .85,  95, 175,  0,  .15, 300, .85, 205, .45, 0,  .8,  0],   # spring barley
                  [0,   .90, 140, 285,  0,   0,  999, .20, 300, .10, 0,  .5,  0],   # beetroots
                  [0,   .85, 130, 215,  0,   0,  999, .60, 240, .20, 0,  .6,  0],   # potatoes
                  [0,   .85, 150, 250,  0,   0,  999, .80, 275, .40, 0,  .9,  0],   # soy
                  [.30, .55,  75, 285, .10,  0,  999, .10, 300, 0,   0,  .7,  3]])  # alfalfa
# reflectance endmembers, S2 band order B02 B03 B04 B05 B06 B07 B08 B8A B11 B12
VEG = np.array([[.030, .070, .035, .100, .300, .380, .420, .440, .220, .100],   # herbaceous / crop
                [.025, .055, .030, .085, .270, .340, .380, .400, .180, .080],   # broadleaf
                [.022, .050, .027, .078, .250, .315, .350, .370, .165, .072]])  # needleleaf
DRY = np.array([.070, .100, .130, .160, .200, .230, .260, .270, .360, .260])    # senescent/stubble
FLOWER = np.array([.040, .160, .150, .180, .300, .360, .380, .400, .240, .110])  # rapeseed bloom
(B_SOIL, B_BARK, B_DRYGRASS, B_ASPHALT, B_ROOF, B_TILE, B_PLASTIC, B_POOL, B_WATER, B_GRAVEL,
 B_SNOW, B_CLOUD) = range(12)
BG = np.array([[.070, .100, .130, .160, .190, .210, .230, .240, .320, .270],   # soil
               [.040, .060, .070, .090, .130, .150, .170, .180, .220, .150],   # bark / litter
               [.060, .090, .110, .140, .200, .230, .260, .270, .330, .240],   # dry grass
               [.110, .120, .130, .140, .150, .155, .160, .165, .190, .170],   # asphalt, concrete
               [.105, .115, .125, .135, .145, .150, .155, .160, .180, .165],   # grey roof
               [.060, .080, .170, .210, .230, .250, .260, .270, .310, .240],   # tile roof
               [.380, .400, .410, .420, .420, .430, .430, .430, .360, .280],   # greenhouse plastic
               [.220, .260, .170, .100, .060, .050, .040, .040, .020, .010],   # swimming pool
               [.055, .060, .040, .030, .020, .018, .015, .012, .006, .004],   # water
               [.140, .160, .180, .200, .220, .230, .240, .250, .300, .260],   # gravel
               [.850, .860, .850, .830, .810, .790, .760, .740, .080, .060],   # snow
               [.500, .510, .520, .530, .530, .540, .540, .540, .420, .330]])  # cloud
VEG, DRY, FLOWER, BG = (t.astype(np.float32) for t in (VEG, DRY, FLOWER, BG))
PHENO_VEGM = np.array([0, 0, 1, 2, 1, 1, 0, 1, 0, 0] + [0] * 10, dtype=np.uint8)
PHENO_BGM = np.array([B_GRAVEL, B_DRYGRASS, B_BARK, B_BARK, B_SOIL, B_DRYGRASS, B_SOIL, B_BARK,
                      B_DRYGRASS, B_SOIL] + [B_SOIL] * 10, dtype=np.uint8)
# S1 sigma0 in dB (VV, VH): vegetation, dry matter, background materials (in BG order)
VEG_S1 = np.array([[-10.0, -16.0], [-7.0, -12.5], [-7.3, -12.8]])
DRY_S1 = np.array([-11.0, -18.0])
BG_S1 = np.array([[-12, -20], [-9, -15.5], [-12, -19], [-16, -25], [-2, -9], [-2, -9], [-4, -12],
                  [-20, -27], [-21, -28], [-13, -21], [-12, -20], [-12, -20]], dtype=float)
SOILLIKE = np.isin(np.arange(12), [B_SOIL, B_DRYGRASS, B_GRAVEL])  # respond to soil moisture
WETLIKE = np.isin(np.arange(12), [B_POOL, B_WATER])  # respond to wind
TEX_AMP = np.array([.10, .05, .03, .10, .15, .12, .03, .02, .10, .15, .15, .10, .30, .35, .25, .20,
                    .25, .32, .25], dtype=np.float32)  # optical texture per COSIA class
# panchromatic tone of each (historical) class in the 1950s photographs
PAN_TONE = np.array([.62, .60, .50, .55, .60, .60, .12, .90, .38, .45, .50, .42, .18, .12, .30,
                     .40, .20, .15, .50], dtype=np.float32)
# LPIS hierarchy (derived from the level names, spec §6.2-6.3): level 3 -> level 2 -> level 1
L3_TO_L2 = np.array([0, 0, 1, 1, 2, 2, 3, 4, 4, 1, 5, 5, 5, 6, 6, 7, 8, 9, 10, 10, 11, 12, 13, 13,
                     14, 15, 15, 15, 16, 17, 17, 18, 19, 20, 21, 7, 22, 23, 24, 25, 26, 27, 28, 28,
                     29, 30], dtype=np.uint8)
L2_TO_L1 = np.array([0, 1, 2, 3, 4, 4, 4, 4, 5, 6, 6, 7, 8, 9, 10, 11, 12, 12, 13, 14, 15, 15, 15,
                     16, 17, 18, 19, 20, 20, 21, 22], dtype=np.uint8)
LPIS_BG = 45  # level-3 background (-> 30 -> 22)
CAT_PHENO = np.array([P_NONE, P_GRASS, P_DECID, P_CONIF, P_DECID, P_BRUSH, P_VINE, P_GARDEN, P_NONE,
                      P_NONE, P_NONE, P_NONE, P_CLEAR, P_NONE])  # default phenology per category
# departments: rough centre (Lambert-93), DTM base and relief (m), category factors, crop mix
_C = dict(wwheat=P_WWHEAT, wbarley=P_WBARLEY, rape=P_RAPE, maize=P_MAIZE, sunf=P_SUNF,
          sbarley=P_SBARLEY, beet=P_BEET, potato=P_POTATO, soy=P_SOY, alfalfa=P_ALFALFA)
DEPARTMENTS: dict[str, dict] = {
    "D006": dict(centre=(1_030_000, 6_320_000), dtm=(650, 250), mountain=True, south=True,
                 cats=dict(vine=1.5, conif=2, crop=.3, brush=1.5, green=3),
                 crops=dict(wwheat=1, sunf=.5, maize=.5, alfalfa=1)),
    "D012": dict(centre=(680_000, 6_357_000), dtm=(650, 100), mountain=True, south=True,
                 cats=dict(grass=1.6, conif=1.3),
                 crops=dict(wwheat=2, wbarley=2, maize=1, alfalfa=2)),
    "D032": dict(centre=(500_000, 6_285_000), dtm=(200, 40), south=True, cats=dict(vine=2),
                 crops=dict(sunf=3, maize=2, wwheat=3, soy=1, rape=.5)),
    "D038": dict(centre=(900_000, 6_470_000), dtm=(450, 200), mountain=True,
                 cats=dict(conif=2, grass=1.3),
                 crops=dict(maize=3, wwheat=2, soy=.5, rape=.5, sunf=.5)),
    "D044": dict(centre=(335_000, 6_700_000), dtm=(40, 15), cats=dict(grass=1.5, green=2),
                 crops=dict(maize=3, wwheat=3, rape=.5, sbarley=.5, potato=.5, wbarley=.8)),
    "D051": dict(centre=(790_000, 6_880_000), dtm=(150, 25), cats=dict(vine=1.5),
                 crops=dict(wwheat=3, wbarley=2, rape=2, beet=2, alfalfa=1, sbarley=1.5)),
    "D068": dict(centre=(1_020_000, 6_765_000), dtm=(350, 120), mountain=True,
                 cats=dict(vine=2, conif=2), crops=dict(maize=4, wwheat=2, soy=.5, beet=.5)),
    "D069": dict(centre=(835_000, 6_535_000), dtm=(400, 80), cats=dict(vine=2.5),
                 crops=dict(wwheat=2, maize=2, rape=1, sunf=1)),
    "D083": dict(centre=(960_000, 6_265_000), dtm=(250, 100), south=True,
                 cats=dict(vine=3, conif=1.5, brush=2, crop=.4, green=2),
                 crops=dict(wwheat=1, sunf=.5)),
    "D085": dict(centre=(365_000, 6_630_000), dtm=(60, 15), cats=dict(grass=1.5),
                 crops=dict(maize=3, wwheat=3, sunf=.5, rape=.5, wbarley=.8)),
}
# fmt: on


def crop_weights(code: str) -> np.ndarray:
    """Crop mix of a department as weights over phenology ids."""
    mix = DEPARTMENTS.get(code, {}).get("crops", dict(wwheat=3, wbarley=1, maize=2, rape=1, sunf=1))
    w = np.zeros(len(PHENO))
    for name, weight in mix.items():
        w[_C[name]] = weight
    return w / w.sum()
