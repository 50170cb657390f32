"""Plain network pieces shared by models: actnorm, zero-initialised convs, conditioners."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmood.nn.eval_cache import eval_cached


def fold_conv_actnorm(conv: nn.Conv2d, actnorm: ActNormLayer) -> tuple[Tensor, Tensor]:
    """``(weight, bias)`` of the single conv equal to ``actnorm(conv(x))``.

    ``((W x + c) + b) * s = (s W) x + (c + b) * s``, per output channel.
    """
    scale = torch.exp(actnorm.log_scale).flatten()
    bias = actnorm.bias.flatten() if conv.bias is None else conv.bias + actnorm.bias.flatten()
    return conv.weight * scale[:, None, None, None], bias * scale


def fold_zero_conv(conv: ZeroConv2d) -> tuple[Tensor, Tensor]:
    """``(weight, bias)`` of the single conv equal to ``conv`` (its output scale folded in)."""
    scale = torch.exp(conv.logs * conv.logscale_factor).flatten()
    assert conv.conv.bias is not None
    return conv.conv.weight * scale[:, None, None, None], conv.conv.bias * scale


def _global_channel_mean(x: Tensor) -> Tensor:
    """Per-channel mean ``[1, C, 1, 1]`` over batch and pixels, of all data-parallel ranks.

    Under ``torch.distributed`` every rank initialises on its shard of one global batch, so
    the statistics are all-reduced: every rank gets those of the whole batch, as a single
    process would (two passes, mean then centred second moment, for stability).
    """
    total = x.sum(dim=(0, 2, 3), keepdim=True)
    count = torch.tensor(float(x.numel() // x.shape[1]), dtype=total.dtype, device=x.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
        torch.distributed.all_reduce(count)
    return total / count


class ActNormLayer(nn.Module):
    """Per-channel affine ``y = (x + bias) * exp(log_scale)`` with data-dependent init.

    On the first forward pass in training mode, bias and scale are set so that the output
    has zero mean and unit variance per channel on that batch.

    References: Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", 2018.
    """

    initialized: Tensor

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.eps = eps
        self.register_buffer("initialized", torch.tensor(False))
        self._ready = False  # a Python copy of ``initialized`` once it is True

    @property
    def ready(self) -> bool:
        """Whether the data-dependent init has run. After the first True it is a Python bool,
        so ``torch.compile`` guards on it instead of breaking the graph to read a buffer."""
        if not self._ready and bool(self.initialized):
            self._ready = True
        return self._ready

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False  # read the loaded buffer again

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        mean = _global_channel_mean(x)
        std = torch.sqrt(_global_channel_mean((x - mean) ** 2))
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and not self.ready:
            self.initialize(x)
        return (x + self.bias) * torch.exp(self.log_scale)

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class ZeroConv2d(nn.Module):
    """3x3 conv initialised to output zeros, with a learned per-channel output scale.

    Makes every coupling start as the identity. ``out = conv(x) * exp(logs * logscale_factor)``.

    References: Kingma & Dhariwal, 2018 (Glow's ``conv2d_zeros``).
    """

    def __init__(self, in_channels: int, out_channels: int, logscale_factor: float = 3.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        assert self.conv.bias is not None
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.logscale_factor = logscale_factor

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.conv(x) * torch.exp(self.logs * self.logscale_factor)
        return result


class GlowConditioner(nn.Module):
    """Glow's coupling network: conv3x3, actnorm, relu, conv1x1, actnorm, relu, zero conv3x3.

    Once its actnorms are initialised, each actnorm (and the zero conv's output scale) is
    folded into its conv: three convolutions with bias and two ReLUs, two fewer passes over
    the hidden activations forward and backward. Gradients reach the original parameters
    through the (weight-sized) folding; in eval mode without gradients the folded weights
    are cached. ``fold = False`` runs the layers one by one.
    """

    fold: bool = True

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1, bias=False),
            ActNormLayer(hidden_channels),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1, bias=False),
            ActNormLayer(hidden_channels),
            nn.ReLU(),
            ZeroConv2d(hidden_channels, out_channels),
        )

    def _folded(self) -> list[tuple[Tensor, Tensor]]:
        conv_in, norm_in, _, conv_mid, norm_mid, _, conv_out = self.net
        assert isinstance(conv_in, nn.Conv2d) and isinstance(conv_mid, nn.Conv2d)
        assert isinstance(norm_in, ActNormLayer) and isinstance(norm_mid, ActNormLayer)
        assert isinstance(conv_out, ZeroConv2d)
        return [
            fold_conv_actnorm(conv_in, norm_in),
            fold_conv_actnorm(conv_mid, norm_mid),
            fold_zero_conv(conv_out),
        ]

    def _initialized(self) -> bool:
        norm_in, norm_mid = self.net[1], self.net[4]
        assert isinstance(norm_in, ActNormLayer) and isinstance(norm_mid, ActNormLayer)
        return norm_in.ready and norm_mid.ready

    def forward(self, x: Tensor) -> Tensor:
        if not self.fold or (self.training and not self._initialized()):
            result: Tensor = self.net(x)  # data-dependent init needs the unfolded activations
            return result
        folded = eval_cached(self, "folded", [*self.parameters()], self._folded)
        (w_in, b_in), (w_mid, b_mid), (w_out, b_out) = folded
        h = F.relu(F.conv2d(x, w_in, b_in, padding=1))
        h = F.relu(F.conv2d(h, w_mid, b_mid))
        return F.conv2d(h, w_out, b_out, padding=1)


class ResidualBlock(nn.Module):
    """Pre-activation residual block with actnorm (RealNVP's conditioner, actnorm for batchnorm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            ActNormLayer(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            ActNormLayer(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = x + self.net(x)
        return result


class ResNetConditioner(nn.Module):
    """RealNVP's coupling network: conv in, ``n_blocks`` residual blocks, zero conv out.

    References: Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int, n_blocks: int
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            *[ResidualBlock(hidden_channels) for _ in range(n_blocks)],
            ActNormLayer(hidden_channels),
            nn.ReLU(),
            ZeroConv2d(hidden_channels, out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.net(x)
        return result
