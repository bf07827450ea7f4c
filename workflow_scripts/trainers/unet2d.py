"""The first seed's 2-D baseline: a slice-wise U-Net (nnU-Net's 2d configuration, Dice + CE loss)."""

from .base import PanSegTrainer


class UNet2DTrainer(PanSegTrainer):
    """nnU-Net's 2d U-Net trained slice by slice on the same folds; run with configuration '2d'."""
