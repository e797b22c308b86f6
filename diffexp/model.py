"""The denoising network: a diffusers `UNet2DModel`, sized by a few numbers."""

from __future__ import annotations

from diffusers import UNet2DModel

from diffexp.errors import ConfigError


def unet(
    sample_size: int,
    in_channels: int,
    block_out_channels: list[int],
    attention_levels: list[bool],
    layers_per_block: int = 2,
    norm_num_groups: int = 32,
    dropout: float = 0.0,
) -> UNet2DModel:
    """Builds a UNet with one resolution level per entry of `block_out_channels`.

    Args:
        sample_size: image side in pixels; must be divisible by 2 ** (levels - 1).
        in_channels: image channels (the output has as many).
        block_out_channels: width of each level, from full resolution down.
        attention_levels: whether each level has self-attention (lowest resolutions are where it pays).
        layers_per_block: ResNet blocks per level.
        norm_num_groups: GroupNorm groups; must divide every width.
        dropout: dropout in the ResNet blocks.
    """
    levels = len(block_out_channels)
    if len(attention_levels) != levels:
        raise ConfigError(
            f"model.attention_levels has {len(attention_levels)} entries but model.block_out_channels has "
            f"{levels}: give one true/false per level"
        )
    factor = 2 ** (levels - 1)
    if sample_size % factor:
        raise ConfigError(
            f"data.resolution={sample_size} is not divisible by {factor}, the down-sampling of a {levels}-level "
            f"model: use a resolution that is a multiple of {factor} or a model with fewer levels"
        )
    bad = [c for c in block_out_channels if c % norm_num_groups]
    if bad:
        raise ConfigError(f"model.norm_num_groups={norm_num_groups} does not divide widths {bad}: change either")
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels))
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        layers_per_block=layers_per_block,
        block_out_channels=tuple(block_out_channels),
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=norm_num_groups,
        dropout=dropout,
    )
