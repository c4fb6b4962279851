"""Floor 1 — the data: everything that knows the FLAIR-HUB on-disk format.

`catalog` (the validated `data_catalog.yaml`), `index` (split CSVs and folders → one row per
patch), `reader` (GeoTIFFs → numpy / xarray, dates from the GeoPackages, label targets), `check`
(validate a dataset folder), `sample` and `synthetic*` (the embedded synthetic sample, written in
the exact format), `dataset` (the PyTorch Dataset the models train on), `pack` / `store`
(the packed Zarr training store: writing it, reading it from any fsspec URL), `sources` (generated
catalog sources made on first use), `synthetic_tensors` (random FLAIR-HUB-shaped tensors, no
files: `synthetic` source), `errors` and `results`
(the one exception family and the `results.json` / figure writers every floor uses).

Imports: the standard library, numpy / pandas / rasterio / torch — no other flairlab floor.
"""
