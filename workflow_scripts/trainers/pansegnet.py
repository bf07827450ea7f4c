"""PanSegNet: nnU-Net 3d_fullres with an Efficient-Attention transformer on the bottleneck."""

from __future__ import annotations

from ..models.pansegnet import PanSegNet
from .base import PanSegTrainer


class PanSegNetTrainer(PanSegTrainer):
    """nnU-Net's recipe and U-Net; the transformer's size comes from ``plans["panseg_network"]``
    (written by the workflow from config: paper size by default, a small one in the demo)."""

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision=True):
        unet = PanSegTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)
        return PanSegNet(unet, **plans_manager.plans.get("panseg_network", {}))
