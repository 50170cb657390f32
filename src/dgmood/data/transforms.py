"""Make image sets comparable: size and channels, chosen explicitly and documented.

- 28x28 -> 32x32: by default zero-pad 2 pixels on every side (the digit stays at MNIST's
  scale; the pad value 0 is MNIST's background); ``upscale="resize"`` resizes instead, as the
  chicken post did. Shrinking always resizes with antialiasing.
- 1 -> 3 channels repeats the gray channel; 3 -> 1 uses ITU-R 601 luma
  (0.299 R + 0.587 G + 0.114 B), rounded. Nothing is converted implicitly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dgmood.data.imageset import ImageSet

LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def to_channels(images: Tensor, channels: int) -> Tensor:
    """uint8 ``[N, C, H, W]`` with C in {1, 3} -> ``channels`` channels."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
        gray = (images.to(torch.float32) * weights).sum(1, keepdim=True)
        return gray.round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"cannot convert {have} channels to {channels}; supported: 1 <-> 3")


def to_size(images: Tensor, size: int, upscale: str = "pad") -> Tensor:
    """uint8 ``[N, C, H, W]`` square images -> side ``size``.

    A smaller image is zero-padded (``upscale="pad"``, when the difference is even) or
    resized (``upscale="resize"``, as the chicken post did for 28 -> 32); a larger one is
    always resized with antialiasing.
    """
    if upscale not in ("pad", "resize"):
        raise ValueError(f"upscale must be 'pad' or 'resize', got {upscale!r}")
    height, width = images.shape[-2:]
    if height != width:
        raise ValueError(f"expected square images, got {height}x{width}")
    if height == size:
        return images
    if upscale == "pad" and height < size and (size - height) % 2 == 0:
        pad = (size - height) // 2
        return F.pad(images, (pad, pad, pad, pad), value=0)
    resized = F.interpolate(
        images.to(torch.float32),
        size=(size, size),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return resized.round().clamp(0, 255).to(torch.uint8)


def match_format(imageset: ImageSet, channels: int, size: int, upscale: str = "pad") -> ImageSet:
    """``imageset`` with ``channels`` channels at ``size`` x ``size`` pixels."""
    images = to_size(to_channels(imageset.images, channels), size, upscale)
    return ImageSet(imageset.name, imageset.split, images, imageset.labels)
