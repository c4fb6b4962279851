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
# # 06 · Compare runs
#
# Every `flairlab run` leaves a folder in `runs/` with the parameters of each step (`params.json`), its `results.json` and the environment it ran in. This notebook reads them all and compares the fine-tuning results along four axes:
#
# 1. **pre-trained vs from scratch**,
# 2. **fusion modes** of the pre-trained encoder,
# 3. **label efficiency**: score against the share of labelled patches,
# 4. **MAE vs MAE + contrastive** pre-training.
#
# An axis appears once the runs differ along it — e.g. `flairlab run pipelines/sweep_label_efficiency.yaml`. Runs are never overwritten, so repeated runs of the same point show up as `n > 1` with a standard deviation.
#
# The last section shows the committed **pre-training study** (`benchmarks/reported/ssl_study.json`): MAE, contrastive and random initialisation fine-tuned at 10 % and 100 % of the labels of the 250-patch toy sample, three seeds each, every run until its validation mIoU plateaued.

# %% tags=["parameters"]
runs_dir: str = "../runs"  # folder holding the run folders (`flairlab run --runs-dir`)
pipeline: str = ""  # only runs of this pipeline ("" = every pipeline)
finetune_notebook: str = "04_finetune"  # notebook whose results are compared
metric: str = "test_miou"  # results.json key compared (higher is better)
pretrained: str = "pretrained"  # results key: fine-tuned from a pre-trained encoder or scratch
fraction: str = "label_fraction"  # share of labelled training patches (label efficiency)
fusion: str = "model.config.fusion_mode"  # results key: fusion mode of the fine-tuned encoder
contrastive: str = "contrastive_weight"  # pre-training parameter: 0 = MAE only
study: str = "../benchmarks/reported/ssl_study.json"  # committed pre-training study; "": skip
output_dir: str = "outputs/06_compare_runs"  # results.json and figures/


# %%
import matplotlib.pyplot as plt

from flairlab.data.results import save_figure, save_results
from flairlab.runs import compare

runs = compare.load_runs(runs_dir)
if pipeline:
    runs = runs[runs['pipeline'] == pipeline]
for reason in runs.attrs.get('skipped', []):
    print('skipped:', reason)
overview = compare.run_overview(runs, current=output_dir)  # this run: "in progress"
print(f'{len(overview)} runs in {runs_dir}')
overview.tail(20)

# %% [markdown]
# ## Fine-tuning results
#
# One row per finished fine-tuning step; the pre-training settings of the same run sit next to it (`<step>.<parameter>` columns), and `pretraining` names how the encoder started (scratch, MAE, MAE + contrastive).

# %%
ft = compare.finetune_table(runs, finetune_notebook, pretrained=pretrained,
                            contrastive=contrastive)
if ft.empty:
    print(f'no finished {finetune_notebook} step in {runs_dir} yet')
else:
    fig = compare.plot_runs(ft, metric, label='pretraining')
    save_figure(fig, output_dir, 'all_runs')
    plt.show()
compare.pick(ft, ['run', 'step', 'pretraining', fraction, fusion, metric])

# %% [markdown]
# ## 1 · Pre-trained vs from scratch

# %%
by_pretrained = compare.compare_factor(
    ft, pretrained, metric, title='pre-trained vs scratch',
    output_dir=output_dir, name='pretrained_vs_scratch')
by_pretrained

# %% [markdown]
# ## 2 · Fusion modes (pre-trained encoders only)

# %%
by_fusion = compare.compare_factor(
    compare.only_true(ft, pretrained), fusion, metric, title='fusion modes',
    output_dir=output_dir, name='fusion_modes')
by_fusion

# %% [markdown]
# ## 3 · Label efficiency
#
# Mean score per share of labelled training patches, one curve for pre-trained and one for scratch encoders: pre-training should pay off most where labels are scarce.

# %%
curves = compare.compare_label_efficiency(ft, metric, fraction, by=pretrained,
                                          output_dir=output_dir)
curves

# %% [markdown]
# ## 4 · MAE vs MAE + contrastive pre-training

# %%
by_method = compare.compare_factor(
    compare.only_true(ft, pretrained), 'pretraining', metric,
    title='pre-training objective', output_dir=output_dir,
    name='mae_vs_contrastive')
by_method

# %%
results_file = save_results(output_dir, {
    'n_runs': len(overview),
    'n_finetune_results': len(ft),
    'metric': metric,
    'pretrained_vs_scratch': compare.records(by_pretrained),
    'fusion_modes': compare.records(by_fusion),
    'label_efficiency': compare.records(curves),
    'mae_vs_contrastive': compare.records(by_method),
})

# %% [markdown]
# ## 5 · The pre-training study (committed result)
#
# Made by `benchmarks/ssl_study.py` (command and commit below); each dot is one seed, lines join the runs that shared a labelled subset, the dashed line is the floor (per-pixel logistic regression on the same pixels). "> 2 std": the paired differences to scratch (same seed, hence the same labelled subset) have a mean above twice their standard deviation.

# %%
from pathlib import Path

from flairlab.runs.study import load_study, plot_study, study_table

if study and Path(study).is_file():
    ssl, ssl_details = load_study(study)
    floors = ssl_details['floor_test_miou'] if ssl_details else None
    print(f"{ssl['pipeline']}  (commit {ssl['commit'][:10]})")
    fig = plot_study(ssl, floors)
    save_figure(fig, output_dir, 'ssl_study')
    plt.show()
    ssl_table = study_table(ssl, floors)
    save_results(output_dir, {'ssl_study': ssl['arms'], 'ssl_study_steps': ssl['steps']})
else:
    ssl_table = None
    print(f'no study result at {study!r}')
ssl_table
