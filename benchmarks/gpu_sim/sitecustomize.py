"""Make this Python lack what the lent GPU machine lacks (for `gpu_check.sh --cpu-simulate`, tests).

That machine's image (/work/.library/device/KINDS.md) has torch, lightning, torchmetrics, numpy,
pandas, xarray, PyYAML, tqdm, scipy, matplotlib, safetensors — but no GDAL stack, no geometry
libraries, no Jupyter / papermill / plotting front-ends. With this folder on PYTHONPATH, Python
imports this file at start-up (site's `sitecustomize` hook) and marks those packages as absent:
`import rasterio` raises ModuleNotFoundError and `importlib.util.find_spec("rasterio")` is None,
as where they are not installed — in this process and in every child (DataLoader workers, torchrun
ranks). pydantic is not blocked: it travels to that machine as a wheel (fetch_gpu_wheels.sh).
"""

from __future__ import annotations

import sys

ABSENT_ON_GPU_MACHINE = (
    "rasterio", "pyogrio", "geopandas", "fiona", "rioxarray", "shapely", "pyproj", "osgeo",
    "papermill", "jupyterlab", "jupyter_server", "ipykernel", "nbformat", "nbconvert",
    "jupytext", "holoviews", "hvplot", "bokeh", "ipywidgets", "leafmap", "folium", "ipyleaflet",
)  # fmt: skip

for _name in ABSENT_ON_GPU_MACHINE:
    sys.modules[_name] = None  # type: ignore[assignment]  # the import system's "absent" mark
