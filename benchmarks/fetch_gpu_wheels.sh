#!/usr/bin/env bash
# Download the Python 3.12 manylinux wheels that the lent GPU machine lacks into .whl/ (ignored by
# git), for `benchmarks/gpu_check.sh` to install into /tmp/site there (that machine has no network).
#
#   bash benchmarks/fetch_gpu_wheels.sh            # the default set (below)
#   bash benchmarks/fetch_gpu_wheels.sh zarr==3.1.3 numcodecs==0.16.3 ...   # extra packages too
#
# The machine's image has torch, lightning, torchmetrics, safetensors, numpy, pandas, xarray,
# PyYAML, tqdm, scipy, matplotlib (see /work/.library/device/KINDS.md) but not pydantic, which the
# catalog (data_catalog.yaml validation) needs on the model / training path. Versions are the ones
# of this project's environment, so the code runs there against what it was tested with here.
# --no-deps: every needed package is named; one version of each (two would stop the install).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${WHEEL_DIR:-.whl}
PY=${PYTHON:-python3}
DEFAULT=(
  pydantic==2.14.4
  pydantic_core==2.50.5
  annotated_types==0.8.0
  typing_inspection==0.4.5
  typing_extensions==4.16.0
)
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${DEFAULT[@]}" "$@"
ls -l "$DEST"
du -sh "$DEST"
