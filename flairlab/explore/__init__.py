"""Floor 2 — exploration: what is in the data, before any model.

`stats` / `stats_ts` / `patch_stats` (streaming, mergeable band and time-series statistics),
`scale` (running them over a dataset on a process pool or a dask cluster), `bandgroups` (band
groups discovered from correlations, normalisation files), `browser` (the ipywidgets patch
browser), `plots` / `ts_plots` (holoviews figures with static PNG twins).

Imports: `flairlab.data` only.
"""
