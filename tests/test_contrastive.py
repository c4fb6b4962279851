"""Cross-modal InfoNCE and CCL-K (training.contrastive, models.ccl_kernel) on tiny tensors."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from flairlab.data.errors import DataError
from flairlab.models import ccl_kernel as ck
from flairlab.models.contrastive_losses import (
    clip_loss,
    multi_positive_rows,
    nce_rows,
    same_roi_pairs,
)
from flairlab.training.contrastive import (
    ContrastiveConfig,
    ContrastiveObjective,
    ContrastivePretrainer,
    build_contrastive,
)

torch.set_num_threads(1)
E = 8  # encoder width of the fake features
# 6 patches: ROI FF-S1-14 of D006-2020 (3), AB-1 of D006-2020 (2), and an ROI of the *same name*
# FF-S1-14 in another domain (1): ROIs are keyed DOMAIN_ROI, so it is not a same-ROI pair.
PIDS = [
    "D006-2020_FF-S1-14_5-5", "D006-2020_FF-S1-14_5-6", "D006-2020_FF-S1-14_6-5",
    "D006-2020_AB-1_1-1", "D006-2020_AB-1_1-2", "D012-2019_FF-S1-14_5-5",
]  # fmt: skip


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def features(b: int, keys=("aerial", "s2"), seed: int = 0, dtype=torch.float32) -> dict:
    """Fake encoder tokens (b, D=2, 3, 3, E) per modality, leaf tensors."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(b, 2, 3, 3, E, generator=g, dtype=dtype).requires_grad_() for k in keys}


# -- cross-modal InfoNCE ---------------------------------------------------------------------------
def test_uniform_similarities_give_log_b() -> None:
    u = unit(1, 16).expand(7, 16)
    assert torch.allclose(nce_rows(10.0 * u @ u.T), torch.full((7,), math.log(7), dtype=u.dtype))
    assert clip_loss(u, u, 14.3).item() == pytest.approx(math.log(7), abs=1e-12)
    # through the objective: identical tokens for every patch -> identical embeddings
    cfg = ContrastiveConfig(pairs=("aerial:s2",), mask_same_roi=False)
    obj = ContrastiveObjective(cfg, E)
    feats = {k: torch.randn(1, 1, 2, 2, E).expand(5, -1, -1, -1, -1) for k in ("aerial", "s2")}
    loss, logs = obj(feats, {"patch_id": PIDS[:5]})
    assert loss.item() == pytest.approx(math.log(5), abs=1e-5)
    assert logs["loss"] == pytest.approx(math.log(5), abs=1e-5)


def test_hand_computed_and_symmetry() -> None:
    u, v = unit(3, 4, seed=1), unit(3, 4, seed=2)
    s = 2.0 * u @ v.T
    manual_uv = -torch.stack([s[i, i] - torch.log(torch.exp(s[i]).sum()) for i in range(3)]).mean()
    manual_vu = -torch.stack([s[i, i] - torch.log(torch.exp(s[:, i]).sum()) for i in range(3)])
    expected = 0.5 * (manual_uv + manual_vu.mean())
    assert clip_loss(u, v, 2.0).item() == pytest.approx(expected.item(), abs=1e-12)
    assert clip_loss(u, v, 2.0).item() == pytest.approx(clip_loss(v, u, 2.0).item(), abs=1e-12)
    one_way = clip_loss(u, v, 2.0, symmetric=False).item()
    assert one_way != pytest.approx(clip_loss(v, u, 2.0, symmetric=False).item(), abs=1e-6)


def test_multi_positive_with_two_modalities_equals_symmetric_infonce() -> None:
    u, v = unit(5, 4, seed=3), unit(5, 4, seed=4)
    rows, ok = multi_positive_rows(
        torch.stack([u, v], 1), torch.stack([u, v], 1), torch.tensor(3.0)
    )
    assert ok.all() and rows.mean().item() == pytest.approx(clip_loss(u, v, 3.0).item(), abs=1e-12)
    # three modalities: both other modalities of patch i are positives (MIL-NCE)
    w = unit(5, 4, seed=5)
    z = torch.stack([u, v, w], 1)
    r = multi_positive_rows(z, z, torch.tensor(3.0))[0]
    keys = torch.cat([v, w])
    s = 3.0 * u @ keys.T
    expected0 = torch.logsumexp(s[0], 0) - torch.logsumexp(s[0, [0, 5]], 0)
    assert r[0, 0].item() == pytest.approx(expected0.item(), abs=1e-12)


def test_same_roi_masking_removes_exactly_the_same_roi_pairs() -> None:
    codes = torch.tensor([float(ck.stable_code(p.rsplit("_", 1)[0])) for p in PIDS])
    mask = same_roi_pairs(codes, codes)
    expected = {(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (3, 4), (4, 3)}
    assert {tuple(ij) for ij in mask.nonzero().tolist()} == expected
    u, v = unit(6, 4, seed=6), unit(6, 4, seed=7)
    s = 5.0 * u @ v.T
    rows = nce_rows(s, exclude=mask)
    for i in range(6):
        keep = [j for j in range(6) if (i, j) not in expected]
        assert rows[i].item() == pytest.approx((torch.logsumexp(s[i, keep], 0) - s[i, i]).item())
    # the objective masks the same pairs (8 of 6·5) and its loss uses the reduced denominators
    obj = ContrastiveObjective(ContrastiveConfig(pairs=("aerial:s2",)), E)
    feats = features(6)
    loss, logs = obj(feats, {"patch_id": PIDS})
    assert logs["masked_pair_frac"] == pytest.approx(8 / 30)
    z = obj.embed(feats)[0].double()
    s = obj.scale().double() * z[:, 0] @ z[:, 1].T
    manual = 0.5 * (nce_rows(s, exclude=mask).mean() + nce_rows(s.T, exclude=mask).mean())
    assert loss.item() == pytest.approx(manual.item(), abs=1e-5)
    unmasked = ContrastiveObjective(ContrastiveConfig(pairs=("aerial:s2",), mask_same_roi=False), E)
    unmasked.load_state_dict(obj.state_dict())
    assert unmasked(feats, {"patch_id": PIDS})[0].item() > loss.item()


def test_pooling_uses_visible_tokens_and_skips_empty_modalities() -> None:
    obj = ContrastiveObjective(ContrastiveConfig(pairs=("aerial:s2",), mask_same_roi=False), E)
    feats = features(6)
    g = torch.Generator().manual_seed(1)
    masked = {k: torch.rand(6, 2, 3, 3, generator=g) < 0.6 for k in feats}
    masked["aerial"][:, 0, 0, 0] = False
    masked["s2"][:5, 1, 2, 2] = False
    masked["s2"][5] = True  # patch 5 has no visible S2 token (MAESTRO masks whole modalities)
    z, valid = obj.embed(feats, masked)
    assert valid[:, 0].all() and valid[:, 1].tolist() == [True] * 5 + [False]
    visible = feats["aerial"][0][~masked["aerial"][0]]
    expected = F.normalize(obj.heads["aerial"](visible.mean(0)), dim=-1)
    assert torch.allclose(z[0, 0], expected, atol=1e-6)
    loss, logs = obj(feats, {"patch_id": PIDS}, masked)
    loss.backward()
    assert all(torch.isfinite(f.grad).all() for f in feats.values())
    assert logs["empty_frac"] == pytest.approx(1 / 12)
    # patch 5 is no anchor and no S2 candidate; its aerial embedding stays a negative for S2
    s = obj.scale() * z[:, 0] @ z[:, 1].T
    manual = 0.5 * (nce_rows(s[:5, :5]) + nce_rows(s.T[:5])).mean()
    assert loss.item() == pytest.approx(manual.item(), abs=1e-6)
    att = ContrastiveConfig(pairs=("aerial:s2",), pooling="attentive", multi_positive=True)
    loss, _ = ContrastiveObjective(att, E)(features(6), {"patch_id": PIDS}, masked)
    assert torch.isfinite(loss)


def test_with_the_mae_encoder_visible_tokens() -> None:
    from flairlab.models.mae import MAE
    from flairlab.models.mae_config import MAEConfig, flair_modalities

    torch.manual_seed(0)
    keys, C = ("aerial", "s2", "s1_asc"), {"aerial": 4, "s2": 10, "s1_asc": 2}
    mods = flair_modalities(keys, image_size={"aerial": 32}, n_dates={"s2": 2, "s1_asc": 2})
    model = MAE(MAEConfig(modalities=mods, size="nano"))
    batch: dict = {"patch_id": PIDS, "ref_date": torch.tensor([[[2020, 150, 10]]] * 6)}
    for k in keys:
        m = mods[k]
        batch[k] = torch.randn(6, m.n_dates, C[k], m.image_size, m.image_size)
        batch[f"{k}_dates"] = torch.tensor(
            [[[2020, 100 + 9 * d, 10] for d in range(m.n_dates)]] * 6
        )
    cfg = ContrastiveConfig(kind="cclk", pairs=("aerial:s2", "aerial:s1_asc"))
    objective = ContrastiveObjective(cfg, model.embed_dim)
    out = model(batch, return_features="final")  # one pass: MAE loss + visible-token features
    loss_c, logs = objective(out.features, batch, masked=out.masks)
    (out.loss + 0.5 * loss_c).backward()
    assert torch.isfinite(loss_c) and logs["global_batch"] == 6
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    only = ContrastivePretrainer(MAE(MAEConfig(modalities=mods, size="nano")), ContrastiveConfig(
        pairs=("aerial:s2",)))  # fmt: skip
    loss, logs = only(batch)  # contrastive-only: all tokens, no masking
    assert torch.isfinite(loss) and logs["empty_frac"] == 0


def test_learnable_temperature_is_clamped_and_one_step_lowers_the_loss() -> None:
    class Enc(torch.nn.Module):
        embed_dim = E

        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.ModuleDict({k: torch.nn.Linear(3, E) for k in ("aerial", "s1_asc")})

        def forward_features(self, batch):
            return {k: self.lin[k](batch[k].movedim(2, -1)) for k in self.lin}

    torch.manual_seed(0)
    cfg = ContrastiveConfig(pairs=("aerial:s1_asc",), pooling="attentive", pool_heads=2, head="mlp")
    model = ContrastivePretrainer(Enc(), cfg)
    x = torch.randn(6, 1, 3, 4, 4)
    batch = {"aerial": x, "s1_asc": x + 0.1 * torch.randn_like(x), "patch_id": PIDS}
    opt = torch.optim.SGD(model.parameters(), lr=0.005)
    loss0, logs = model(batch)
    assert logs["temperature"] == pytest.approx(0.07, rel=1e-5)
    loss0.backward()
    assert model.objective.logit_scale.grad is not None
    opt.step()
    assert model(batch)[0].item() < loss0.item()
    with torch.no_grad():
        model.objective.logit_scale.fill_(10.0)
    assert model(batch)[1]["temperature"] == pytest.approx(cfg.temperature_min, rel=1e-5)


def test_low_temperature_under_bf16_autocast_stays_float32() -> None:
    cfg = ContrastiveConfig(pairs=("aerial:s2",), temperature=0.01, mask_same_roi=False)
    obj = ContrastiveObjective(cfg, E)
    feats = features(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = obj(feats, {"patch_id": PIDS})
        z = obj.embed(feats)[0]
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(feats["aerial"].grad).all()
    assert loss.item() == pytest.approx(clip_loss(z[:, 0], z[:, 1], 100.0).item(), rel=1e-5)


def test_config_validation() -> None:
    cfg = ContrastiveConfig.from_dict({"kind": "cclk", "pairs": "aerial:s2, s2:s1_asc"})
    assert build_contrastive({"kind": "cclk"}, E).cfg.variant == "fair"
    assert cfg.pairs == ("aerial:s2", "s2:s1_asc") and cfg.condition == "domain"
    assert cfg.lam == 0.01 and cfg.modalities == ("aerial", "s2", "s1_asc")
    assert ContrastiveConfig(kind="cclk", variant="hard").lam == 100.0
    for bad in (
        {"temprature": 0.1},
        {"weight": 1.0},  # the weight belongs to the training loop (train.contrastive_weight)
        {"pairs": ("aerial:aerial",)},
        {"pairs": ("aerial:s2", "s2:aerial")},
        {"kind": "cclk", "variant": "hard", "condition": "domain"},
        {"kind": "cclk", "multi_positive": True},
        {"temperature": 5.0},
    ):
        with pytest.raises(DataError):
            ContrastiveConfig.from_dict(bad)
    with pytest.raises(DataError, match="features"):
        ContrastiveObjective(ContrastiveConfig(), E)(features(6), {"patch_id": PIDS})


# -- CCL-K -----------------------------------------------------------------------------------------
GROUPS = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 4])  # sizes 3, 2, 1, 4, 2


def test_indicator_weights_reduce_to_within_group_average() -> None:
    K = ck.indicator_kernel(GROUPS)
    m = K.sum(1)
    for lam in (1e-6, 0.01, 1.0):
        W = ck.ridge_weights(K, lam)
        assert torch.allclose(W, K / (m[:, None] + lam), atol=1e-9)
    W = ck.ridge_weights(K, 1e-8)
    Kxy = torch.exp(3.0 * unit(12, 4, seed=8) @ unit(12, 4, seed=9).T)
    same = K.bool()
    within_mean = torch.stack([Kxy[i, same[i]].mean() for i in range(12)])
    assert torch.allclose(torch.diagonal(Kxy @ W), within_mean, rtol=1e-6)
    w0, _ = ck.anchor_weights(W, 0, 12)
    others = torch.stack(
        [(Kxy[i] * (same[i] & (torch.arange(12) != i))).sum() / m[i] for i in range(12)]
    )
    assert torch.allclose((Kxy * w0).sum(1), others, rtol=1e-6)
    assert torch.allclose(w0.sum(1), (m - 1) / m, rtol=1e-6)  # the singleton group has mass 0
    # Fair-CCLK row == explicit Fair-InfoNCE denominator from same-group negatives, × (b-1)/m
    s_xy, s_xx = 3.0 * unit(12, 4, seed=8) @ unit(12, 4, seed=9).T, torch.zeros(12, 12)
    s_xx = 3.0 * unit(12, 4, seed=8) @ unit(12, 4, seed=8).T
    rows = ck.cclk_rows(s_xy, s_xx, w0, "fair")
    for i in (0, 3, 6):
        neg = [j for j in range(12) if same[i, j] and j != i]
        den = s_xy[i, i].exp() + 11 / m[i] * (s_xy[i, neg].exp().sum() + s_xx[i, neg].exp().sum())
        assert rows[i].item() == pytest.approx((den.log() - s_xy[i, i]).item(), rel=1e-6)


def test_lambda_to_infinity_and_unconditional_limits() -> None:
    z = torch.linspace(0, 5, 9)
    K = ck.rbf_kernel(z[:, None], bandwidth=1.5)[0]
    masses = []
    for lam in (1.0, 10.0, 1e3, 1e6):
        W = ck.ridge_weights(K, lam)
        assert torch.allclose(W, W.T, atol=1e-10)
        assert torch.allclose(
            W,
            torch.eye(9, dtype=W.dtype)
            - lam * torch.linalg.inv(K + lam * torch.eye(9, dtype=W.dtype)),
            atol=1e-10,
        )
        ev = torch.linalg.eigvalsh((W + W.T) / 2)
        assert ev.min() > -1e-10 and ev.max() < 1
        assert (lam * W - K).abs().max() <= 1.01 * torch.linalg.matrix_norm(K, 2) ** 2 / lam
        masses.append(ck.anchor_weights(W, 0, 9)[0].sum(1).mean().item())
    assert masses == sorted(masses, reverse=True) and masses[-1] < 1e-5
    # W -> 0 as λ -> ∞: the Fair-CCLK denominator collapses to the positive (loss -> 0)
    s = 2.0 * unit(9, 4, seed=10) @ unit(9, 4, seed=11).T
    w0 = ck.anchor_weights(ck.ridge_weights(K, 1e12), 0, 9, threshold=0.0)[0]
    assert ck.cclk_rows(s, s, w0, "fair").abs().max() < 1e-9
    # constant z, λ -> 0: Fair-CCLK negatives = (b-1)/(b+λ)·Σ_{j≠i} e^{s_ij}, i.e. InfoNCE's
    b, lam = 9, 1e-9
    w0 = ck.anchor_weights(ck.ridge_weights(torch.ones(b, b, dtype=torch.float64), lam), 0, b)[0]
    off = ~torch.eye(b, dtype=torch.bool)
    assert torch.allclose(
        (s.exp() * w0).sum(1) * (b - 1), (b - 1) / (b + lam) * (s.exp() * off).sum(1)
    )
    # all-distinct z: W0 = 0, every anchor is an orphan; reported and replaced by plain InfoNCE
    cfg = ContrastiveConfig(kind="cclk", pairs=("aerial:s2",), mask_same_roi=False)
    obj = ContrastiveObjective(cfg, E)
    pids = [f"D0{10 + i}-2020_AB-1_1-1" for i in range(5)]
    feats = features(5)
    loss, logs = obj(feats, {"patch_id": pids})
    assert logs["w_orphan_frac"] == 1.0 and logs["w_offdiag_mass"] == 0.0
    z = obj.embed(feats)[0]
    assert loss.item() == pytest.approx(clip_loss(z[:, 0], z[:, 1], obj.scale()).item(), abs=1e-6)


def test_weights_carry_no_gradient() -> None:
    zc = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    K = ck.rbf_kernel(zc, bandwidth=1.0)[0]
    W = ck.ridge_weights(K, 0.1)
    assert not W.requires_grad and W.grad_fn is None
    s = 2.0 * unit(6, 4, seed=12).requires_grad_()
    loss = ck.cclk_rows(s @ s.T, s @ s.T, ck.anchor_weights(W, 0, 6)[0], "fair").mean()
    loss.backward()
    assert zc.grad is None
    # opt-in gradient through the solve is correct
    Kg = torch.rand(5, 5, dtype=torch.float64)
    Kg = (Kg @ Kg.T).requires_grad_()
    assert torch.autograd.gradcheck(lambda k: ck.ridge_weights(k, 0.5, grad=True), (Kg,))


def test_negative_ridge_weights_are_clipped() -> None:
    K = ck.rbf_kernel(torch.linspace(0, 10, 40)[:, None], bandwidth=2.0)[0]
    W = ck.ridge_weights(K, 1e-3)
    w0, stats = ck.anchor_weights(W, 0, 40)
    assert (W < 0).any() and stats["w_neg_frac"].item() > 0.05
    assert (w0 >= 0).all() and (w0.diagonal() == 0).all()


def test_condition_kernels_from_a_batch() -> None:
    doy = torch.tensor([[2020, 2, 10], [2020, 364, 10], [2020, 182, 10]])[:, None]
    z = ck.condition_values({"ref_date": doy}, "doy")
    K = ck.condition_kernel(z, "doy", bandwidth=10.0)
    assert K[0, 1].item() > 0.8 and K[0, 2].item() < 1e-6  # 2 Jan ~ 30 Dec, not ~ July
    pos = ck.condition_kernel(
        ck.condition_values({"patch_id": PIDS}, "position"), "position", 102.4
    )
    assert pos[0, 1].item() == pytest.approx(math.exp(-0.5)) and pos[0, 5].item() == 0.0
    assert pos[0, 3].item() == 0.0  # other ROI of the same domain
    dom = ck.condition_kernel(ck.condition_values({"patch_id": PIDS}, "domain"), "domain")
    assert dom[0, 4].item() == 1.0 and dom[0, 5].item() == 0.0
    lab = torch.tensor([[[0, 0], [1, 255]], [[1, 1], [0, 255]], [[255, 255], [255, 255]]])
    h = ck.label_histogram(lab, 15)
    assert h[0, :2].tolist() == pytest.approx([2 / 3, 1 / 3]) and h[2].sum() == 0
    with pytest.raises(DataError, match="cosia"):
        ck.label_histogram(torch.tensor([[[15]]]), 15, name="cosia")


def test_weak_labels_guard_train_split_and_eval() -> None:
    lab = torch.zeros(6, 4, 4, dtype=torch.long)
    lab[:3, :2] = 3
    lab[5] = 9  # patch 5 shares no class with the others: no conditional partner
    cfg = ContrastiveConfig(kind="cclk", variant="weak", pairs=("aerial:s2",), mask_same_roi=False)
    obj = ContrastiveObjective(cfg, E)
    batch = {"patch_id": PIDS, "cosia": lab}
    loss, logs = obj(features(6), batch)
    assert torch.isfinite(loss) and logs["cclk_active"] == 1.0
    assert logs["w_orphan_frac"] == pytest.approx(1 / 6)
    loss.backward()
    with pytest.raises(DataError, match="split"):
        obj(features(6), {**batch, "split": ["train"] * 5 + ["valid"]})
    obj.eval()  # never conditions on labels outside training: plain InfoNCE, flagged in the logs
    assert obj(features(6), batch)[1]["cclk_active"] == 0.0


@pytest.mark.parametrize(
    ("variant", "condition"),
    [("fair", "domain"), ("fair", "doy"), ("fair", "position"), ("weak", "position"),
     ("hard", "embedding")],
)  # fmt: skip
def test_cclk_objective_trains(variant: str, condition: str) -> None:
    cfg = ContrastiveConfig(kind="cclk", variant=variant, condition=condition,
                            pairs=("aerial:s2", "aerial:s1_asc"))  # fmt: skip
    obj = ContrastiveObjective(cfg, E)
    feats = features(6, keys=("aerial", "s2", "s1_asc"))
    doy = torch.tensor([[[2020, d, 11]] for d in (120, 125, 200, 201, 330, 90)])
    loss, logs = obj(feats, {"patch_id": PIDS, "ref_date": doy})
    loss.backward()
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in logs.values())
    assert all(torch.isfinite(f.grad).all() for f in feats.values())
    assert {"w_offdiag_mass", "w_orphan_frac", "w_neg_frac", "loss_aerial_s2"} <= set(logs)


# -- gathering across 2 processes ------------------------------------------------------------------
CONFIGS = [
    dict(pairs=("aerial:s2",)),
    dict(pairs=("aerial:s2",), multi_positive=True),
    dict(kind="cclk", pairs=("aerial:s2",), condition="domain", lam=0.1),
]
SPLIT = 4  # rank 0 gets patches 0-3, rank 1 patches 4-5 (uneven on purpose)


def _run(cfg_kwargs: dict, feats: dict, pids: list[str]):
    torch.manual_seed(0)
    obj = ContrastiveObjective(ContrastiveConfig(**cfg_kwargs), E).double()
    loss, logs = obj(feats, {"patch_id": pids})
    loss.backward()
    return obj, loss, logs


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, 6)
        result = {}
        for c, kw in enumerate(CONFIGS):
            full = features(6, dtype=torch.float64)
            feats = {k: v[rows].detach().clone().requires_grad_() for k, v in full.items()}
            obj, _, logs = _run(kw, feats, PIDS[rows])
            grads = torch.cat([p.grad.flatten() for p in obj.parameters()])
            dist.all_reduce(grads)  # what DDP does: average the parameter gradients
            result[f"loss{c}"] = torch.tensor(logs["loss"], dtype=torch.float64)
            result[f"grads{c}"] = grads / 2
            for k, f in feats.items():
                result[f"feat{c}_{k}"] = f.grad
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_across_two_processes_equals_single_process(tmp_path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for c, kw in enumerate(CONFIGS):
        feats = features(6, dtype=torch.float64)
        obj, loss, _ = _run(kw, feats, PIDS)
        for r in (0, 1):  # logged loss = the global loss; DDP-averaged grads = single-process grads
            assert got[r][f"loss{c}"].item() == pytest.approx(loss.item(), abs=1e-12)
            ref = torch.cat([p.grad.flatten() for p in obj.parameters()])
            assert torch.allclose(got[r][f"grads{c}"], ref, atol=1e-12)
        # each rank's own rows receive world_size × their gradient of the global loss
        for k, f in feats.items():
            assert torch.allclose(got[0][f"feat{c}_{k}"], 2 * f.grad[:SPLIT], atol=1e-12)
            assert torch.allclose(got[1][f"feat{c}_{k}"], 2 * f.grad[SPLIT:], atol=1e-12)
