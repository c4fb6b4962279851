"""Heads (shapes at 0.2 m, parameter counts of R2, locality) and metrics on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flairlab.models.heads import (
    AttentivePooling,
    ClassificationHead,
    SegmentationHead,
    reference_grid,
    tokens_on_grid,
)
from flairlab.training.metrics import MultilabelMetrics, SegmentationMetrics, metrics_from_confusion

torch.set_num_threads(1)


def flair_features(B: int = 1, E: int = 192) -> dict[str, torch.Tensor]:
    """FLAIR-HUB default token maps (R1): aerial 32², dem 16², s2 16×5², s1 4×5² each."""
    shapes = {"aerial": (1, 32), "dem": (1, 16), "s2": (16, 5), "s1_asc": (4, 5), "s1_desc": (4, 5)}
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(B, D, s, s, E, generator=g) for k, (D, s) in shapes.items()}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_segmentation_head_flair_geometry_r5():
    feats = flair_features(B=1)
    assert tokens_on_grid(feats, 32).shape == (1, 32, 32, 26, 192)  # K = 1+1+16+4+4
    head = SegmentationHead(192, 15, grid=reference_grid(feats), out_size=512)
    assert head.p == 16
    with torch.no_grad():
        out = head(feats)
    assert out.shape == (1, 15, 512, 512)  # R5 (B, 1, 15, 512, 512) without the date axis
    assert round(n_params(head) / 1e6, 1) == 0.8  # R2: FLAIR-HUB tiny head 0.8 M
    assert round(n_params(SegmentationHead(768, 15, 32, 512)) / 1e6, 1) == 4.1  # medium


def test_segmentation_head_small_grid_and_bad_size():
    feats = {"aerial": torch.randn(2, 1, 8, 8, 32), "s2": torch.randn(2, 3, 2, 2, 32)}
    out = SegmentationHead(32, 4, grid=8, out_size=64)(feats)
    assert out.shape == (2, 4, 64, 64)
    assert reference_grid({"s2": feats["s2"]}) == 2
    with pytest.raises(ValueError, match="multiple"):
        SegmentationHead(32, 4, grid=8, out_size=60)


def test_segmentation_logits_are_local_to_their_cell():
    torch.manual_seed(0)
    head = SegmentationHead(32, 3, grid=8, out_size=32).eval()  # p = 4
    x = torch.randn(1, 1, 8, 8, 32)
    y = torch.randn(1, 2, 8, 8, 32)
    base = head({"aerial": x, "other": y})
    x2 = x.clone()
    x2[0, 0, 3, 5] += 1.0  # perturb the aerial token of cell (3, 5) only
    changed = (head({"aerial": x2, "other": y}) - base).abs().sum(1)[0] > 0
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[12:16, 20:24] = True
    assert torch.equal(changed, expected)


def test_attentive_pooling_permutation_invariant_and_classification_shape():
    torch.manual_seed(0)
    pool = AttentivePooling(64)
    x = torch.randn(3, 10, 64)
    perm = torch.randperm(10)
    torch.testing.assert_close(pool(x), pool(x[:, perm]))
    assert pool(x).shape == (3, 64)
    with pytest.raises(ValueError):
        AttentivePooling(60, heads=8)
    # TreeSatAI geometry (R1/R5): aerial 15², s2 16×3², s1 4×3² ×2 -> logits (B, 15); head 0.08 M
    feats = {
        "aerial": torch.randn(2, 1, 15, 15, 192),
        "s2": torch.randn(2, 16, 3, 3, 192),
        "s1_asc": torch.randn(2, 4, 3, 3, 192),
        "s1_desc": torch.randn(2, 4, 3, 3, 192),
    }
    head = ClassificationHead(192, 15)
    assert head(feats).shape == (2, 15)
    assert round(n_params(head) / 1e6, 2) == 0.08


# -- metrics ----------------------------------------------------------------------------------
def test_metrics_hand_made_case_with_ignored_and_absent_classes():
    target = torch.tensor([[0, 0, 1, 1, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 3, 0]])  # class 3 predicted but absent from the targets
    m = SegmentationMetrics(4)
    m.update(pred, target)
    r = m.compute()
    assert r["confusion"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert r["present"] == [0, 1, 2]
    # by hand: IoU0 = 1/2, IoU1 = 2/3, IoU2 = 0; class 3 has no support -> not averaged
    assert r["miou"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert r["oa"] == pytest.approx(3 / 5)  # the ignored pixel is not counted
    assert r["mean_f1"] == pytest.approx((2 / 3 + 4 / 5 + 0) / 3)
    assert r["weighted_f1"] == pytest.approx((2 / 3 * 2 + 4 / 5 * 2 + 0 * 1) / 5)
    assert r["per_class"]["3"]["support"] == 0 and r["per_class"]["3"]["iou"] == 0.0


def test_metrics_accumulate_over_epoch_and_accept_logits():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, 6, 6, generator=g)
    target = torch.randint(0, 5, (4, 6, 6), generator=g)
    target[0, :2] = 255
    whole = SegmentationMetrics(5)
    whole.update(logits, target)
    parts = SegmentationMetrics(5)
    for i in range(4):
        parts.update(logits[i : i + 1], target[i : i + 1])
    assert parts.compute()["confusion"] == whole.compute()["confusion"]
    # against a plain numpy confusion matrix
    keep = target != 255
    cm = np.zeros((5, 5), np.int64)
    np.add.at(cm, (target[keep].numpy(), logits.argmax(1)[keep].numpy()), 1)
    assert whole.compute()["confusion"] == cm.tolist()
    assert sum(map(sum, cm.tolist())) == 4 * 36 - 12
    parts.reset()
    assert math.isnan(parts.compute()["miou"])


def test_metrics_from_confusion_names_and_empty():
    r = metrics_from_confusion(np.array([[5, 0], [0, 0]]), names=["a", "b"])
    assert r["miou"] == 1.0 and r["present"] == [0]
    assert math.isnan(r["per_class"]["b"]["iou"])  # no support, no prediction


def test_multilabel_weighted_f1():
    logits = torch.tensor([[5.0, -5.0, 5.0], [5.0, 5.0, -5.0]])  # probs > 0.5 where positive
    target = torch.tensor([[1, 0, 0], [1, 1, 1]])
    m = MultilabelMetrics(3)
    m.update(logits, target)
    r = m.compute()
    # label0: tp 2 -> F1 1 (support 2); label1: tp 1 -> 1 (1); label2: fp 1, fn 1 -> 0 (1)
    assert r["f1"] == pytest.approx([1.0, 1.0, 0.0])
    assert r["weighted_f1"] == pytest.approx((2 * 1 + 1 * 1 + 0) / 4)


def test_feature_norm_makes_head_invariant_to_channel_scales():
    torch.manual_seed(0)
    head = SegmentationHead(32, 3, grid=4, out_size=8, feature_norm=True).train()
    feats = {"aerial": torch.randn(2, 1, 4, 4, 32), "s2": torch.randn(2, 3, 2, 2, 32)}
    scale, shift = torch.rand(32) * 100 + 0.1, torch.randn(32) * 50  # per channel
    skewed = {k: v * scale + shift for k, v in feats.items()}
    torch.testing.assert_close(head(feats), head(skewed), atol=2e-3, rtol=2e-3)
    plain = SegmentationHead(32, 3, grid=4, out_size=8).train()
    assert not torch.allclose(plain(feats), plain(skewed), atol=1e-2)
