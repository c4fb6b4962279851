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
# # 02 · Band histograms, correlations and band groups
#
# One streaming pass over the image files computes, per modality and band: histograms on fixed bin edges from the catalog (S1 in dB), count / mean / variance, min / max, and the band correlation matrix — overall, per domain, per split and per COSIA class. Every statistic is a mergeable accumulator, so the same code runs on a process pool here and on a dask cluster for the full 241k patches.
#
# MAESTRO normalises its reconstruction targets per **group of strongly correlated bands**. Instead of taking its fixed groups on faith, we cluster the correlation matrix (average linkage on 1 − |r|) and compare. The chosen groups and the per-band normalisation statistics go to a file that pretraining reads.

# %% tags=["parameters"]
source: str = "sample"  # catalog source name (data_catalog.yaml `sources`) or a dataset folder
split: str = "train"  # train, valid or test ("" for all); normalisation statistics come from train
n_patches: int = 0  # random subset of patches; 0 for all
hist_by: str = "domain"  # second histogram view: "domain", "split" or "class"
class_bands: str = "B04,B08,B11"  # S2 bands shown per COSIA class
min_corr: float = 0.9  # bands whose average |correlation| reaches this form a group
norm_file: str = "norm_stats.yaml"  # written to output_dir; pretraining reads it (.yaml/.json)
workers: int = 2  # processes for the statistics; 0 runs serially in this kernel
seed: int = 0  # random subset
output_dir: str = "outputs/02_band_histograms"  # results.json, norm file, summary.csv, figures/
interactive: bool = True  # bokeh plots (False: the static PNG twins)


# %%
# %matplotlib inline
from pathlib import Path

from IPython.display import display

from flairlab.data.catalog import load_catalog
from flairlab.data.results import save_results
from flairlab.explore.bandgroups import (
    compare_groups,
    discover_groups,
    norm_entries,
    norm_table,
    save_norm_file,
)
from flairlab.explore.display import setup_plots
from flairlab.explore.plots import plot_band_groups, plot_correlation, plot_histograms
from flairlab.explore.scale import IMAGE_MODALITIES, compute_stats, select_patches

setup_plots(interactive)  # bokeh, offline (BokehJS inlined once); nothing to load when static
Path(output_dir).mkdir(parents=True, exist_ok=True)
cat = load_catalog()
index = select_patches(source, split=split or None, n_patches=n_patches or None,
                       seed=seed, catalog=cat)
stats = compute_stats(index, clouds=False, profiles=False, class_counts=False,
                      workers=workers)
summary = stats.summary()
summary.to_csv(f'{output_dir}/summary.csv', index=False)
summary.round(3)

# %% [markdown]
# `space` is the value space of the statistics (`db` = 10·log10 of linear power); `under` / `over` count values outside the catalog's histogram range, `invalid` non-finite values (and S1 values ≤ 0).

# %% [markdown]
# ## Histograms per modality
#
# Share of pixels per bin (all patches).

# %%
for name in IMAGE_MODALITIES:
    if name in stats.bands:
        display(plot_histograms(stats, name, output_dir=output_dir,
                                interactive=interactive, catalog=cat))

# %% [markdown]
# ## By domain (or split / class, see `hist_by`)

# %%
for name in ('AERIAL_RGBI', 'SENTINEL2_TS', 'SENTINEL1-ASC_TS'):
    if name in stats.bands:
        display(plot_histograms(stats, name, by=hist_by, output_dir=output_dir,
                                interactive=interactive, catalog=cat))

# %% [markdown]
# ## Sentinel-2 per COSIA class
#
# Each 10.24 m pixel takes the majority class of the 0.2 m label pixels it covers; the eight classes with the most pixels are drawn in their official colours.

# %%
plot_histograms(stats, 'SENTINEL2_TS', by='class', bands=class_bands.split(','),
                output_dir=output_dir, interactive=interactive, catalog=cat)

# %% [markdown]
# ## Band groups: discovered vs MAESTRO

# %%
groups = discover_groups(stats, min_corr=min_corr, catalog=cat)
table = compare_groups(groups, catalog=cat)
table

# %%
plot_band_groups(stats, groups, min_corr, output_dir=output_dir,
                 interactive=interactive, catalog=cat)

# %% [markdown]
# ## Correlation matrices
#
# Bands reordered by the discovered groups (outlined).

# %%
for name in ('AERIAL_RGBI', 'SPOT_RGBI', 'SENTINEL2_TS', 'SENTINEL1-ASC_TS'):
    if name in groups:
        display(plot_correlation(stats, name, band_groups=groups[name],
                                 output_dir=output_dir, interactive=interactive,
                                 catalog=cat))

# %% [markdown]
# ## Normalisation statistics for pretraining
#
# Per band mean and std in the statistics' space and after the catalog scaling the model applies (`scaled_mean` / `scaled_std`), with the discovered group of each band (the file also keeps MAESTRO's groups). Format: `flairlab.explore.bandgroups` docstring; read it back with `load_norm_file`.

# %%
entries = norm_entries(stats, groups, min_corr, catalog=cat)
path = save_norm_file(Path(output_dir) / norm_file, entries, source=source,
                      n_patches=stats.n_patches, overwrite=True)
print(f'{path.name}: {len(entries)} modalities, written to the output folder')
norm_table(entries).round(4)

# %%
results_file = save_results(output_dir, {
    'n_patches': stats.n_patches,
    'split': split,
    'min_corr': min_corr,
    'norm_file': str(path),
    'band_groups': groups,
    'groups_vs_maestro': table.to_dict(orient='records'),
    'summary': summary.to_dict(orient='records'),
    'missing_files': stats.missing,
})
