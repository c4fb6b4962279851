"""Build `notebooks/00_getting_started.ipynb`: `.venv/bin/python notebooks/_build/build_00.py`.

The notebook is generated (nbformat), committed without outputs, and executed by papermill.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "00_getting_started.ipynb"

PARAMETERS = """\
source: str = "sample"  # catalog source name (data_catalog.yaml `sources`) or a dataset folder
sample_patches: int = 40  # patches to generate when the sample is missing
split: str = ""  # train, valid or test; "" for every patch
n_patches: int = 0  # random subset of patches; 0 for all
workers: int = 2  # processes for the statistics; 0 runs serially in this kernel
seed: int = 0  # random subset and example patch
output_dir: str = "outputs/00_getting_started"  # results.json and figures/
interactive: bool = True  # bokeh plots (False: the static PNG twins)
"""


def build() -> nbformat.NotebookNode:
    md, code = new_markdown_cell, new_code_cell
    cells = [
        md("# 00 · Getting started with FLAIR-HUB\n\n"
           "[FLAIR-HUB](https://github.com/IGNF/FLAIR-HUB) (IGN) covers 2,528 km² of France "
           "with ten co-registered modalities per 102.4 m × 102.4 m patch: aerial RGBI at 0.2 m, "
           "elevation (DSM, DTM), SPOT 6-7, annual Sentinel-2 and Sentinel-1 (ascending and "
           "descending) series, 1950s panchromatic photos, and two label layers (COSIA land "
           "cover, LPIS crops).\n\n"
           "This notebook shows the **data catalog** (the single place where flairlab keeps "
           "bands, resolutions and class tables), finds the data — generating the synthetic "
           "sample (same on-disk format) when it is missing, or reading a real download when "
           "`source` names one — and gives an overview of domains, splits and classes."),
        code(PARAMETERS, metadata={"tags": ["parameters"]}),
        code("%matplotlib inline\n"
             "import holoviews as hv\n\n"
             "from flairlab.browser import plot_patch\n"
             "from flairlab.catalog import load_catalog\n"
             "from flairlab.explore_plots import class_table, modality_table, plot_overview\n"
             "from flairlab.results import save_figure, save_results\n"
             "from flairlab.scale import compute_stats, resolve_root, select_patches\n\n"
             "hv.extension('bokeh', logo=False, inline=True)\n"
             "cat = load_catalog()"),
        md("## The catalog: modalities\n\nOne row per modality folder. Time series store "
           "`T × bands` in date-major order; `maestro_groups` are the band groups MAESTRO "
           "normalises its reconstruction targets with (notebook 02 finds them in the data)."),
        code("modality_table(cat)"),
        md("## COSIA land-cover classes\n\nOfficial colours; classes 15-18 are ignored by the "
           "official metrics."),
        code("class_table('cosia', cat)"),
        md("## Where the data lives\n\nA catalog source name (`sample`, `flairhub`) resolves "
           "through `data_catalog.yaml` (or its environment variable, e.g. `FLAIRHUB_ROOT`); any "
           "other value is taken as a folder. The sample is generated on first use."),
        code("root = resolve_root(source, sample_patches=sample_patches, catalog=cat)\n"
             "index = select_patches(source, split=split or None, n_patches=n_patches or None,\n"
             "                       seed=seed, catalog=cat)\n"
             "print(f'{root}: {len(index)} patches')\n"
             "index.head()"),
        md("## Dataset overview\n\nPatches per domain and split, and the share of COSIA pixels "
           "per class (official colours) — counted by `flairlab.scale.compute_stats` over the "
           "label files (on a process pool when `workers > 1`)."),
        code("counts = compute_stats(index, modalities=(), by=(), correlation=False,\n"
             "                       clouds=False, profiles=False, workers=workers)\n"
             "overview = plot_overview(index, counts, output_dir=output_dir,\n"
             "                         interactive=interactive, catalog=cat)\n"
             "overview"),
        md("## One patch, every modality\n\n(Notebook 01 has the interactive browser.)"),
        code("example = index.sample(1, random_state=seed).index[0]\n"
             "fig = plot_patch(index, example, catalog=cat)\n"
             "save_figure(fig, output_dir, 'example_patch')\n"
             "fig"),
        code("cosia = counts.class_counts['cosia'].to_frame(cat.nomenclature('cosia').names)\n"
             "share = cosia.groupby('class_name', sort=False)['pixels'].sum()\n"
             "save_results(output_dir, {\n"
             "    'root': str(root),\n"
             "    'n_patches': len(index),\n"
             "    'domains': sorted(index['domain'].unique()),\n"
             "    'patches_per_split': (index['split'].value_counts().to_dict()\n"
             "                          if 'split' in index else {}),\n"
             "    'modality_files': index[cat.modality_names].notna().sum().to_dict(),\n"
             "    'cosia_pixel_share': (share / share.sum()).round(6).to_dict(),\n"
             "    'example_patch': example,\n"
             "    'figures': ['overview', 'example_patch'],\n"
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
