"""MAESTRO model: geometry (spec R1), sizes (R2), embeddings, masking, targets and loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flairlab.data.errors import DataError
from flairlab.models.mae import (
    MAE,
    count_parameters,
    date_encoding,
    patch_stats,
    patchify,
    pooled_pe,
    sincos_grid,
    unpatchify,
)
from flairlab.models.mae_config import FUSION_MODES, MAEConfig, ModalityConfig, flair_modalities
from flairlab.models.masking import MaskSpec, n_masked, random_masking, structured_proposal

torch.set_num_threads(1)

TREESAT = {
    "aerial": ModalityConfig(300, 20),
    "s2": ModalityConfig(6, 2, 16),
    "s1_asc": ModalityConfig(6, 2, 4),
    "s1_desc": ModalityConfig(6, 2, 4),
}
PASTIS = {
    "spot": ModalityConfig(160, 16, in_chans=3, norm_bands=[[0, 1, 2]]),
    "s2": ModalityConfig(16, 2, 16),
    "s1_asc": ModalityConfig(16, 2, 4),
    "s1_desc": ModalityConfig(16, 2, 4),
}


def small_config(**kw) -> MAEConfig:
    """nano-width, 2 blocks, FLAIR modalities at CPU sizes (aerial 32 px → 2×2 tokens...)."""
    mods = flair_modalities(
        image_size={"aerial": 32, "dem": 32},
        patch_size={"aerial": 8, "dem": 16},
        n_dates={"s2": 3, "s1_asc": 2, "s1_desc": 2},
    )
    base = dict(modalities=mods, size="nano", depth=2, inter_depth=1, decoder_dim=64)
    return MAEConfig(**{**base, **kw})


def random_batch(cfg: MAEConfig, B: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch: dict = {"ref_date": torch.tensor([[[2021, 180, 0]]] * B), "patch_id": ["a", "b"][:B]}
    for k, m in cfg.modalities.items():
        batch[k] = torch.randn(B, m.n_dates, m.in_chans, m.image_size, m.image_size, generator=g)
        dates = torch.zeros(B, m.n_dates, 3, dtype=torch.int64)
        dates[..., 0] = 2021
        dates[..., 1] = torch.randint(1, 366, (B, m.n_dates), generator=g)
        batch[f"{k}_dates"] = dates
    return batch


# -- geometry (R1) -------------------------------------------------------------------------
def test_flairhub_default_geometry_tokens():
    c = MAEConfig()
    assert [c.token_grid(k) for k in c.modalities] == [32, 16, 5, 5, 5]
    assert c.n_tokens() == 1880 and c.n_visible() == 470
    assert list(c.units) == ["aerial", "dem", "s2", "s1"]
    assert c.units["s1"] == ["s1_asc", "s1_desc"]


def test_treesat_and_pastis_tokens():
    t = MAEConfig(modalities=TREESAT, tile_m=60, pe_grid=96)
    assert t.n_tokens() == 441 and t.n_visible() == 110
    masked = {
        u: n_masked(sum(G * D * N for G, D, N in lay), 1, MaskSpec())
        for u, lay, _ in t.mask_units()
    }
    assert masked == {"aerial": 169, "s2": 108, "s1": 54}
    p = MAEConfig(modalities=PASTIS, tile_m=160, pe_grid=256)
    assert p.n_tokens() == 1636 and p.n_visible() == 409
    # shared / monotemp: one 9-token sequence per date → 7 masked (0.778)
    s = MAEConfig(modalities=TREESAT, tile_m=60, pe_grid=96, fusion_mode="shared")
    assert s.n_visible() == 225 - 169 + (16 + 4 + 4) * (9 - 7)


def test_config_errors_name_the_field():
    with pytest.raises(DataError, match=r"modalities\.aerial\.patch_size"):
        MAEConfig(modalities={"aerial": ModalityConfig(100, 16)})
    with pytest.raises(DataError, match="inter_depth"):
        MAEConfig(inter_depth=12)
    with pytest.raises(DataError, match="fusion_mode"):
        MAEConfig(fusion_mode="early")
    with pytest.raises(DataError, match="unknown fields"):
        MAEConfig.from_dict({"sise": "tiny"})
    with pytest.raises(DataError, match=r"modalities\.s2\.bands"):
        MAEConfig(modalities={"s2": ModalityConfig(10, 2, 2, bands=[[0, 1], [2]])})
    c = MAEConfig(fusion_mode="group")
    assert c.inter_depth == 0 and c.encoder_depth == 12
    assert MAEConfig.from_dict(MAEConfig().to_dict()) == MAEConfig()


def test_norm_groups_follow_model_band_order():
    c = MAEConfig()
    assert c.modalities["aerial"].norm_bands == [[0], [1, 2, 3]]  # NIR | R, G, B
    assert c.modalities["s2"].norm_bands == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert c.modalities["s1_asc"].norm_bands == [[0], [1]]
    assert c.modalities["dem"].norm_bands == [[0, 1]]


# -- sizes (R2) ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mods", "size", "mode", "enc", "dec"),
    [
        (None, "tiny", "inter-group", 12.2, 9.4),
        (None, "medium", "shared", 87.4, 14.6),
        (None, "medium", "monotemp", 427.6, 66.6),
        (None, "medium", "mod", 427.6, 66.6),
        (None, "medium", "group", 342.5, 53.6),
        (None, "medium", "inter-group", 278.8, 53.6),
        ("treesat", "tiny", "inter-group", 9.22, 6.7),
        ("treesat", "small", "inter-group", 36.1, 17.2),
        ("treesat", "medium", "inter-group", 213.9, 39.8),
    ],
)
def test_parameter_counts_match_reference(mods, size, mode, enc, dec):
    kw = dict(modalities=TREESAT, tile_m=60, pe_grid=96) if mods else {}
    with torch.device("meta"):
        model = MAE(MAEConfig(size=size, fusion_mode=mode, **kw))
    n = count_parameters(model)
    digits = 2 if enc == 9.22 else 1
    assert round(n["encoder"] / 1e6, digits) == enc
    assert round(n["decoder"] / 1e6, 1) == dec


# -- embeddings ------------------------------------------------------------------------------
@pytest.mark.parametrize(("P", "g", "dim"), [(160, 32, 192), (160, 5, 512), (96, 15, 192)])
def test_pooled_pe_is_the_footprint_mean_of_the_fine_grid(P, g, dim):
    fine = sincos_grid(P, dim).double()
    assert fine[..., -8:].abs().max() == 0
    k = round(P / g)
    if P % g == 0:  # plain mean over each token's k × k cells
        ref = fine.reshape(g, k, g, k, dim).mean((1, 3)).reshape(g * g, dim)
    else:  # TreeSatAI aerial: 96 → 90 bilinear, then 6 × 6 means
        m = F.interpolate(fine.permute(2, 0, 1)[None], size=(g * k,) * 2, mode="bilinear")
        ref = F.avg_pool2d(m, k)[0].permute(1, 2, 0).reshape(g * g, dim)
    pe = pooled_pe(P, g, dim)
    assert pe.shape == (g * g, dim)
    torch.testing.assert_close(pe.double(), ref, atol=1e-6, rtol=0)
    n = (dim - 8) // 4  # sin(x·ω_0) of cell column x with ω_0 = 1
    assert math.isclose(float(fine[3, 7, 0]), math.sin(7.0), abs_tol=1e-6)
    assert math.isclose(float(fine[3, 7, 2 * n]), math.sin(3.0), abs_tol=1e-6)


def test_date_encoding():
    dates = torch.tensor([[[2021, 180, 0], [2022, 90, 6]]])
    ref = torch.tensor([[[2021, 180, 0]]])
    enc = date_encoding(dates, ref, 64)
    assert enc.shape == (1, 2, 64) and enc[..., :56].abs().max() == 0
    assert enc[0, 0, 56:60].abs().max() == 0  # Δ = 0 at the reference date
    delta = 1 + (90 - 180) / 365.25
    torch.testing.assert_close(enc[0, 1, 56:60], torch.full((4,), delta))
    phi, psi = 2 * math.pi * 90 / 365.25, 2 * math.pi * 6 / 24
    want = torch.tensor([math.sin(phi), math.cos(phi), math.sin(psi), math.cos(psi)])
    torch.testing.assert_close(enc[0, 1, 60:], want.float())
    assert date_encoding(dates, ref, 64, scale=0.0).abs().max() == 0


def test_patchify_roundtrip_and_layout():
    x = torch.randn(2, 3, 5, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 3, 4, 16, 5)
    torch.testing.assert_close(unpatchify(p, 4), x)
    # token 1 = row 0, col 1; pixel index = row_in_patch·p + col_in_patch; band last
    assert p[0, 0, 1, 2 * 4 + 3, 4] == x[0, 0, 4, 2, 4 + 3]


# -- masking (§5) ----------------------------------------------------------------------------
def test_exact_mask_counts_per_group_and_sample():
    c = small_config(mask_mod=0.5, mask_dates=0.5, mask_loc=0.5)
    model = MAE(c)
    torch.manual_seed(0)
    masks = model.mask(B=16, device=torch.device("cpu"))
    for u, layout, _ in c.mask_units():
        mask, keep = masks[u]
        L = sum(G * D * N for G, D, N in layout)
        M = round(0.75 * L)
        assert mask.shape == (16, L) and (mask.sum(1) == M).all()
        assert keep.shape == (16, L - M) and (keep.diff(dim=1) > 0).all()
        assert not mask.gather(1, keep).any()
    assert len({tuple(r.tolist()) for r in masks["s2"][0]}) > 1  # samples differ


def test_structured_semantics():
    spec = MaskSpec(p_mod=1.0, p_dates=0.0, p_loc=0.0)
    # a single-modality group never drops its modality
    assert not structured_proposal([(1, 1, 16)], 8, spec).any()
    # two modalities: each is dropped whole or not at all, never both
    prop = structured_proposal([(1, 2, 9), (1, 2, 9)], 64, MaskSpec(p_mod=0.5, p_dates=0, p_loc=0))
    a, b = prop[:, :18], prop[:, 18:]
    assert ((a.all(1) | ~a.any(1)) & (b.all(1) | ~b.any(1))).all()
    assert not (a.all(1) & b.all(1)).any() and a.any() and b.any()
    # dates: whole (date) frames; tubes: the same locations at every date
    d = structured_proposal([(1, 4, 9)], 64, MaskSpec(p_mod=0, p_dates=0.5, p_loc=0))
    d = d.view(64, 4, 9)
    assert (d.all(2) | ~d.any(2)).all()
    t = structured_proposal([(1, 4, 9)], 64, MaskSpec(p_mod=0, p_dates=0, p_loc=0.5)).view(64, 4, 9)
    assert (t == t[:, :1]).all()
    with pytest.raises(ValueError, match="redraws"):
        structured_proposal([(1, 2, 4)], 2, MaskSpec(p_mod=0, p_dates=0, p_loc=1.0))


def test_structured_tokens_are_masked_first():
    layout, spec = [(1, 4, 25), (1, 4, 25)], MaskSpec()
    prop = structured_proposal(layout, 256, spec, generator=torch.Generator().manual_seed(3))
    mask, _ = random_masking(layout, 256, spec, generator=torch.Generator().manual_seed(3))
    M = round(0.75 * 200)
    under = prop.sum(1) <= M
    assert under.any() and (~under).any()
    assert (mask[under] | ~prop[under]).all()  # all structured tokens masked
    assert (prop[~under] | ~mask[~under]).all()  # over quota: only structured ones masked


def test_per_date_modes_mask_each_date_without_structure():
    c = MAEConfig(modalities=TREESAT, tile_m=60, pe_grid=96, fusion_mode="shared", size="nano")
    with torch.device("meta"):
        model = MAE(c)
    torch.manual_seed(0)
    masks = model.mask(B=3, device=torch.device("cpu"))
    assert masks["s2"][0].shape == (3 * 16, 9) and (masks["s2"][0].sum(1) == 7).all()
    assert masks["aerial"][0].shape == (3, 225) and (masks["aerial"][0].sum(1) == 169).all()


# -- targets and loss (§6.3) -----------------------------------------------------------------
def test_normalised_targets_per_patch_date_and_band_group():
    c = small_config()
    model = MAE(c)
    batch = random_batch(c)
    batch["aerial"][:, :, :, :8, :8] = 0.5  # a constant patch (token 0) → zeros, no NaN
    out = model(batch)
    for key in ("aerial", "s2"):
        m = c.modalities[key]
        t = out.target_patches[key]  # (B, D, N, p·p, C)
        x = batch[key]
        p = m.patch_size
        for b, d, (r, col) in [(0, 0, (0, 0)), (1, m.n_dates - 1, (1, 1)), (0, 0, (0, 1))]:
            n = r * m.grid + col
            patch = x[b, d, :, r * p : (r + 1) * p, col * p : (col + 1) * p]  # (C, p, p)
            for grp in m.norm_bands:
                v = patch[grp]
                want = (v - v.mean()) / torch.sqrt(v.var(unbiased=True) + 1e-6)
                got = t[b, d, n, :, grp].reshape(p, p, len(grp)).permute(2, 0, 1)
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert out.target_patches["aerial"][:, 0, 0].abs().max() == 0
    assert torch.isfinite(out.target_patches["aerial"]).all()
    mu, var = patch_stats(out.target_patches["s2"], c.modalities["s2"].norm_bands)
    assert mu.abs().max() < 1e-5 and ((var - 1).abs() < 1e-3).all()


def test_loss_depends_only_on_masked_tokens():
    c = small_config()
    model = MAE(c)
    batch = random_batch(c)
    torch.manual_seed(1)
    out = model(batch)
    grads = torch.autograd.grad(out.loss, list(out.pred_patches.values()))
    for (k, g), mask in zip(
        zip(out.pred_patches, grads, strict=True), out.masks.values(), strict=True
    ):
        tok = mask.flatten(2)  # (B, D, N) for joint tokens
        assert g[~tok].abs().max() == 0, k
        assert g[tok].abs().sum() > 0, k
    # direct check on one modality: perturbing decoded visible tokens leaves the loss unchanged
    dec = torch.randn(2, 3, 25, c.decoder_dim)
    mask = torch.rand(2, 3, 25) < 0.75
    x = batch["s2"]
    loss = model._modality_loss("s2", x, dec, mask)[2]
    dec2 = dec + 10 * (~mask)[..., None] * torch.randn_like(dec)
    assert model._modality_loss("s2", x, dec2, mask)[2] == loss
    dec3 = dec + 10 * mask[..., None] * torch.randn_like(dec)
    assert model._modality_loss("s2", x, dec3, mask)[2] != loss


def test_total_loss_weights_modalities_by_token_count():
    c = small_config()
    out = MAE(c)(random_batch(c))
    w = {k: m.n_tokens for k, m in c.modalities.items()}
    want = sum(w[k] * out.per_modality_loss[k] for k in w) / sum(w.values())
    torch.testing.assert_close(out.loss, want)


# -- forward / backward ----------------------------------------------------------------------
@pytest.mark.parametrize("mode", FUSION_MODES)
def test_forward_backward_every_fusion_mode(mode):
    c = small_config(fusion_mode=mode)
    model = MAE(c)
    batch = random_batch(c)
    out = model(batch, return_features="final")
    out.loss.backward()
    assert torch.isfinite(out.loss) and 0.3 < out.loss.item() < 3
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert list(model.encoders) == list(c.units)
    assert (model.inter is not None) == mode.startswith("inter-")
    for k, m in c.modalities.items():
        assert out.reconstructions[k].shape == batch[k].shape
        assert out.targets[k].shape == batch[k].shape
        assert out.masks[k].shape == (2, m.n_dates, m.grid, m.grid)
        nonzero = out.features[k].abs().sum(-1) > 0
        assert torch.equal(nonzero, ~out.masks[k])  # features only at visible tokens
    with torch.no_grad():
        feats = model.forward_features(batch)
    for k, m in c.modalities.items():
        assert feats[k].shape == (2, m.n_dates, m.grid, m.grid, model.embed_dim)
        assert model.token_grid(k) == m.grid


def test_band_group_tokens_and_band_masking():
    mods = flair_modalities(
        ("aerial", "s2"), image_size={"aerial": 32}, patch_size={"aerial": 8}, n_dates={"s2": 2}
    )
    mods["s2"].bands = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    c = MAEConfig(
        modalities=mods, size="nano", depth=2, inter_depth=1, decoder_dim=64, mask_bands=0.3
    )
    assert c.modalities["s2"].n_slices == 6 and c.n_tokens() == 16 + 6 * 25
    model = MAE(c)
    batch = random_batch(c)
    out = model(batch)
    out.loss.backward()
    assert out.masks["s2"].shape == (2, 6, 5, 5)
    assert out.reconstructions["s2"].shape == batch["s2"].shape
    assert model.forward_features(batch)["s2"].shape == (2, 6, 5, 5, 96)


def test_a_unit_with_no_visible_token_still_trains():
    c = small_config(
        modalities=flair_modalities(
            ("aerial", "dem"),
            image_size={"aerial": 32, "dem": 32},
            patch_size={"aerial": 8, "dem": 32},
        )
    )
    assert c.n_visible() == 4  # dem: 1 token, round(0.75) = 1 masked
    model = MAE(c)
    out = model(random_batch(c))
    out.loss.backward()
    assert out.masks["dem"].all() and torch.isfinite(out.loss)


def test_batch_errors_name_the_key():
    c = small_config()
    model = MAE(c)
    batch = random_batch(c)
    batch["s2"] = batch["s2"][:, :2]
    with pytest.raises(DataError, match=r"batch\['s2'\] shape"):
        model(batch)
    del batch["dem"]
    with pytest.raises(DataError, match="dem"):
        model.forward_features(batch)


def test_unnormalise_inverts_the_target_normalisation():
    c = small_config()
    model = MAE(c)
    batch = random_batch(c)
    out = model(batch)
    back = model.unnormalise("aerial", batch["aerial"], out.target_patches["aerial"])
    torch.testing.assert_close(back, batch["aerial"], atol=1e-4, rtol=1e-4)
