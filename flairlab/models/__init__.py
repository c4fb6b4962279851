"""Floor 3 — the models: pure `torch.nn` code and its weight files.

`mae_config` (geometry, sizes, fusion modes), `mae` (the MAESTRO-style multimodal masked
autoencoder, shapes in the docstrings), `masking`, `heads` (attentive segmentation / multilabel
heads), `segmodel` (encoder + head, building from a checkpoint, fine-tuned files), `checkpoint`
(safetensors + JSON config on disk), `contrastive_losses` / `ccl_kernel` (InfoNCE and CCL-K),
`reference` (IGN's reference MAESTRO checkpoints in and out), `hub` (its released weights from the
Hugging Face Hub), `pretrained` (`load_pretrained`: any of them, or a flairlab checkpoint),
`flops` (model FLOPs per training step, counted layer by layer, and GPU bf16 peaks for MFU).

Imports: `flairlab.data` (catalog, band lists) only.
"""
