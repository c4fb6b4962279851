# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Fine-tuning: land cover and crops from the (pre-)trained encoder
#
# MAESTRO's downstream protocol (spec §8): a **probe** (encoder frozen, only the head learns), then **full fine-tuning** evaluated with an EMA of the weights. Budgets are **optimiser steps**: `probe_steps` + `finetune_steps` batches of `batch_size` patches, validated every `eval_every` steps.
#
# Two heads. `head = "upsample"` (the CPU default) pools the tokens of every modality and date at each aerial token cell, upsamples that context map to the label grid and mixes it, pixel by pixel, with the model's own inputs resampled to the label grid: a 12.8 m token cannot draw a 0.8 m road, the inputs can. `head = "attentive"` is MAESTRO's head (pixel shuffle of the token grid), the one to use with the full-size geometry.
#
# With `checkpoint = ""` the same architecture starts from random weights: the **from-scratch baseline**. `label_fraction` keeps a stratified, reproducible subset of the labelled training patches (rare classes are kept first). COSIA classes 15-18 are ignored, as in IGN's evaluation; mIoU averages the classes present in the targets.
#
# **The floor.** Next to the model, a per-pixel logistic regression is fitted on the same training pixels from the same inputs (every modality, date and band resampled to the label grid, no spatial context): what a pixel's own colour, height and time series already say. The network has to learn that *and* the context by gradient steps; on the embedded sample it reaches the floor after about 900 steps from scratch (`benchmarks/reported/finetune_design.md`), so the demo's 150 steps stop below it — the gap is what more steps (or a GPU) buy.

# %% [markdown]
# ### Starting from IGN's released MAESTRO weights: what you need
#
# `checkpoint = "IGNF/MAESTRO_FLAIR-HUB_base"` fine-tunes MAESTRO base (medium, inter-group: 279 M encoder parameters, 336 M with the unused decoder and the head) pre-trained by IGN on FLAIR-HUB. The first run downloads it with `huggingface_hub` into the Hugging Face cache, checks its hash and converts it once to flairlab's format; later runs work offline (`HF_HUB_OFFLINE=1`). The same string works for `flairlab finetune --checkpoint`, and a reference `.ckpt` file can be given instead. The checkpoint fixes the architecture and patch sizes; `image_size` / `n_dates` may change the geometry (IGN's: aerial and DEM 512 px, 16 S2 and 4 + 4 S1 dates; leave them empty to keep it).
#
# Estimates at IGN's geometry with `device = "cuda"` and bf16 autocast — model FLOPs per step from `flairlab.models.flops`, compute time at 35 % of the GPU's bf16 peak, memory = fp32 weights + gradients + AdamW + EMA + activations (`flairlab.training.requirements`; `finetune_requirements(cfg)` gives the table for any configuration):
#
# | | batch 32 | batch 8 |
# |---|---|---|
# | GPU memory | ≈ 30 GB (40 / 80 GB A100, H100) | ≈ 12 GB (16–24 GB GPUs) |
# | fine-tuning FLOPs per patch (forward + backward) | 1.38 TFLOP | 1.38 TFLOP |
# | one epoch of 10 000 patches, compute only | H100 ≈ 40 s, A100 ≈ 2.1 min | A100 ≈ 2.1 min, L4 ≈ 5.4 min |
#
# Reading FLAIR-HUB (about 10 files per patch) is usually slower than this: use `num_workers`. On CPU, the defaults below (aerial 128 px, 4 S2 and 2 + 2 S1 dates) bring the base model to ≈ 150 GFLOP per patch and step — a smoke run with `batch_size = 2`, `probe_steps = 1` and `finetune_steps = 2`; inference alone at IGN's geometry costs ≈ 460 GFLOP per patch, ≈ 5 s on one core here (≈ 77 GFLOP/s, fp32).

# %% tags=["parameters"]
checkpoint: str = ""  # pre-training run / .safetensors, a reference .ckpt, or a Hub name (IGNF/MAESTRO_FLAIR-HUB_base); empty: from scratch
task: str = "cosia"  # cosia (land cover, 15 classes) or lpis (crops, LPIS level 1)
modalities: str = "aerial,dem,s2,s1_asc,s1_desc"  # comma-separated model inputs
label_fraction: float = 1.0  # share of the labelled training patches (stratified, reproducible)
head: str = "upsample"  # upsample (light decoder reading the inputs) or attentive (MAESTRO's)
probe_steps: int = 30  # optimiser steps of the probe (encoder frozen, head only)
finetune_steps: int = 200  # optimiser steps of fine-tuning (evaluated with EMA weights)
eval_every: int = 25  # validation every N optimiser steps (0: at the end of each phase)
patience: int = 0  # stop after N validations without a better val mIoU, keep the best; 0: off
batch_size: int = 4  # patches per step
head_lr: float = 1e-2  # base learning rate of the head (probe and fine-tuning), × sqrt(batch / 3)
finetune_lr: float = 1e-3  # base learning rate of the encoder in fine-tuning, × sqrt(batch / 3)
size: str = "nano"  # model size for a scratch run (nano, tiny, small, medium, large)
feature_norm: bool = False  # standardise token channels before the head (MAE-style probe)
image_size: str = "aerial:128,dem:128"  # px per side (pretrain_cpu.yaml); empty: checkpoint or 512
patch_size: str = "aerial:16,dem:32"  # token patch px, scratch only; a checkpoint fixes them
n_dates: str = "s2:4,s1_asc:2,s1_desc:2"  # dates per series; empty: checkpoint or 16, 4, 4
label_size: int = 128  # label px per side; 512 is the native 0.2 m
baseline: bool = True  # fit the per-pixel logistic-regression floor on the same training pixels
precision: str = "auto"  # auto (the faster of fp32 / bf16, measured), 32-true or bf16-mixed
threads: int = 0  # torch CPU threads; 0: the free cores (quota minus other running jobs)
n_show: int = 3  # test patches shown next to their ground truth
seed: int = 0  # weights, data order, augmentation and label subset
device: str = "auto"  # auto, cpu or cuda
output_dir: str = "outputs/04_finetune"  # results.json, figures/, finetuned.safetensors
overwrite: bool = False  # write into a non-empty output_dir (an earlier run's files are replaced)
source: str = "sample"  # catalog source name (e.g. sample_store), dataset folder or packed store


# %%
from pathlib import Path

import matplotlib.pyplot as plt

from flairlab.data.results import save_figure, save_results
from flairlab.models.segmodel import load_finetuned
from flairlab.training.baseline import load_baseline
from flairlab.training.finetune import FinetuneConfig, parse_mapping, run_finetune
from flairlab.training.finetune_plots import (
    floor_table,
    per_class_table,
    plot_confusion,
    plot_curves,
    plot_predictions,
    run_dataset,
)

cfg = FinetuneConfig(
    task=task, modalities=modalities, checkpoint=checkpoint, size=size, head=head,
    image_size=parse_mapping(image_size), patch_size=parse_mapping(patch_size),
    n_dates=parse_mapping(n_dates), label_size=label_size,
    label_fraction=label_fraction, probe_steps=probe_steps, finetune_steps=finetune_steps,
    eval_every=eval_every, patience=patience, batch_size=batch_size, head_lr=head_lr,
    finetune_lr=finetune_lr, feature_norm=feature_norm, baseline=baseline, precision=precision,
    threads=threads, seed=seed, source=source, device=device,
)
cfg

# %% [markdown]
# ## Probe, then fine-tune
#
# A progress bar per phase; the validation mIoU is checked every `eval_every` steps (EMA weights during fine-tuning), the test split once at the end, then the floor is fitted.

# %%
results = run_finetune(cfg, output_dir, overwrite=overwrite)
print(f"{results['n_train_patches']} of {results['n_train_total']} training patches, "
      f"{results['steps']['total']} optimiser steps ({results['precision']}, "
      f"{results['threads']} threads): test mIoU {results['test_miou']:.3f}, OA {results['test_oa']:.3f}")

# %% [markdown]
# ## The model and its floor

# %%
floor_table(results)

# %% [markdown]
# ## Training curves, by optimiser step
#
# Left: the training loss of every step (grey), its mean between two validations (open dots) and the validation loss (squares). Right: the mIoU of the training batches seen since the previous check (open dots; augmented, weights changing) and of the validation split (squares), with the floor's validation mIoU dashed. Shaded: the probe.

# %%
fig = plot_curves(results['history'], results['train_log'], results['baseline'],
                  title=('pretrained' if checkpoint else 'from scratch') + f' · {task} · {modalities}')
save_figure(fig, output_dir, 'curves')
plt.show()

# %% [markdown]
# ## Per-class scores on the test split
#
# Classes without support in the test targets (`in_miou = False`) are left out of the mIoU; `floor_iou` is the floor's IoU for the class.

# %%
table = per_class_table(results['test'], results['baseline']['test'] if results['baseline'] else None)
table.round(3)

# %% [markdown]
# ## Normalised confusion matrix (rows: true class)

# %%
fig = plot_confusion(results['test'])
save_figure(fig, output_dir, 'confusion')
plt.show()

# %% [markdown]
# ## Predictions next to the ground truth
#
# Test patches: the aerial image, the ground truth, the model's prediction and the floor's, in the official COSIA colours (legend below). White pixels in the ground truth are ignored classes (COSIA 15-18).

# %%
model, meta = load_finetuned(Path(output_dir) / 'finetuned.safetensors')
floor_model = load_baseline(Path(output_dir) / 'baseline.safetensors') if baseline else None
fig = plot_predictions(model, run_dataset(meta, 'test'), task, n=n_show, baseline=floor_model)
save_figure(fig, output_dir, 'predictions')
plt.show()

# %%
save_results(output_dir, {
    'figures': ['curves', 'confusion', 'predictions'],
    'per_class_test': table.reset_index().to_dict(orient='records'),
})
{k: results[k] for k in ('task', 'pretrained', 'n_train_patches', 'test_miou', 'test_oa',
                         'baseline_test_miou')}
