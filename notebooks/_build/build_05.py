"""Build `notebooks/05_predict_and_map.ipynb`: `.venv/bin/python notebooks/_build/build_05.py`.

The notebook is generated (nbformat), committed without outputs, and executed by papermill.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "05_predict_and_map.ipynb"

PARAMETERS = """\
checkpoint: str = ""  # fine-tuned model (finetuned.safetensors from 04), empty: fresh model
zone: str = ""  # DOMAIN_ROI zone(s), comma-separated, empty: every zone of the split
patches: str = ""  # comma-separated patch ids (overrides zone and split)
split: str = "test"  # restrict the selection to this split, empty: all patches
modalities: str = "aerial"  # inputs of a fresh model (a checkpoint brings its own)
blend: str = "average"  # where patches overlap: average or smooth (raised-cosine window)
probabilities: bool = True  # also write the class-probability raster
batch_size: int = 4  # patches per forward pass
max_overlay_pixels: int = 4000000  # per map layer, larger zones are downsampled
basemap: str = ""  # e.g. OpenStreetMap (needs internet), empty: none, fully offline
device: str = "auto"  # auto, cpu or cuda
seed: int = 0  # initialisation of a fresh model
output_dir: str = "outputs/05_predict_and_map"  # GeoTIFFs, HTML maps, results.json, figures/
source: str = "sample"  # catalog source name (or a dataset folder)
"""


def build() -> nbformat.NotebookNode:
    md, code = new_markdown_cell, new_code_cell
    cells = [
        md("# 05 · Predictions on interactive maps\n\n"
           "A land-cover model is judged by looking at its map over the aerial image. This "
           "notebook predicts patches — or whole zones (all patches of a `DOMAIN_ROI`, mosaicked "
           "on their Lambert-93 grid from the GeoTIFF transforms) — and writes "
           "**Cloud-Optimized GeoTIFFs** in EPSG:2154: classes with the COSIA colour table, "
           "optional class probabilities, the ground-truth mosaic and an error raster "
           "(0 correct, 1 wrong, 255 not evaluated). They open as they are in QGIS.\n\n"
           "The map needs **no tile server and no internet**: rasters are reprojected to Web "
           "Mercator (nearest for classes) and embedded as PNG image overlays. The same layers "
           "are exported to a self-contained HTML page (Leaflet inlined) for reports."),
        code(PARAMETERS, metadata={"tags": ["parameters"]}),
        code("from pathlib import Path\n\n"
             "import matplotlib.pyplot as plt\n"
             "import pandas as pd\n"
             "import torch\n\n"
             "from flairlab.catalog import load_catalog\n"
             "from flairlab.maps import interactive_map, plot_zone, zone_overlays\n"
             "from flairlab.maps_html import export_html\n"
             "from flairlab.predict import (dataset_index, load_segmentation_model, predict,\n"
             "                              select_patches)\n"
             "from flairlab.results import save_figure, save_results\n\n"
             "cat = load_catalog()\n"
             "if source in cat.sources:\n"
             "    from flairlab.scale import ensure_sample\n\n"
             "    root = ensure_sample(cat, source)\n"
             "else:\n"
             "    root = Path(source)\n"
             "index = dataset_index(root)\n"
             "patch_ids = select_patches(index, zone=zone, patches=patches, split=split)\n"
             "print(f'{len(patch_ids)} patch(es) from {root}')"),
        md("## Model\n\nA fine-tuned checkpoint from notebook 04, or — with `checkpoint = \"\"` — "
           "a freshly initialised encoder and head (a smoke test of the pipeline: its map is "
           "noise). Any `predict_fn(batch) -> (B, K, H, W)` logits at 0.2 m works with "
           "`flairlab.predict.predict`."),
        code("torch.manual_seed(seed)\n"
             "predict_fn, model_modalities = load_segmentation_model(\n"
             "    checkpoint or None, device=device, modalities=modalities.split(',')\n"
             ")\n"
             "model_modalities"),
        md("## Predict and mosaic\n\nOne set of GeoTIFFs per zone. Where patches overlap, "
           "class probabilities are blended (`blend`); pixels no patch covers stay nodata."),
        code("results = predict(predict_fn, root, patch_ids, output_dir, "
             "modalities=model_modalities,\n"
             "                  batch_size=batch_size, blend=blend, "
             "probabilities=probabilities)\n"
             "table = pd.DataFrame([{\n"
             "    'zone': r.zone, 'patches': len(r.patch_ids), 'prediction': r.prediction.name,\n"
             "    'OA': r.metrics.get('oa'), 'mIoU': r.metrics.get('miou'),\n"
             "} for r in results]).set_index('zone')\n"
             "table"),
        md("## The zone on a map\n\nThe largest zone. Toggle layers and change their opacity "
           "(top right); drag the divider to compare the prediction (left) with the ground "
           "truth (right). The error layer (hidden at first) shows wrong pixels in red."),
        code("main = max(results, key=lambda r: len(r.patch_ids))\n"
             "overlays = zone_overlays(main, max_pixels=max_overlay_pixels)\n"
             "m = interactive_map(overlays, basemap=basemap or None)\n"
             "m"),
        md("## Offline HTML export\n\nOne self-contained page per zone (Leaflet, the split "
           "control and the images are inside the file); it opens in any browser without "
           "network."),
        code("html_files = {}\n"
             "for r in results:\n"
             "    ovs = overlays if r is main else zone_overlays(r, "
             "max_pixels=max_overlay_pixels)\n"
             "    html_files[r.zone] = export_html(ovs, Path(output_dir) / f'{r.zone}_map.html')\n"
             "{z: f'{p.name}: {p.stat().st_size / 1e3:.0f} kB' for z, p in html_files.items()}"),
        md("## Static figure\n\nThe same layers in Lambert-93 coordinates (also saved as PNG)."),
        code("fig = plot_zone(main)\n"
             "save_figure(fig, output_dir, 'zone_map')\n"
             "plt.show()"),
        code("save_results(output_dir, {\n"
             "    'checkpoint': checkpoint, 'modalities': model_modalities, 'blend': blend,\n"
             "    'n_patches': len(patch_ids), 'main_zone': main.zone,\n"
             "    'zones': {r.zone: {\n"
             "        'patch_ids': r.patch_ids, 'prediction': r.prediction.name,\n"
             "        'probabilities': r.probabilities.name if r.probabilities else None,\n"
             "        'truth': r.truth.name if r.truth else None,\n"
             "        'error': r.error.name if r.error else None,\n"
             "        'html': html_files[r.zone].name, 'metrics': r.metrics,\n"
             "    } for r in results},\n"
             "    'figures': ['zone_map'],\n"
             "})\n"
             "table"),
    ]  # fmt: skip
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    nbformat.write(build(), OUT)
    print(OUT)
