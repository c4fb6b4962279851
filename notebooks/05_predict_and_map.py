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
# # 05 · Predictions on interactive maps
#
# A land-cover model is judged by looking at its map over the aerial image. This notebook predicts patches — or whole zones (all patches of a `DOMAIN_ROI`, mosaicked on their Lambert-93 grid from the GeoTIFF transforms) — and writes **Cloud-Optimized GeoTIFFs** in EPSG:2154: classes with the COSIA colour table, optional class probabilities, the ground-truth mosaic and an error raster (0 correct, 1 wrong, 255 not evaluated). They open as they are in QGIS.
#
# The map needs **no tile server and no internet**: rasters are reprojected to Web Mercator (nearest for classes) and embedded as PNG image overlays. The same layers are exported to a self-contained HTML page (Leaflet inlined) for reports.

# %% tags=["parameters"]
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
overwrite: bool = False  # write into a non-empty output_dir (an earlier run's files are replaced)
source: str = "sample"  # catalog source name (or a dataset folder)


# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from flairlab.data.catalog import load_catalog
from flairlab.data.dataset import dataset_index
from flairlab.data.results import save_figure, save_results
from flairlab.maps.html_map import export_html
from flairlab.maps.leaflet import interactive_map, plot_zone, zone_info, zone_overlays
from flairlab.maps.predict import load_segmentation_model, predict, select_patches

cat = load_catalog()
if source in cat.sources:
    from flairlab.explore.scale import ensure_sample

    root = ensure_sample(cat, source)
else:
    root = Path(source)
index = dataset_index(root)
patch_ids = select_patches(index, zone=zone, patches=patches, split=split)
print(f'{len(patch_ids)} patch(es) from {root}')

# %% [markdown]
# ## Model
#
# A fine-tuned checkpoint from notebook 04, or — with `checkpoint = ""` — a freshly initialised encoder and head (a smoke test of the pipeline: its map is noise). Any `predict_fn(batch) -> (B, K, H, W)` logits at 0.2 m works with `flairlab.maps.predict.predict`.

# %%
torch.manual_seed(seed)
predict_fn, model_modalities = load_segmentation_model(
    checkpoint or None, device=device, modalities=modalities.split(',')
)
model_modalities

# %% [markdown]
# ## Predict and mosaic
#
# One set of GeoTIFFs per zone. Where patches overlap, class probabilities are blended (`blend`); pixels no patch covers stay nodata.

# %%
results = predict(predict_fn, root, patch_ids, output_dir, modalities=model_modalities,
                  batch_size=batch_size, blend=blend, probabilities=probabilities,
                  overwrite=overwrite)
table = pd.DataFrame([{
    'zone': r.zone, 'patches': len(r.patch_ids), 'prediction': r.prediction.name,
    'OA': r.metrics.get('oa'), 'mIoU': r.metrics.get('miou'),
} for r in results]).set_index('zone')
table

# %% [markdown]
# ## The zone on a map
#
# The largest zone. Toggle layers and change their opacity (top right); drag the divider to compare the prediction (left) with the ground truth (right), both drawn over the aerial image. The error layer (hidden at first) shows wrong pixels in red.

# %%
main = max(results, key=lambda r: len(r.patch_ids))
overlays = zone_overlays(main, max_pixels=max_overlay_pixels)
m = interactive_map(overlays, basemap=basemap or None)
m

# %% [markdown]
# ## Offline HTML export
#
# One self-contained page per zone (Leaflet, the split control and the images are inside the file); it opens in any browser without network, fitted to the zone, with the zone, the model and its scores in a title box.

# %%
html_files = {}
for r in results:
    ovs = overlays if r is main else zone_overlays(r, max_pixels=max_overlay_pixels)
    heading, info = zone_info(r, checkpoint, model_modalities)
    html_files[r.zone] = export_html(ovs, Path(output_dir) / f'{r.zone}_map.html',
                                     heading=heading, info=info)
{z: f'{p.name}: {p.stat().st_size / 1e3:.0f} kB' for z, p in html_files.items()}

# %% [markdown]
# ## Static figure
#
# The same layers in Lambert-93 coordinates (also saved as PNG).

# %%
fig = plot_zone(main)
save_figure(fig, output_dir, 'zone_map')
plt.show()

# %%
save_results(output_dir, {
    'checkpoint': checkpoint, 'modalities': model_modalities, 'blend': blend,
    'n_patches': len(patch_ids), 'main_zone': main.zone,
    'zones': {r.zone: {
        'patch_ids': r.patch_ids, 'prediction': r.prediction.name,
        'probabilities': r.probabilities.name if r.probabilities else None,
        'truth': r.truth.name if r.truth else None,
        'error': r.error.name if r.error else None,
        'html': html_files[r.zone].name, 'metrics': r.metrics,
    } for r in results},
    'figures': ['zone_map'],
})
table
