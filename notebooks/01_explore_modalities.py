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
# # 01 · Exploring the modalities
#
# A **patch browser** (pick a domain, ROI and patch; slide through the Sentinel dates), then two views of the time series over many patches: **temporal profiles** per COSIA class (NDVI from Sentinel-2, VV and VH backscatter from Sentinel-1) and **Sentinel-2 snow/cloud statistics** per month of the year.
#
# Profiles are medians and quartiles per class and period read from fixed-bin histograms, so that partial results from many workers merge exactly (each value is within one bin of the true order statistic: 0.02 NDVI, 0.5 dB). Each S2/S1 pixel takes the majority COSIA class of the 0.2 m pixels it covers; cloudy or snowy S2 pixels are left out of the NDVI profile.

# %% tags=["parameters"]
source: str = "sample"  # catalog source name (data_catalog.yaml `sources`) or a dataset folder
split: str = ""  # train, valid or test; "" for every patch
n_patches: int = 0  # random subset of patches; 0 for all
patch_id: str = ""  # patch shown first in the browser; "" for the first of the index
period: str = "month"  # temporal profiles per "month" (of year, pooled) or per "date"
min_pixels: int = 20  # profile points with fewer pixels are not drawn
max_cloud: float = 1.0  # % cloud probability above which an S2 pixel is cloudy (official: 1)
max_snow: float = 1.0  # % snow probability above which an S2 pixel is snowy (official: 1)
workers: int = 2  # processes for the statistics; 0 runs serially in this kernel
seed: int = 0  # random subset
output_dir: str = "outputs/01_explore_modalities"  # results.json, profiles.csv, figures/
interactive: bool = True  # bokeh plots (False: the static PNG twins)


# %%
# %matplotlib inline
from pathlib import Path

from flairlab.data.catalog import load_catalog
from flairlab.data.results import save_figure, save_results
from flairlab.explore.browser import PatchBrowser, plot_patch
from flairlab.explore.display import setup_plots
from flairlab.explore.scale import compute_stats, select_patches
from flairlab.explore.ts_plots import plot_clouds, plot_profiles

setup_plots(interactive)  # bokeh, offline (BokehJS inlined once); nothing to load when static
Path(output_dir).mkdir(parents=True, exist_ok=True)
cat = load_catalog()
index = select_patches(source, split=split or None, n_patches=n_patches or None,
                       seed=seed, catalog=cat)
print(f"{len(index)} patches in {index['domain'].nunique()} domains")

# %% [markdown]
# ## Patch browser
#
# Aerial RGB and false-colour infrared (NIR-R-G), height above ground (DSM − DTM), SPOT, Sentinel-2 true colour and its snow/cloud mask (red = cloud, blue = snow over the dimmed image), Sentinel-1 (R = VV, G = VH, B = VV − VH, in dB), the 1950s photo, and the COSIA and LPIS labels in their official colours. The date sliders show acquisition dates. Changing the patch or the date needs a live kernel; the static figure below is the same patch for readers of the saved notebook.

# %%
first = patch_id or index.index[0]
browser = PatchBrowser(index, catalog=cat).select(first)
browser

# %%
fig = plot_patch(index, first, catalog=cat)
save_figure(fig, output_dir, 'patch')
fig

# %% [markdown]
# ## Statistics over the patches
#
# One pass over the label, Sentinel-2 (with mask) and Sentinel-1 files (a process pool when `workers > 1`; any `concurrent.futures.Executor`, such as a dask cluster's, can be passed instead).

# %%
stats = compute_stats(index, modalities=(), by=(), correlation=False,
                      period=period, max_cloud=max_cloud, max_snow=max_snow,
                      workers=workers)
profiles = stats.profiles.to_frame(cat.nomenclature('cosia').names)
profiles.to_csv(f'{output_dir}/profiles.csv', index=False)
profiles.head()

# %% [markdown]
# ## NDVI per class
#
# The six classes with the most pixels (line: median; band: interquartile range), per month of the year with every year pooled (`period = "date"` for the dates themselves).

# %%
plot_profiles(stats, 'ndvi', min_pixels=min_pixels, output_dir=output_dir,
              interactive=interactive, catalog=cat)

# %% [markdown]
# ## Sentinel-1 backscatter per class (ascending orbit)

# %%
plot_profiles(stats, 's1_asc_vv', min_pixels=min_pixels, output_dir=output_dir,
              interactive=interactive, catalog=cat)

# %%
plot_profiles(stats, 's1_asc_vh', min_pixels=min_pixels, output_dir=output_dir,
              interactive=interactive, catalog=cat)

# %% [markdown]
# ## Sentinel-2 snow and clouds
#
# Per month of the year (all years and patches pooled): the share of cloudy and of snowy pixels, and the share of acquisitions that are *clean* (≥ 95 % of pixels below both thresholds: the official loader's rule); under each month, how many patch acquisitions it holds. Right: how cloudy each acquisition is — mostly all or nothing.

# %%
plot_clouds(stats, output_dir=output_dir, interactive=interactive)

# %%
results_file = save_results(output_dir, {
    'n_patches': stats.n_patches,
    'browser_patch': first,
    'period': period,
    's2_clouds': stats.clouds.summary(),
    'profile_rows': len(profiles),
    'missing_files': stats.missing,
    'figures': ['patch', 'profile_ndvi', 'profile_s1_asc_vv', 'profile_s1_asc_vh',
                's2_clouds'],
})
