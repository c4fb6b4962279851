"""Build `notebooks/01_explore_modalities.ipynb`: `.venv/bin/python notebooks/_build/build_01.py`.

The notebook is generated (nbformat), committed without outputs, and executed by papermill.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "01_explore_modalities.ipynb"

PARAMETERS = """\
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
"""


def build() -> nbformat.NotebookNode:
    md, code = new_markdown_cell, new_code_cell
    cells = [
        md("# 01 · Exploring the modalities\n\n"
           "A **patch browser** (pick a domain, ROI and patch; slide through the Sentinel "
           "dates), then two views of the time series over many patches: **temporal profiles** "
           "per COSIA class (NDVI from Sentinel-2, VV and VH backscatter from Sentinel-1) and "
           "**Sentinel-2 snow/cloud statistics** per acquisition date.\n\n"
           "Profiles are medians and quartiles per class and period read from fixed-bin "
           "histograms, so that partial results from many workers merge exactly (each value is "
           "within one bin of the true order statistic: 0.02 NDVI, 0.5 dB). Each S2/S1 pixel "
           "takes the majority COSIA class of the 0.2 m pixels it covers; cloudy or snowy S2 "
           "pixels are left out of the NDVI profile."),
        code(PARAMETERS, metadata={"tags": ["parameters"]}),
        code("%matplotlib inline\n"
             "from pathlib import Path\n\n"
             "import holoviews as hv\n\n"
             "from flairlab.browser import PatchBrowser, plot_patch\n"
             "from flairlab.catalog import load_catalog\n"
             "from flairlab.explore_ts import plot_clouds, plot_profiles\n"
             "from flairlab.results import save_figure, save_results\n"
             "from flairlab.scale import compute_stats, select_patches\n\n"
             "hv.extension('bokeh', logo=False, inline=True)\n"
             "Path(output_dir).mkdir(parents=True, exist_ok=True)\n"
             "cat = load_catalog()\n"
             "index = select_patches(source, split=split or None, n_patches=n_patches or None,\n"
             "                       seed=seed, catalog=cat)\n"
             "print(f\"{len(index)} patches in {index['domain'].nunique()} domains\")"),
        md("## Patch browser\n\nAerial RGB and false-colour infrared (NIR-R-G), height above "
           "ground (DSM − DTM), SPOT, Sentinel-2 true colour with its snow/cloud mask, "
           "Sentinel-1 (R = VV, G = VH, B = VV − VH, in dB), the 1950s photo, and the COSIA and "
           "LPIS labels in their official colours. The widgets need a live kernel; the static "
           "figure below is the same patch for readers of the saved notebook."),
        code("first = patch_id or index.index[0]\n"
             "browser = PatchBrowser(index, catalog=cat).select(first)\n"
             "browser"),
        code("fig = plot_patch(index, first, catalog=cat)\n"
             "save_figure(fig, output_dir, 'patch')\n"
             "fig"),
        md("## Statistics over the patches\n\nOne pass over the label, Sentinel-2 (with mask) "
           "and Sentinel-1 files (a process pool when `workers > 1`; any "
           "`concurrent.futures.Executor`, such as a dask cluster's, can be passed instead)."),
        code("stats = compute_stats(index, modalities=(), by=(), correlation=False,\n"
             "                      period=period, max_cloud=max_cloud, max_snow=max_snow,\n"
             "                      workers=workers)\n"
             "profiles = stats.profiles.to_frame(cat.nomenclature('cosia').names)\n"
             "profiles.to_csv(f'{output_dir}/profiles.csv', index=False)\n"
             "profiles.head()"),
        md("## NDVI per class\n\nThe six classes with the most pixels (line: median; band: "
           "interquartile range)."),
        code("plot_profiles(stats, 'ndvi', min_pixels=min_pixels, output_dir=output_dir,\n"
             "              interactive=interactive, catalog=cat)"),
        md("## Sentinel-1 backscatter per class (ascending orbit)"),
        code("plot_profiles(stats, 's1_asc_vv', min_pixels=min_pixels, output_dir=output_dir,\n"
             "              interactive=interactive, catalog=cat)"),
        code("plot_profiles(stats, 's1_asc_vh', min_pixels=min_pixels, output_dir=output_dir,\n"
             "              interactive=interactive, catalog=cat)"),
        md("## Sentinel-2 snow and clouds\n\nPer acquisition date: the share of cloudy and snowy "
           "pixels and the share of patches for which that date is *clean* (≥ 95 % of pixels "
           "below both thresholds: the official loader's rule); right, how cloudy each "
           "patch-date is."),
        code("plot_clouds(stats, output_dir=output_dir, interactive=interactive)"),
        code("save_results(output_dir, {\n"
             "    'n_patches': stats.n_patches,\n"
             "    'browser_patch': first,\n"
             "    'period': period,\n"
             "    's2_clouds': stats.clouds.summary(),\n"
             "    'profile_rows': len(profiles),\n"
             "    'missing_files': stats.missing,\n"
             "    'figures': ['patch', 'profile_ndvi', 'profile_s1_asc_vv', 'profile_s1_asc_vh',\n"
             "                's2_clouds'],\n"
             "})"),
    ]  # fmt: skip
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    nbformat.write(build(), OUT)
    print(OUT)
