"""Build `notebooks/02_band_histograms.ipynb`: `.venv/bin/python notebooks/_build/build_02.py`.

The notebook is generated (nbformat), committed without outputs, and executed by papermill.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "02_band_histograms.ipynb"

PARAMETERS = """\
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
"""


def build() -> nbformat.NotebookNode:
    md, code = new_markdown_cell, new_code_cell
    cells = [
        md("# 02 · Band histograms, correlations and band groups\n\n"
           "One streaming pass over the image files computes, per modality and band: histograms "
           "on fixed bin edges from the catalog (S1 in dB), count / mean / variance, min / max, "
           "and the band correlation matrix — overall, per domain, per split and per COSIA "
           "class. Every statistic is a mergeable accumulator, so the same code runs on a "
           "process pool here and on a dask cluster for the full 241k patches.\n\n"
           "MAESTRO normalises its reconstruction targets per **group of strongly correlated "
           "bands**. Instead of taking its fixed groups on faith, we cluster the correlation "
           "matrix (average linkage on 1 − |r|) and compare. The chosen groups and the per-band "
           "normalisation statistics go to a file that pretraining reads."),
        code(PARAMETERS, metadata={"tags": ["parameters"]}),
        code("%matplotlib inline\n"
             "from pathlib import Path\n\n"
             "import holoviews as hv\n\n"
             "from flairlab.bandgroups import (compare_groups, discover_groups, norm_entries,\n"
             "                                 save_norm_file)\n"
             "from flairlab.catalog import load_catalog\n"
             "from flairlab.explore_plots import (plot_band_groups, plot_correlation,\n"
             "                                    plot_histograms)\n"
             "from flairlab.results import save_results\n"
             "from flairlab.scale import IMAGE_MODALITIES, compute_stats, select_patches\n\n"
             "hv.extension('bokeh', logo=False, inline=True)\n"
             "Path(output_dir).mkdir(parents=True, exist_ok=True)\n"
             "cat = load_catalog()\n"
             "index = select_patches(source, split=split or None, n_patches=n_patches or None,\n"
             "                       seed=seed, catalog=cat)\n"
             "stats = compute_stats(index, clouds=False, profiles=False, class_counts=False,\n"
             "                      workers=workers)\n"
             "summary = stats.summary()\n"
             "summary.to_csv(f'{output_dir}/summary.csv', index=False)\n"
             "summary.round(3)"),
        md("`space` is the value space of the statistics (`db` = 10·log10 of linear power); "
           "`under` / `over` count values outside the catalog's histogram range, `invalid` "
           "non-finite values (and S1 values ≤ 0)."),
        md("## Histograms per modality\n\nShare of pixels per bin (all patches)."),
        code("for name in IMAGE_MODALITIES:\n"
             "    if name in stats.bands:\n"
             "        display(plot_histograms(stats, name, output_dir=output_dir,\n"
             "                                interactive=interactive, catalog=cat))"),
        md("## By domain (or split / class, see `hist_by`)"),
        code("for name in ('AERIAL_RGBI', 'SENTINEL2_TS', 'SENTINEL1-ASC_TS'):\n"
             "    if name in stats.bands:\n"
             "        display(plot_histograms(stats, name, by=hist_by, output_dir=output_dir,\n"
             "                                interactive=interactive, catalog=cat))"),
        md("## Sentinel-2 per COSIA class\n\nEach 10.24 m pixel takes the majority class of the "
           "0.2 m label pixels it covers; the eight classes with the most pixels are drawn in "
           "their official colours."),
        code("plot_histograms(stats, 'SENTINEL2_TS', by='class', bands=class_bands.split(','),\n"
             "                output_dir=output_dir, interactive=interactive, catalog=cat)"),
        md("## Band groups: discovered vs MAESTRO"),
        code("groups = discover_groups(stats, min_corr=min_corr, catalog=cat)\n"
             "table = compare_groups(groups, catalog=cat)\n"
             "table"),
        code("plot_band_groups(stats, groups, min_corr, output_dir=output_dir,\n"
             "                 interactive=interactive, catalog=cat)"),
        md("## Correlation matrices\n\nBands reordered by the discovered groups (outlined)."),
        code("for name in ('AERIAL_RGBI', 'SPOT_RGBI', 'SENTINEL2_TS', 'SENTINEL1-ASC_TS'):\n"
             "    if name in groups:\n"
             "        display(plot_correlation(stats, name, band_groups=groups[name],\n"
             "                                 output_dir=output_dir, interactive=interactive,\n"
             "                                 catalog=cat))"),
        md("## Normalisation statistics for pretraining\n\nPer band mean and std in the "
           "statistics' space and after the catalog scaling the model applies "
           "(`scaled_mean` / `scaled_std`), with the discovered groups and MAESTRO's. Format: "
           "`flairlab.bandgroups` docstring; read it back with `load_norm_file`."),
        code("entries = norm_entries(stats, groups, min_corr, catalog=cat)\n"
             "path = save_norm_file(Path(output_dir) / norm_file, entries, source=source,\n"
             "                      n_patches=stats.n_patches, overwrite=True)\n"
             "print(path.read_text()[:1500])"),
        code("save_results(output_dir, {\n"
             "    'n_patches': stats.n_patches,\n"
             "    'split': split,\n"
             "    'min_corr': min_corr,\n"
             "    'norm_file': str(path),\n"
             "    'band_groups': groups,\n"
             "    'groups_vs_maestro': table.to_dict(orient='records'),\n"
             "    'summary': summary.to_dict(orient='records'),\n"
             "    'missing_files': stats.missing,\n"
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
