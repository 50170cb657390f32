"""The noise-prediction U-Net ``eps_hat(z_t; gamma_t)`` of a variational diffusion model.

A DDPM-style U-Net (residual blocks with GroupNorm and SiLU, optional self-attention,
skip connections between the down and up paths) conditioned on the noise level through a
sinusoidal embedding of ``gamma`` rescaled to [0, 1], with VDM's two additions: Fourier
features of the input (so that the network sees the fine, sub-level structure of ``z`` at
low noise) and the "base measure" ``eps_hat = z + net(z)``. With one resolution level it
is VDM's CIFAR-10 network (no downsampling); with several it is the cheaper DDPM layout.

References: Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020
(Appendix B); Kingma, Salimans, Poole & Ho, "Variational Diffusion Models", NeurIPS 2021
(Appendix B and their ``ScoreUNet``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups where the width allows it (fewer for narrow test networks)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def zero_init(module: nn.Conv2d | nn.Linear) -> nn.Conv2d | nn.Linear:
    """The module with weights and bias set to zero (residual branches start as identity)."""
    nn.init.zeros_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


def sinusoidal_embedding(position: Tensor, dim: int) -> Tensor:
    """Transformer-style embedding of positions ``[B]`` (here ``1000 * t``), shape ``[B, dim]``."""
    half = dim // 2
    frequencies = torch.exp(
        -math.log(10_000.0)
        * torch.arange(half, dtype=position.dtype, device=position.device)
        / max(half - 1, 1)
    )
    angles = position[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, dim - 2 * half))


class FourierFeatures(nn.Module):
    """``sin`` and ``cos`` of ``2^n * 2 pi * z`` for each exponent ``n``, per input channel.

    At ``n = 7`` one period spans ~one level of 8-bit data on [-1, 1] (spacing 2/255), so
    the network can resolve where ``z`` sits between levels.

    References: Kingma et al., "Variational Diffusion Models", NeurIPS 2021, Sec. 3.4.
    """

    frequencies: Tensor

    def __init__(self, exponents: tuple[int, ...]) -> None:
        super().__init__()
        frequencies = 2.0 * math.pi * 2.0 ** torch.tensor(exponents, dtype=torch.float32)
        self.register_buffer("frequencies", frequencies)

    @property
    def multiplier(self) -> int:
        """Output channels per input channel."""
        return 2 * self.frequencies.numel()

    def forward(self, z: Tensor) -> Tensor:
        angles = z.unsqueeze(2) * self.frequencies.view(1, 1, -1, 1, 1)  # [B, C, F, H, W]
        features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=2)
        return features.flatten(1, 2)


class ResidualBlock(nn.Module):
    """GroupNorm-SiLU-conv, + the noise-level embedding, GroupNorm-SiLU-dropout-zero conv."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.cond = zero_init(nn.Linear(cond_dim, out_channels, bias=False))
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.cond(cond)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        result: Tensor = self.skip(x) + h
        return result


class AttentionBlock(nn.Module):
    """Single-head self-attention over all pixels, residual, output projection zero-initialised."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2).unsqueeze(1),
            k.transpose(1, 2).unsqueeze(1),
            v.transpose(1, 2).unsqueeze(1),
        )  # [B, 1, HW, C]
        result: Tensor = x + self.proj(attended.squeeze(1).transpose(1, 2).reshape(b, c, h, w))
        return result


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.conv(x)
        return result


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return result


class NoisePredictionUNet(nn.Module):
    """``eps_hat(z, gamma)``: the noise in ``z = alpha x + sigma eps`` at noise level ``gamma``.

    ``gamma`` (``[B]`` or a scalar) is rescaled to ``(gamma - gamma_low) / (gamma_high -
    gamma_low)`` with the *configured* schedule range (fixed at construction, so a learned
    schedule does not move the embedding), times 1000, and embedded sinusoidally.
    """

    gamma_low: Tensor
    gamma_high: Tensor

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        channels: int,
        channel_multipliers: tuple[int, ...],
        blocks_per_level: int,
        attention_resolutions: tuple[int, ...],
        middle_attention: bool,
        dropout: float,
        fourier_exponents: tuple[int, ...],
        gamma_range: tuple[float, float],
    ) -> None:
        super().__init__()
        if not channel_multipliers:
            raise ValueError("channel_multipliers needs at least one level")
        if image_size % 2 ** (len(channel_multipliers) - 1):
            raise ValueError(
                f"image_size {image_size} is not divisible by 2^{len(channel_multipliers) - 1} "
                f"({len(channel_multipliers)} resolution levels)"
            )
        self.register_buffer("gamma_low", torch.tensor(float(gamma_range[0])))
        self.register_buffer("gamma_high", torch.tensor(float(gamma_range[1])))
        self.channels = channels
        cond_dim = 4 * channels
        self.cond_mlp = nn.Sequential(
            nn.Linear(channels, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim), nn.SiLU()
        )
        self.fourier = FourierFeatures(fourier_exponents) if fourier_exponents else None
        input_width = in_channels * (1 + (self.fourier.multiplier if self.fourier else 0))
        self.conv_in = nn.Conv2d(input_width, channels, 3, padding=1)

        self.down = nn.ModuleList()
        skip_widths = [channels]
        width, resolution = channels, image_size
        for level, multiplier in enumerate(channel_multipliers):
            for _ in range(blocks_per_level):
                out = channels * multiplier
                self.down.append(
                    self._block(width, out, cond_dim, dropout, resolution, attention_resolutions)
                )
                width = out
                skip_widths.append(width)
            if level < len(channel_multipliers) - 1:
                self.down.append(Downsample(width))
                skip_widths.append(width)
                resolution //= 2
        self.middle = nn.ModuleList([ResidualBlock(width, width, cond_dim, dropout)])
        if middle_attention:
            self.middle.append(AttentionBlock(width))
        self.middle.append(ResidualBlock(width, width, cond_dim, dropout))

        self.up = nn.ModuleList()
        for level, multiplier in reversed(list(enumerate(channel_multipliers))):
            for _ in range(blocks_per_level + 1):
                out = channels * multiplier
                self.up.append(
                    self._block(
                        width + skip_widths.pop(),
                        out,
                        cond_dim,
                        dropout,
                        resolution,
                        attention_resolutions,
                    )
                )
                width = out
            if level > 0:
                self.up.append(Upsample(width))
                resolution *= 2
        assert not skip_widths
        self.norm_out = group_norm(width)
        self.conv_out = zero_init(nn.Conv2d(width, in_channels, 3, padding=1))

    @staticmethod
    def _block(
        in_width: int,
        out_width: int,
        cond_dim: int,
        dropout: float,
        resolution: int,
        attention_resolutions: tuple[int, ...],
    ) -> nn.Module:
        block = ResidualBlock(in_width, out_width, cond_dim, dropout)
        if resolution in attention_resolutions:
            return _BlockWithAttention(block, AttentionBlock(out_width))
        return block

    def forward(self, z: Tensor, gamma: Tensor) -> Tensor:
        gamma = gamma.to(z.dtype).reshape(-1).expand(z.shape[0])
        position = 1000.0 * (gamma - self.gamma_low) / (self.gamma_high - self.gamma_low)
        cond = self.cond_mlp(sinusoidal_embedding(position, self.channels))
        h = torch.cat([z, self.fourier(z)], dim=1) if self.fourier is not None else z
        h = self.conv_in(h)
        skips = [h]
        for module in self.down:
            h = module(h) if isinstance(module, Downsample) else module(h, cond)
            skips.append(h)
        for module in self.middle:
            h = module(h) if isinstance(module, AttentionBlock) else module(h, cond)
        for module in self.up:
            if isinstance(module, Upsample):
                h = module(h)
            else:
                h = module(torch.cat([h, skips.pop()], dim=1), cond)
        assert not skips
        result: Tensor = z + self.conv_out(F.silu(self.norm_out(h)))
        return result


class _BlockWithAttention(nn.Module):
    """A residual block followed by self-attention (levels listed in attention_resolutions)."""

    def __init__(self, block: ResidualBlock, attention: AttentionBlock) -> None:
        super().__init__()
        self.block, self.attention = block, attention

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        result: Tensor = self.attention(self.block(x, cond))
        return result
