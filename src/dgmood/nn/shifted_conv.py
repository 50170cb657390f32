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

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Padding = tuple[int, int, int, int]  # (left, right, top, bottom), as F.pad takes it


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


def _interior(x: Tensor, padding: Padding) -> Tensor:
    """The view of ``x`` ``[B, C, H, W]`` inside a ``padding`` border."""
    left, right, top, bottom = padding
    return x[:, :, top : x.shape[2] - bottom, left : x.shape[3] - right]


def _zero_border(out: Tensor, padding: Padding) -> Tensor:
    """Zero the ``padding`` border of ``out`` in place; returns the interior view."""
    left, right, top, bottom = padding
    for strip in (
        out[:, :, :top],
        out[:, :, out.shape[2] - bottom :],
        out[:, :, :, :left],
        out[:, :, :, out.shape[3] - right :],
    ):
        strip.zero_()
    return _interior(out, padding)


class _PaddedConcatElu(torch.autograd.Function):
    """``(padding, *parts) -> F.pad(concat_elu(torch.cat(parts, 1)), padding)``, one buffer.

    Forward writes both halves straight into the zero-bordered output, with one ``exp`` per
    input element: ``e = exp(-|x|) - 1`` is ``elu`` of whichever of ``x``, ``-x`` is
    ``<= 0``, and since ``exp(t) - 1 >= t``, ``elu(x) = max(x, e)`` and ``elu(-x) = max(-x,
    e)``. (``F.elu`` costs one ``expm1`` per *output* element, and on AVX-512 its out-of-line
    Sleef ``expm1`` call ran up to 10x slower than ``exp`` in some processes.) Backward uses
    ``elu'(t) = min(elu(t), 0) + 1`` of the saved output, which the next convolution keeps
    alive anyway.
    """

    @staticmethod
    def forward(ctx: Any, padding: Padding, *parts: Tensor) -> Tensor:
        first = parts[0]
        batch, _, height, width = first.shape
        widths = [part.shape[1] for part in parts]
        total = sum(widths)
        left, right, top, bottom = padding
        # channels-last in, channels-last out: the next convolution runs in x's format
        channels_last = first.stride(1) == 1 and first.shape[1] > 1
        out = torch.empty(
            (batch, 2 * total, height + top + bottom, width + left + right),
            dtype=first.dtype,
            device=first.device,
            memory_format=torch.channels_last if channels_last else torch.contiguous_format,
        )
        inner = _zero_border(out, padding)
        start = 0
        for part, n in zip(parts, widths, strict=True):
            positive = inner[:, start : start + n]
            negative = inner[:, total + start : total + start + n]
            torch.abs(part, out=negative).neg_().exp_().sub_(1.0)
            torch.maximum(part, negative, out=positive)
            torch.maximum(part.neg(), negative, out=negative)
            start += n
        ctx.save_for_backward(out)
        ctx.padding, ctx.widths = padding, widths
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (out,) = ctx.saved_tensors
        grad_inner, out_inner = _interior(grad, ctx.padding), _interior(out, ctx.padding)
        total = out.shape[1] // 2
        grads: list[Tensor] = []
        start = 0
        for n in ctx.widths:
            halves = (slice(start, start + n), slice(total + start, total + start + n))
            positive, negative = (
                torch.ops.aten.elu_backward(grad_inner[:, half], 1.0, 1, 1, True, out_inner[:, half])
                for half in halves
            )
            grads.append(positive.sub_(negative))  # d(-x)/dx = -1 for the second half
            start += n
        return (None, *grads)


def padded_concat_elu(parts: Sequence[Tensor], padding: Padding = (0, 0, 0, 0)) -> Tensor:
    """``F.pad(concat_elu(torch.cat(parts, dim=1)), padding)`` without the intermediate copies.

    ``elu(0) = 0``, so the zero padding of a causal convolution can be applied after the
    activation. The channels come out as ``[parts..., -parts...]``, as ``concat_elu`` of the
    concatenation lays them out.
    """
    return _PaddedConcatElu.apply(padding, *parts)  # type: ignore[no-any-return]


class CausalConv2d(nn.Module):
    """A convolution fed through a fixed zero padding that makes it causal.

    ``conv`` and ``padding`` are public so that a caller which already holds the padded
    input (:func:`padded_concat_elu`) can skip the padding copy.
    """

    padding: Padding
    conv: nn.Conv2d

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.padding))


class DownShiftedConv2d(CausalConv2d):
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


class DownRightShiftedConv2d(CausalConv2d):
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
        return out[:, :, : height - kernel_height + 1, half_width : width - half_width]


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
        return out[:, :, : height - kernel_height + 1, : width - kernel_width + 1]
