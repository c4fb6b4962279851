"""Floor 4 — training: the loops that fit the models, and what they report.

`pretrain` (the Lightning Fabric pre-training loop and its CLI) with `pretrain_config`,
`pretrainer` and `contrastive` (objectives), `finetune` (probe → fine-tune → evaluate, the
`flairlab finetune` CLI), `schedules` (the one LR schedule and EMA), `loop` (samplers, RNG and
precision helpers, metric logs), `compiling` (the `compile` option: torch.compile with a
warm-up check), `metrics` (torchmetrics segmentation / multilabel metrics),
`pretrain_plots` / `objective_plots` / `finetune_plots` (figures of the runs), `requirements`
(GPU memory and time per epoch of a fine-tuning run, from FLOPs).

Imports: `flairlab.data`, `flairlab.explore`, `flairlab.models`.
"""
