"""Per-stage decoder convolution kernels for nnU-Net v2's PlainConvUNet.

nnU-Net v2 gives decoder stage s the kernel of the encoder stage it merges with; nnU-Net v1's
Generic_UNet gave it the kernel of the stage below. With an anisotropic first stage ([1, 3, 3]) the
two differ, so a network imported from v1 (``workflow_scripts.deployment.v1_import``) names its decoder kernels
in the plans (configuration key ``panseg_decoder_kernel_sizes``, lowest resolution first) and the
trainers rebuild those decoder stages with them.
"""

from __future__ import annotations

DECODER_KERNELS_KEY = "panseg_decoder_kernel_sizes"


def set_decoder_kernel_sizes(unet, kernel_sizes) -> None:
    """Rebuild each decoder stage of a PlainConvUNet whose kernel differs from `kernel_sizes[s]`."""
    from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks

    decoder, encoder = unet.decoder, unet.encoder
    if len(kernel_sizes) != len(decoder.stages):
        raise ValueError(f"{DECODER_KERNELS_KEY}: {len(kernel_sizes)} kernels for {len(decoder.stages)} decoder stages")
    for s, kernel in enumerate(kernel_sizes):
        stage = decoder.stages[s]
        first = stage.convs[0].conv
        if list(first.kernel_size) == [int(k) for k in kernel]:
            continue
        decoder.stages[s] = StackedConvBlocks(
            len(stage.convs), encoder.conv_op, first.in_channels, stage.output_channels, [int(k) for k in kernel], 1,
            encoder.conv_bias, encoder.norm_op, encoder.norm_op_kwargs, encoder.dropout_op, encoder.dropout_op_kwargs,
            encoder.nonlin, encoder.nonlin_kwargs)


def apply_plans_decoder_kernels(network, configuration_manager):
    """The network, with the decoder kernels the configuration names (if any)."""
    kernels = configuration_manager.configuration.get(DECODER_KERNELS_KEY)
    if kernels:
        set_decoder_kernel_sizes(network, kernels)
    return network
