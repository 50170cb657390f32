"""Make image sets comparable: size and channels, chosen explicitly and documented.

- 28x28 -> 32x32: by default zero-pad 2 pixels on every side (the digit stays at MNIST's
  scale; the pad value 0 is MNIST's background); ``upscale="resize"`` resizes instead, as the
  chicken post did. Shrinking always resizes with antialiasing.
- 1 -> 3 channels repeats the gray channel; 3 -> 1 uses ITU-R 601 luma
  (0.299 R + 0.587 G + 0.114 B), rounded. Nothing is converted implicitly.
- Centre crops (user photos, CelebA's faces) are torchvision's ``center_crop``.

Resizing and luma are computed in float and rounded: torchvision's uint8 kernels truncate
(``rgb_to_grayscale``: half of all colours one level darker) or use fixed-point arithmetic
(antialiased ``resize``: ~18% of pixels off by one level), which would shift every dataset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor

from dgmood.data.imageset import ImageSet

LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def to_channels(images: Tensor, channels: int) -> Tensor:
    """uint8 ``[C, H, W]`` or ``[N, C, H, W]`` with C in {1, 3} -> ``channels`` channels.

    Gray -> RGB repeats the channel; RGB -> gray is ITU-R 601 luma, rounded. Returns the
    input itself when it already has ``channels`` channels. The one conversion for datasets
    and user images alike.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if images.ndim not in (3, 4):
        raise ValueError(f"expected [C, H, W] or [N, C, H, W], got shape {list(images.shape)}")
    have = images.shape[-3]
    if channels not in (1, 3) or have not in (1, 3):
        raise ValueError(f"can convert only between 1 and 3 channels, got {have} -> {channels}")
    if have == channels:
        return images
    if channels == 3:
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:]).contiguous()
    weights = torch.tensor(LUMA_WEIGHTS).view(3, 1, 1)
    gray = (images.to(torch.float32) * weights).sum(-3, keepdim=True)
    return gray.round().clamp(0, 255).to(torch.uint8)


def center_crop_square(image: Image.Image, side: int | None = None) -> Image.Image:
    """The centred ``side`` x ``side`` square of ``image`` (default side: its shorter edge).

    torchvision's ``center_crop``: an odd margin puts the extra pixel where Python's
    ``round(margin / 2)`` says (round half to even).
    """
    side = min(image.size) if side is None else side
    result: Image.Image = TF.center_crop(image, [side, side])
    return result


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
    resized = TF.resize(images.to(torch.float32), [size, size], antialias=True)
    result: Tensor = resized.round().clamp(0, 255).to(torch.uint8)
    return result


def match_format(imageset: ImageSet, channels: int, size: int, upscale: str = "pad") -> ImageSet:
    """``imageset`` with ``channels`` channels at ``size`` x ``size`` pixels."""
    images = to_size(to_channels(imageset.images, channels), size, upscale)
    return imageset if images is imageset.images else imageset.with_images(images)
