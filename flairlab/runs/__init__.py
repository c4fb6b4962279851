"""Floor 6 — runs: notebooks executed as reproducible, parameterised jobs.

`runner` (`flairlab run PIPELINE.yaml`, papermill into `runs/<UTC time>-<name>/`), `pipeline`
(pipeline files, sweeps, parameter checks), `notebooks` (reading parameters and outputs of
notebooks), `provenance` (run folders, environment and data fingerprints), `compare` (every run
side by side).

Imports: any floor below.
"""
