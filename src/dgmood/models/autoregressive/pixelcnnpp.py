"""PixelCNN++: a two-stream gated PixelCNN with a discretized logistic mixture likelihood.

The likelihood functions are pure: they take the network's raw output ``params``
``[B, P, H, W]`` and images ``x`` ``[B, C, H, W]`` on the discrete input scale
``k / (2**n_bits - 1) * 2 - 1`` and return log masses in nats. ``params`` is laid out along
channels as ``[mixture logits (K) | means (C*K) | log scales (C*K) | coupling coeffs
(C*(C-1)/2*K)]``; each block reshapes to ``[B, n, K, H, W]`` (channel-major). For RGB the
three coupling coefficients are, in order, G<-R, B<-R, B<-G (OpenAI's order), so the mean
of channel ``c`` is ``mu_c + sum_{c' < c} tanh(coeff) * x_{c'}``.

References:
    Salimans et al. 2017, "PixelCNN++: Improving the PixelCNN with Discretized Logistic
    Mixture Likelihood and Other Modifications", ICLR (https://arxiv.org/abs/1701.05517);
    code https://github.com/openai/pixel-cnn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from dgmood.config import DataConfig, ModelConfig
from dgmood.models.base import Capability, DensityModel, FamilySpec, InputSpec
from dgmood.models.registry import register_family
from dgmood.nn.distributions import discretized_logistic_log_mass
from dgmood.nn.shifted_conv import (
    DownRightShiftedConv2d,
    DownRightShiftedConvTranspose2d,
    DownShiftedConv2d,
    DownShiftedConvTranspose2d,
    concat_elu,
    down_shift,
    right_shift,
)

LOG_SCALE_MIN = -7.0  # floor on the logistic log-scale, as in the OpenAI code

# ---------------------------------------------------------------------------------------
# Discretized mixture of logistics
# ---------------------------------------------------------------------------------------


class MixLogisticParams(NamedTuple):
    """Raw network output split into the mixture's parts (before coupling)."""

    logit_probs: Tensor  # [B, K, H, W] unnormalised mixture weights
    means: Tensor  # [B, C, K, H, W] per-channel means before channel coupling
    log_scales: Tensor  # [B, C, K, H, W] log of the logistic scale, floored at -7
    coeffs: Tensor  # [B, C*(C-1)/2, K, H, W] tanh-squashed channel coupling coefficients


def n_coupling_coeffs(n_channels: int) -> int:
    """Number of channel coupling coefficients per mixture component (3 for RGB)."""
    return n_channels * (n_channels - 1) // 2


def n_mix_logistic_params(n_channels: int, n_logistic_mix: int) -> int:
    """Output channels the network needs: ``K * (1 + 2C + C(C-1)/2)`` (100 for RGB, K=10)."""
    return n_logistic_mix * (1 + 2 * n_channels + n_coupling_coeffs(n_channels))


def split_mix_logistic_params(params: Tensor, n_channels: int) -> MixLogisticParams:
    """Split ``params`` ``[B, P, H, W]`` into mixture logits, means, log-scales, coefficients."""
    per_component = 1 + 2 * n_channels + n_coupling_coeffs(n_channels)
    if params.shape[1] % per_component != 0:
        raise ValueError(
            f"params has {params.shape[1]} channels, not a multiple of {per_component} "
            f"(the parameters of one mixture component for {n_channels} image channels)"
        )
    n_mix = params.shape[1] // per_component
    batch, _, height, width = params.shape
    sizes = [n_mix, n_channels * n_mix, n_channels * n_mix, n_coupling_coeffs(n_channels) * n_mix]
    logit_probs, means, log_scales, coeffs = torch.split(params, sizes, dim=1)
    return MixLogisticParams(
        logit_probs=logit_probs,
        means=means.reshape(batch, n_channels, n_mix, height, width),
        log_scales=log_scales.reshape(batch, n_channels, n_mix, height, width).clamp(
            min=LOG_SCALE_MIN
        ),
        coeffs=torch.tanh(coeffs).reshape(batch, -1, n_mix, height, width),
    )


def coupled_means(x: Tensor, means: Tensor, coeffs: Tensor) -> Tensor:
    """Means of every channel given the previous channels of the same pixel.

    ``x`` is ``[B, C, H, W]``, ``means`` ``[B, C, K, H, W]``, ``coeffs`` ``[B, C(C-1)/2, K,
    H, W]``; returns ``[B, C, K, H, W]`` with ``mean_c = mu_c + sum_{c'<c} coeff * x_{c'}``.

    References:
        Salimans et al. 2017, PixelCNN++, section 2.2.
    """
    n_channels = x.shape[1]
    channel_means = []
    coeff_index = 0
    for channel in range(n_channels):
        mean = means[:, channel]
        for previous in range(channel):
            mean = mean + coeffs[:, coeff_index] * x[:, previous].unsqueeze(1)
            coeff_index += 1
        channel_means.append(mean)
    return torch.stack(channel_means, dim=1)


def _component_log_mass(x: Tensor, params: Tensor, n_bits: int) -> tuple[Tensor, Tensor]:
    """Per-channel, per-component log masses ``[B, C, K, H, W]`` and log mixture weights."""
    mix = split_mix_logistic_params(params, x.shape[1])
    means = coupled_means(x, mix.means, mix.coeffs)
    log_mass = discretized_logistic_log_mass(
        x.unsqueeze(2), means, mix.log_scales, low=-1.0, high=1.0, n_levels=2**n_bits
    )
    return log_mass, F.log_softmax(mix.logit_probs, dim=1)


def discretized_mix_logistic_log_prob(x: Tensor, params: Tensor, n_bits: int = 8) -> Tensor:
    """Per-pixel log mass ``[B, H, W]`` (nats) of ``x`` ``[B, C, H, W]`` under the mixture.

    All channels of a pixel share the mixture component:
    ``p(x) = sum_k pi_k prod_c P(x_c | x_<c, k)``.

    References:
        Salimans et al. 2017, PixelCNN++, sections 2.1-2.2.
    """
    log_mass, log_weights = _component_log_mass(x, params, n_bits)
    return torch.logsumexp(log_weights + log_mass.sum(dim=1), dim=1)


def discretized_mix_logistic_channel_log_prob(x: Tensor, params: Tensor, n_bits: int = 8) -> Tensor:
    """Log mass ``[B, C, H, W]`` of each channel given the previous channels of its pixel.

    ``log p(x_c | x_<c) = log p(x_<=c) - log p(x_<c)``; the sum over channels equals
    :func:`discretized_mix_logistic_log_prob`.
    """
    log_mass, log_weights = _component_log_mass(x, params, n_bits)
    log_joint_up_to = torch.logsumexp(
        log_weights.unsqueeze(1) + torch.cumsum(log_mass, dim=1), dim=2
    )
    log_joint_before = F.pad(log_joint_up_to, (0, 0, 0, 0, 1, 0))[:, :-1]
    return log_joint_up_to - log_joint_before


def sample_discretized_mix_logistic(
    params: Tensor,
    n_channels: int,
    n_bits: int = 8,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``x`` ``[B, C, H, W]`` on the discrete grid from the mixture given by ``params``.

    ``temperature`` divides the mixture logits and multiplies the logistic scales.

    References:
        Salimans et al. 2017, PixelCNN++ (OpenAI ``sample_from_discretized_mix_logistic``).
    """
    mix = split_mix_logistic_params(params, n_channels)
    batch, n_mix, height, width = mix.logit_probs.shape

    def uniform(shape: tuple[int, ...]) -> Tensor:
        noise = torch.rand(shape, generator=generator, dtype=params.dtype, device="cpu")
        return noise.to(params.device).clamp(1e-5, 1.0 - 1e-5)

    gumbel = -torch.log(-torch.log(uniform((batch, n_mix, height, width))))
    component = torch.argmax(mix.logit_probs / temperature + gumbel, dim=1)
    index = component[:, None, None].expand(batch, 1, 1, height, width)

    def pick(values: Tensor) -> Tensor:
        expanded = index.expand(values.shape[0], values.shape[1], 1, height, width)
        return values.gather(2, expanded).squeeze(2)

    means, log_scales = pick(mix.means), pick(mix.log_scales)
    coeffs = pick(mix.coeffs)
    u = uniform((batch, n_channels, height, width))
    logistic_noise = torch.log(u) - torch.log1p(-u)
    n_steps = 2**n_bits - 1
    channels: list[Tensor] = []
    coeff_index = 0
    for channel in range(n_channels):
        scale = temperature * torch.exp(log_scales[:, channel])
        value = means[:, channel] + scale * logistic_noise[:, channel]
        for previous in range(channel):
            value = value + coeffs[:, coeff_index] * channels[previous]
            coeff_index += 1
        # snap to the grid so later channels and pixels condition on an actual level
        level = torch.round((value.clamp(-1.0, 1.0) + 1.0) / 2.0 * n_steps)
        channels.append(level / n_steps * 2.0 - 1.0)
    return torch.stack(channels, dim=1)


# ---------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------


def _nin(in_channels: int, out_channels: int) -> nn.Module:
    """Network-in-network: a 1x1 convolution (a per-pixel linear layer)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1)


class GatedResNet(nn.Module):
    """``x + a * sigmoid(b)`` with ``[a, b] = conv(dropout(concat_elu(conv(concat_elu(x)) +
    nin(concat_elu(skip)))))``; ``conv`` is a causal convolution class.

    References:
        Salimans et al. 2017, PixelCNN++, section 2.4 / figure 2; van den Oord et al. 2016,
        "Conditional Image Generation with PixelCNN Decoders" (gating).
    """

    def __init__(
        self,
        n_filters: int,
        conv: type[nn.Module],
        n_skip_streams: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv_input = conv(2 * n_filters, n_filters)
        self.skip = _nin(2 * n_skip_streams * n_filters, n_filters) if n_skip_streams else None
        # nn.Dropout(0.0) still draws a mask in training mode
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv_out = conv(2 * n_filters, 2 * n_filters)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        hidden = self.conv_input(concat_elu(x))
        if self.skip is not None:
            if skip is None:
                raise ValueError("this GatedResNet was built with a skip input; pass `skip`")
            hidden = hidden + self.skip(concat_elu(skip))
        hidden = self.conv_out(self.dropout(concat_elu(hidden)))
        value, gate = hidden.chunk(2, dim=1)
        result: Tensor = x + value * torch.sigmoid(gate)
        return result


def _blocks(stage: nn.Module) -> list[GatedResNet]:
    """The gated resnets of one stage (a ModuleList), typed."""
    return [block for block in stage.children() if isinstance(block, GatedResNet)]


class PixelCNNppNetwork(nn.Module):
    """Images ``[B, C, H, W]`` in [-1, 1] -> mixture parameters ``[B, P, H, W]``.

    The output at pixel ``(i, j)`` depends only on pixels before it in raster order. A
    vertical stream ``u`` (rows above) and a horizontal stream ``ul`` (rows above and the
    pixels to the left) run an up pass through ``n_downsample + 1`` resolutions, then a
    down pass that consumes every up-pass activation through skip connections.

    References:
        Salimans et al. 2017, PixelCNN++, section 2.4 and figure 2.
    """

    def __init__(
        self,
        n_channels: int,
        n_resnet: int = 5,
        n_filters: int = 160,
        n_logistic_mix: int = 10,
        n_downsample: int = 2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.n_channels = n_channels
        self.n_resnet = n_resnet
        self.n_downsample = n_downsample
        in_channels = n_channels + 1  # a constant-ones channel marks the zero padding
        self.u_init = DownShiftedConv2d(in_channels, n_filters, (2, 3))
        self.ul_init_above = DownShiftedConv2d(in_channels, n_filters, (1, 3))
        self.ul_init_left = DownRightShiftedConv2d(in_channels, n_filters, (2, 1))

        def u_block(n_skip: int) -> GatedResNet:
            return GatedResNet(n_filters, DownShiftedConv2d, n_skip, dropout)

        def ul_block(n_skip: int) -> GatedResNet:
            return GatedResNet(n_filters, DownRightShiftedConv2d, n_skip, dropout)

        n_stages = n_downsample + 1
        self.up_u = nn.ModuleList(
            nn.ModuleList(u_block(0) for _ in range(n_resnet)) for _ in range(n_stages)
        )
        self.up_ul = nn.ModuleList(
            nn.ModuleList(ul_block(1) for _ in range(n_resnet)) for _ in range(n_stages)
        )
        self.downsize_u = nn.ModuleList(
            DownShiftedConv2d(n_filters, n_filters, (2, 3), stride=2) for _ in range(n_downsample)
        )
        self.downsize_ul = nn.ModuleList(
            DownRightShiftedConv2d(n_filters, n_filters, (2, 2), stride=2)
            for _ in range(n_downsample)
        )
        # the down pass at each upsampled resolution has one more block, to consume the
        # up pass's downsized activation through its skip connection
        down_counts = [n_resnet] + [n_resnet + 1] * n_downsample
        self.down_u = nn.ModuleList(
            nn.ModuleList(u_block(1) for _ in range(count)) for count in down_counts
        )
        self.down_ul = nn.ModuleList(
            nn.ModuleList(ul_block(2) for _ in range(count)) for count in down_counts
        )
        self.upsize_u = nn.ModuleList(
            DownShiftedConvTranspose2d(n_filters, n_filters, (2, 3)) for _ in range(n_downsample)
        )
        self.upsize_ul = nn.ModuleList(
            DownRightShiftedConvTranspose2d(n_filters, n_filters, (2, 2))
            for _ in range(n_downsample)
        )
        self.out = _nin(n_filters, n_mix_logistic_params(n_channels, n_logistic_mix))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, GatedResNet):
                # residual branches start small so the deep stack starts near identity
                conv = module.conv_out.conv
                assert isinstance(conv, nn.Conv2d)
                with torch.no_grad():
                    conv.weight.mul_(0.1)
        for module in list(self.modules()):
            if isinstance(module, nn.ConvTranspose2d):
                weight_norm(module, dim=1)  # per output channel, like the OpenAI code
            elif isinstance(module, nn.Conv2d):
                weight_norm(module, dim=0)

    def forward(self, x: Tensor) -> Tensor:
        ones = torch.ones_like(x[:, :1])
        x_padded = torch.cat([x, ones], dim=1)
        u = down_shift(self.u_init(x_padded))
        ul = down_shift(self.ul_init_above(x_padded)) + right_shift(self.ul_init_left(x_padded))
        u_skips, ul_skips = [u], [ul]
        for stage in range(self.n_downsample + 1):
            for u_res, ul_res in zip(
                _blocks(self.up_u[stage]), _blocks(self.up_ul[stage]), strict=True
            ):
                u = u_res(u)
                ul = ul_res(ul, u)
                u_skips.append(u)
                ul_skips.append(ul)
            if stage < self.n_downsample:
                u = self.downsize_u[stage](u)
                ul = self.downsize_ul[stage](ul)
                u_skips.append(u)
                ul_skips.append(ul)

        u, ul = u_skips.pop(), ul_skips.pop()
        for stage in range(self.n_downsample + 1):
            for u_res, ul_res in zip(
                _blocks(self.down_u[stage]), _blocks(self.down_ul[stage]), strict=True
            ):
                u = u_res(u, u_skips.pop())
                ul = ul_res(ul, torch.cat([u, ul_skips.pop()], dim=1))
            if stage < self.n_downsample:
                u = self.upsize_u[stage](u)
                ul = self.upsize_ul[stage](ul)
        result: Tensor = self.out(F.elu(ul))
        return result


# ---------------------------------------------------------------------------------------
# Density model, config, registry
# ---------------------------------------------------------------------------------------


class PixelCNNpp(DensityModel):
    """PixelCNN++ as a :class:`DensityModel`: ``log_prob`` is the log *mass* of the image.

    Inputs are on the discrete scale ``k / (2**n_bits - 1) * 2 - 1`` (see
    :func:`dgmood.data.dequantize.to_model_input`), never dequantized.

    References:
        Salimans et al. 2017, "PixelCNN++", ICLR (https://arxiv.org/abs/1701.05517).
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        n_resnet: int = 5,
        n_filters: int = 160,
        n_logistic_mix: int = 10,
        n_downsample: int = 2,
        dropout: float = 0.5,
        n_bits: int = 8,
    ) -> None:
        super().__init__()
        n_channels, height, width = shape
        factor = 2**n_downsample
        if height % factor or width % factor:
            raise ValueError(
                f"image size {height}x{width} is not divisible by 2**n_downsample = {factor}; "
                "pad the images or use fewer down-sampling stages"
            )
        self.input_spec = InputSpec(
            shape=(n_channels, height, width), n_bits=n_bits, low=-1.0, high=1.0, discrete=True
        )
        self.network = PixelCNNppNetwork(
            n_channels, n_resnet, n_filters, n_logistic_mix, n_downsample, dropout
        )

    def _check_shape(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.input_spec.shape:
            raise ValueError(
                f"images have shape {tuple(x.shape[1:])}, PixelCNN++ expects "
                f"{self.input_spec.shape} (channels, height, width)"
            )

    def mixture_params(self, x: Tensor) -> Tensor:
        """Raw mixture parameters ``[B, P, H, W]``; pixel ``(i, j)`` sees only earlier pixels."""
        self._check_shape(x)
        result: Tensor = self.network(x)
        return result

    def log_prob_terms(self, x: Tensor) -> dict[str, Tensor]:
        params = self.mixture_params(x)
        log_mass = discretized_mix_logistic_log_prob(x, params, self.input_spec.n_bits)
        return {"log_prob": log_mass.flatten(1).sum(dim=1)}

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """``n`` images on the discrete input scale, one pixel at a time (``H*W`` passes)."""
        n_channels, height, width = self.input_spec.shape
        reference = next(self.parameters())
        canvas = torch.zeros(n, n_channels, height, width, dtype=reference.dtype)
        canvas = canvas.to(reference.device)
        was_training = self.training
        self.eval()
        try:
            for row in range(height):
                for col in range(width):
                    params = self.network(canvas)[:, :, row : row + 1, col : col + 1]
                    pixel = sample_discretized_mix_logistic(
                        params, n_channels, self.input_spec.n_bits, temperature
                    )
                    canvas[:, :, row, col] = pixel[:, :, 0, 0]
        finally:
            self.train(was_training)
        return canvas


@dataclass(frozen=True)
class PixelCNNppConfig(ModelConfig):
    """PixelCNN++ hyper-parameters; the defaults are the published CIFAR-10 model."""

    family: ClassVar[str] = "pixelcnnpp"
    n_resnet: int = 5  # gated resnet blocks per resolution in each stream and pass
    n_filters: int = 160  # channels of the u and ul streams
    n_logistic_mix: int = 10  # logistic mixture components per pixel
    n_downsample: int = 2  # stride-2 stages; the network works at n_downsample + 1 resolutions
    dropout: float = 0.5  # dropout probability inside every gated resnet block
    n_bits: int = 8  # bit depth modelled; 8 = all 256 levels per channel


def build_pixelcnnpp(config: PixelCNNppConfig, data: DataConfig) -> PixelCNNpp:
    """PixelCNN++ for ``(data.channels, data.image_size, data.image_size)`` images."""
    return PixelCNNpp(
        shape=(data.channels, data.image_size, data.image_size),
        n_resnet=config.n_resnet,
        n_filters=config.n_filters,
        n_logistic_mix=config.n_logistic_mix,
        n_downsample=config.n_downsample,
        dropout=config.dropout,
        n_bits=config.n_bits,
    )


register_family(
    FamilySpec(
        name="pixelcnnpp",
        config=PixelCNNppConfig,
        build=build_pixelcnnpp,
        kind="density",
        description="PixelCNN++ (Salimans et al. 2017): discretized logistic mixtures",
        presets={
            "tiny": PixelCNNppConfig(
                n_resnet=1, n_filters=8, n_logistic_mix=3, n_downsample=2, dropout=0.0
            ),
            # ~0.4 GFLOP per 32x32 image for forward+backward (~30 ms of one core): ~600 steps
            # of 64 images in 10 min on 2 cores; too short a run to overfit, hence no dropout
            "cpu": PixelCNNppConfig(
                n_resnet=1, n_filters=16, n_logistic_mix=5, n_downsample=2, dropout=0.0
            ),
            # Salimans et al. 2017, CIFAR-10: 2.92 bits/dim on the test set (53.7M parameters)
            "paper": PixelCNNppConfig(
                n_resnet=5, n_filters=160, n_logistic_mix=10, n_downsample=2, dropout=0.5
            ),
        },
        capabilities=frozenset({Capability.EXACT_LIKELIHOOD, Capability.SAMPLING}),
        train_overrides={
            "cpu": {"steps": 500, "batch_size": 32, "lr": 2e-3},
            "paper": {"optimizer": "adam", "lr": 1e-3, "batch_size": 16},
        },
        # CIFAR-10 at the cpu size: ~0.43 CPU-seconds per step of 32 (fp32, one thread), so
        # ~22 minutes of one core; still improving at the end (docs/RESULTS.md, CIFAR-10)
        colour_train_overrides={"cpu": {"steps": 3000, "eval_every": 500, "checkpoint_every": 100}},
    )
)
