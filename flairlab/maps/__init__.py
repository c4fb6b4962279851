"""Floor 5 — maps: predictions placed on the ground.

`predict` (patch and zone inference, the `flairlab predict` CLI), `mosaic` (zone grids, blended
mosaics written as Cloud-Optimized GeoTIFFs), `leaflet` (interactive leafmap / ipyleaflet maps),
`html_map` (offline HTML maps with vendored Leaflet).

Imports: every floor below (`data`, `explore`, `models`, `training`).
"""
