"""Causal (shifted) convolutions for autoregressive image models.

A *down-shifted* convolution sees only the rows at or above the output row; a
*down-right-shifted* one sees only rows above plus the part of the current row at or to the
left of the output column. Combined with :func:`down_shift` / :func:`right_shift` they give
PixelCNN's vertical and horizontal streams without masks and without a blind spot. All
shapes are ``[batch, channels, height, width]``; stride-1 layers keep height and width,
stride-2 layers halve them and the transposed versions double them.

References:
    Salimans et al. 2017, "PixelCNN++: Improving the PixelCNN with Discretized Logistic
    Mixture Likelihood and Other Modifications", ICLR (https://arxiv.org/abs/1701.05517).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def down_shift(x: Tensor) -> Tensor:
    """Move every row one down (zeros enter at the top, the last row drops out)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: Tensor) -> Tensor:
    """Move every column one right (zeros enter at the left, the last column drops out)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def concat_elu(x: Tensor) -> Tensor:
    """``elu([x, -x])`` along channels: keeps both signs' information, doubles channels.

    References:
        Salimans et al. 2017, PixelCNN++, section 2.
    """
    return F.elu(torch.cat([x, -x], dim=1))


class DownShiftedConv2d(nn.Module):
    """Convolution whose output at row ``i`` sees input rows ``i - kh + 1 .. i`` only.

    The kernel ``(kh, kw)`` with odd ``kw`` is centred horizontally.

    References:
        Salimans et al. 2017, PixelCNN++ (OpenAI ``down_shifted_conv2d``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int] = (2, 3),
        stride: int = 1,
    ) -> None:
        super().__init__()
        kernel_height, kernel_width = kernel_size
        if kernel_width % 2 != 1:
            raise ValueError(f"DownShiftedConv2d needs an odd kernel width, got {kernel_width}")
        half_width = (kernel_width - 1) // 2
        # (left, right, top, bottom): all vertical context comes from above
        self.padding = (half_width, half_width, kernel_height - 1, 0)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.conv(F.pad(x, self.padding))
        return result


class DownRightShiftedConv2d(nn.Module):
    """Convolution whose output at ``(i, j)`` sees inputs at rows ``<= i`` and columns ``<= j``.

    References:
        Salimans et al. 2017, PixelCNN++ (OpenAI ``down_right_shifted_conv2d``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int] = (2, 2),
        stride: int = 1,
    ) -> None:
        super().__init__()
        kernel_height, kernel_width = kernel_size
        self.padding = (kernel_width - 1, 0, kernel_height - 1, 0)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.conv(F.pad(x, self.padding))
        return result


class DownShiftedConvTranspose2d(nn.Module):
    """Stride-2 transposed convolution, cropped so that it stays down-shifted.

    References:
        Salimans et al. 2017, PixelCNN++ (OpenAI ``down_shifted_deconv2d``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int] = (2, 3),
        stride: int = 2,
    ) -> None:
        super().__init__()
        kernel_height, kernel_width = kernel_size
        if kernel_width % 2 != 1:
            raise ValueError(
                f"DownShiftedConvTranspose2d needs an odd kernel width, got {kernel_width}"
            )
        self.kernel_size = kernel_size
        self.conv = nn.ConvTranspose2d(
            in_channels, out_channels, kernel_size, stride=stride, output_padding=1
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        kernel_height, kernel_width = self.kernel_size
        half_width = (kernel_width - 1) // 2
        height, width = out.shape[-2:]
        # dropping the bottom rows keeps every output row fed only by rows above it
        result: Tensor = out[:, :, : height - kernel_height + 1, half_width : width - half_width]
        return result


class DownRightShiftedConvTranspose2d(nn.Module):
    """Stride-2 transposed convolution, cropped so that it stays down-right-shifted.

    References:
        Salimans et al. 2017, PixelCNN++ (OpenAI ``down_right_shifted_deconv2d``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int] = (2, 2),
        stride: int = 2,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.ConvTranspose2d(
            in_channels, out_channels, kernel_size, stride=stride, output_padding=1
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        kernel_height, kernel_width = self.kernel_size
        height, width = out.shape[-2:]
        result: Tensor = out[:, :, : height - kernel_height + 1, : width - kernel_width + 1]
        return result
