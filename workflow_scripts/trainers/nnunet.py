"""Plain nnU-Net: the baseline every paired test compares against."""

from .base import PanSegTrainer


class NnUNetTrainer(PanSegTrainer):
    """nnU-Net's 3d_fullres U-Net and training recipe, budget from config."""
