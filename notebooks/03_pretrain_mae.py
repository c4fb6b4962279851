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
# # 03 · Pre-training the MAESTRO masked autoencoder
#
# MAESTRO (Labatie et al., IGN, 2025) learns from unlabelled FLAIR-HUB patches by hiding 75 % of the tokens of every modality group and reconstructing their pixels. Each modality/date is cut into patches by its own embedding (conv + GroupNorm); a 2-D sin-cos positional encoding on a fine metric grid and a date encoding are added; masks are *structured* (whole S1 orbit, whole dates, spatial tubes, then a random fill). In the default **inter-group** fusion each group (aerial, DEM, S2, S1) has its own encoder blocks before a few shared blocks over all tokens; the targets are normalised per patch, date and group of correlated bands.
#
# The `cpu` preset is a 2-core demo (nano model, 128-px aerial, 4 S2 dates); `preset = "full"` switches to the paper's FLAIR-HUB geometry (1880 tokens per patch) and optimisation, for GPUs. Parameters left empty keep the preset.
#
# **Objectives.** `objective = "mae"` is the masked reconstruction above. `"contrastive"` trains the encoder alone, without masking: two modalities of the same patch (aerial ↔ S2, aerial ↔ S1, …) are a positive pair, every other patch of the batch a negative (symmetric InfoNCE with a learnable temperature; patches of the same ROI are dropped from the negatives), or with `contrastive_kind = "cclk"` the kernel-conditional CCL-K, which weights the other samples by the similarity of a conditioning variable (domain, label histogram or the embedding itself). `"both"` adds `contrastive_weight` × the contrastive loss to the MAE loss, computed on the visible tokens of the same masked pass. The contrastive heads read each modality's tokens before the shared fusion blocks. For a contrastive-only run on the `cpu` preset set `base_lr = 3e-4`: at the preset's 1e-3 the encoder collapsed to constant embeddings on the sample (the contrastive curve below then stays at log(batch) and chance retrieval).

# %% tags=["parameters"]
preset: str = "cpu"  # configs/pretrain_<preset>.yaml: cpu (2-core demo) or full (R1 geometry, GPU)
objective: str = "mae"  # mae | contrastive | both
contrastive_weight: float = 0.0  # w of the contrastive term, objective both only (L_MAE + w·L_c)
contrastive_kind: str = ""  # infonce (cross-modal) or cclk (kernel-weighted); empty: infonce
contrastive_pairs: str = ""  # positive pairs a:b; empty: aerial:s2,aerial:s1_asc,s2:s1_asc
cclk_variant: str = ""  # cclk: fair (domain), weak (COSIA histogram), hard (embedding); empty: fair
fusion_mode: str = ""  # empty: preset (inter-group); or shared, monotemp, mod, group, inter-mod
size: str = ""  # empty: preset (cpu nano, full medium, the paper's Base); or tiny, small, large
mask_ratio: float = 0.75  # share of the tokens of every group hidden from the encoder
steps: int = 0  # optimiser steps; 0: preset (cpu 300 steps, full: its epochs)
epochs: int = 0  # a budget in epochs instead of steps; 0: preset (full 100)
batch_size: int = 0  # per device; 0: preset (cpu 4, full 32)
base_lr: float = 0.0  # 0: preset (cpu 1e-3, full 3e-5); peak lr is base_lr * sqrt(batch / 3)
modalities: str = ""  # comma-separated model inputs; empty: preset (aerial,dem,s2,s1_asc,s1_desc)
image_size: str = ""  # px per side, e.g. aerial:64,dem:64; empty: preset (cpu 128, full 512)
patch_size: str = ""  # token patch px, e.g. aerial:16; empty: preset
n_dates: str = ""  # dates per series, e.g. s2:4; empty: preset (cpu 4/2/2, full 16/4/4)
n_patches: int = 0  # use only the first n training patches; 0: all
device: str = "auto"  # auto, cpu or cuda
precision: str = "auto"  # auto (GPU: bf16; CPU: the faster of fp32 / bf16, measured), 32-true
resume: bool = False  # continue the run found in output_dir (a finished run is just reloaded)
n_show: int = 2  # validation patches shown as reconstructions
seed: int = 0  # weights, data order and masks
output_dir: str = "outputs/03_pretrain_mae"  # the run: checkpoints/, metrics, results.json
source: str = "sample"  # catalog source name (e.g. sample_store), dataset folder or packed store


# %%
import matplotlib.pyplot as plt

from flairlab.data.results import save_figure, save_results
from flairlab.models.checkpoint import load_mae
from flairlab.training.objective_plots import objective_results, training_curves
from flairlab.training.pretrain import pretrain
from flairlab.training.pretrain_config import eval_batch, notebook_config
from flairlab.training.pretrain_plots import (
    plot_reconstructions,
    read_metrics,
    reconstruct,
    run_results,
)

cfg = notebook_config(
    preset, modalities=modalities, image_size=image_size, patch_size=patch_size,
    n_dates=n_dates, device=device, size=size, fusion_mode=fusion_mode,
    mask_ratio=mask_ratio, steps=steps, epochs=epochs, batch_size=batch_size, base_lr=base_lr,
    precision=precision, n_patches=n_patches, source=source, seed=seed,
    output_dir=output_dir, resume=resume, objective=objective,
    contrastive_weight=contrastive_weight, contrastive_kind=contrastive_kind,
    contrastive_pairs=contrastive_pairs, cclk_variant=cclk_variant,
)
m = cfg.model
print(f'{cfg.train.objective} · {m.size} · {m.fusion_mode} · '
      f'{m.n_tokens()} tokens per patch, {m.n_visible()} visible to the MAE')
{k: (v.image_size, v.patch_size, v.n_dates, v.group)
 for k, v in m.modalities.items()}

# %% [markdown]
# ## Train
#
# One optimizer step per batch; metrics go to `metrics.csv` / `metrics.json` and a checkpoint is written atomically at the end of every epoch, so `resume = True` continues an interrupted run exactly where it stopped.

# %%
summary = pretrain(cfg)
summary

# %% [markdown]
# ## Loss curves
#
# **MAE** (`loss_curve`): the total is the L1 error on masked pixels of the normalised targets, each modality weighted by its token count; the dashed line is the learning rate (warm-up, then cosine decay). Predicting zeros everywhere scores about 0.8 on a normalised target.
#
# **Contrastive** (`contrastive_curve`): the loss per modality pair (log of the batch size at random), and how often a patch's embedding in one modality finds the same patch in the other among the batch (chance: 1 / batch); dashed: the learned temperature and, for CCL-K, the weight mass each anchor puts on other samples.

# %%
rows = read_metrics(output_dir)
figures = []
for name, fig in training_curves(rows, cfg.train.objective).items():
    figures.append(save_figure(fig, output_dir, name).stem)
    plt.show()

# %% [markdown]
# ## What the model reconstructs
#
# Validation patches (not seen in training), one row per modality: the input, the tokens the encoder saw (grey = hidden), the reconstruction (visible tokens kept, hidden ones predicted and brought back to the input's scale with each patch's own statistics), and the **normalised** target next to the normalised prediction — the space where the loss is computed. A contrastive-only run never trains the decoder, so it has nothing to show here.

# %%
results = objective_results(summary, rows, cfg)
if cfg.train.uses_mae:  # the decoder trains only with the MAE term
    model = load_mae(output_dir)
    batch = eval_batch(cfg, split='valid', n=n_show)
    out = reconstruct(model, batch, seed=seed)
    for i, pid in enumerate(batch['patch_id']):
        fig = plot_reconstructions(model, batch, out, sample=i)
        fig.suptitle(pid, y=1.01)
        figures.append(save_figure(fig, output_dir, f'reconstruction_{i}').stem)
        plt.show()
    results |= run_results(summary, rows, model, out, batch)

# %%
save_results(output_dir, {**results, 'figures': figures})
{k: v for k, v in results.items() if k.endswith(('_step', 'valid_loss'))}
