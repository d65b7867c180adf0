"""The segmentation model: MONAI backbone, text-conditioned head, DAN, PDM, losses, checkpoints."""
