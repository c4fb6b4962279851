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
# # 00 · Getting started with FLAIR-HUB
#
# [FLAIR-HUB](https://github.com/IGNF/FLAIR-HUB) (IGN) covers 2,528 km² of France with ten co-registered modalities per 102.4 m × 102.4 m patch: aerial RGBI at 0.2 m, elevation (DSM, DTM), SPOT 6-7, annual Sentinel-2 and Sentinel-1 (ascending and descending) series, 1950s panchromatic photos, and two label layers (COSIA land cover, LPIS crops).
#
# This notebook shows the **data catalog** (the single place where flairlab keeps bands, resolutions and class tables), finds the data — generating the synthetic sample (same on-disk format) when it is missing, or reading a real download when `source` names one — and gives an overview of domains, splits and classes.

# %% tags=["parameters"]
source: str = "sample"  # catalog source name (data_catalog.yaml `sources`) or a dataset folder
sample_patches: int = 40  # toy patches to generate when the sample is missing
sample_zone: int = 4  # and a zone of N x N contiguous extra patches (0: none)
split: str = ""  # train, valid or test; "" for every patch
n_patches: int = 0  # random subset of patches; 0 for all
workers: int = 2  # processes for the statistics; 0 runs serially in this kernel
seed: int = 0  # random subset and example patch
output_dir: str = "outputs/00_getting_started"  # results.json and figures/
interactive: bool = True  # bokeh plots (False: the static PNG twins)


# %%
# %matplotlib inline
from flairlab.data.catalog import load_catalog
from flairlab.data.index import index_summary
from flairlab.data.results import save_figure, save_results
from flairlab.explore.browser import plot_patch
from flairlab.explore.display import setup_plots
from flairlab.explore.plots import class_table, modality_table, plot_overview
from flairlab.explore.scale import compute_stats, resolve_root, select_patches

setup_plots(interactive)  # bokeh, offline (BokehJS inlined once); nothing to load when static
cat = load_catalog()

# %% [markdown]
# ## The catalog: modalities
#
# One row per modality folder. Time series store `T × bands` in date-major order; `maestro_groups` are the band groups MAESTRO normalises its reconstruction targets with (notebook 02 finds them in the data).

# %%
modality_table(cat)

# %% [markdown]
# ## COSIA land-cover classes
#
# Official colours; classes 15-18 are ignored by the official metrics.

# %%
class_table('cosia', cat)

# %% [markdown]
# ## Where the data lives
#
# A catalog source name (`sample`, `flairhub`) resolves through `data_catalog.yaml` (or its environment variable, e.g. `FLAIRHUB_ROOT`); any other value is taken as a folder. The sample is generated on first use: 40 patches of the official toy set plus a contiguous 4 × 4 zone (split `extra`) that notebook 05 maps. The index has one row per patch and one file path per modality; below, the first rows without the paths.

# %%
root = resolve_root(source, sample_patches=sample_patches, sample_zone=sample_zone,
                    catalog=cat)
index = select_patches(source, split=split or None, n_patches=n_patches or None,
                       seed=seed, catalog=cat)
print(f'{root}: {len(index)} patches')
index_summary(index)

# %% [markdown]
# ## Dataset overview
#
# Patches per domain and split, and the share of COSIA pixels per class (official colours) — counted by `flairlab.explore.scale.compute_stats` over the label files (on a process pool when `workers > 1`).

# %%
counts = compute_stats(index, modalities=(), by=(), correlation=False,
                       clouds=False, profiles=False, workers=workers)
overview = plot_overview(index, counts, output_dir=output_dir,
                         interactive=interactive, catalog=cat)
overview

# %% [markdown]
# ## One patch, every modality
#
# (Notebook 01 has the interactive browser.)

# %%
example = index.sample(1, random_state=seed).index[0]
fig = plot_patch(index, example, catalog=cat)
save_figure(fig, output_dir, 'example_patch')
fig

# %%
cosia = counts.class_counts['cosia'].to_frame(cat.nomenclature('cosia').names)
share = cosia.groupby('class_name', sort=False)['pixels'].sum()
results_file = save_results(output_dir, {
    'root': str(root),
    'n_patches': len(index),
    'domains': sorted(index['domain'].unique()),
    'patches_per_split': (index['split'].value_counts().to_dict()
                          if 'split' in index else {}),
    'modality_files': index[cat.modality_names].notna().sum().to_dict(),
    'cosia_pixel_share': (share / share.sum()).round(6).to_dict(),
    'example_patch': example,
    'figures': ['overview', 'example_patch'],
})
