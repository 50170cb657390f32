"""Flow models assembled from parts: Glow (affine / additive), CV-Glow and RealNVP.

Variants are choices of parts made here, once, when the model is built:

- ``glow``: actnorm -> LU 1x1 conv -> affine coupling (sigmoid scale), learned conditional
  priors at each split and a learned top prior (Kingma & Dhariwal 2018);
- ``glow-additive``: the same with additive (translation-only) couplings;
- ``cv-glow``: constant-volume Glow (Nalisnick et al. 2019, section 5): additive couplings,
  and N(0, I) priors everywhere, so ``log|det J|`` does not depend on x and the base
  density is the isotropic Gaussian their second-order analysis assumes;
- ``realnvp``: checkerboard then channel affine couplings (tanh scale) with ResNet
  conditioners, actnorm in place of batch norm, N(0, I) priors (Dinh et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor

from dgmood.config import DataConfig, ModelConfig
from dgmood.models.base import Capability, FamilySpec, InputSpec, Term
from dgmood.models.flows.actnorm import ActNorm
from dgmood.models.flows.bijection import Bijection, Compose, Squeeze
from dgmood.models.flows.conv1x1 import InvertibleConv1x1, LUInvertibleConv1x1
from dgmood.models.flows.coupling import (
    Additive,
    AffineSigmoid,
    AffineTanh,
    ChannelCoupling,
    ElementwiseTransform,
    MaskedCoupling,
    checkerboard_mask,
)
from dgmood.models.flows.multiscale import (
    ConditionalPrior,
    LearnedPrior,
    MultiscaleFlow,
    Prior,
    Split,
    StandardNormalPrior,
)
from dgmood.models.registry import register_family
from dgmood.nn.layers import GlowConditioner, ResNetConditioner


@dataclass(frozen=True)
class GlowConfig(ModelConfig):
    family: ClassVar[str] = "glow"
    n_levels: int = 3  # L: number of scales (squeeze + K steps [+ split])
    n_steps: int = 32  # K: flow steps per level (actnorm, 1x1 conv, coupling)
    hidden_channels: int = 512  # width of each coupling's conditioner network
    coupling: Literal["affine", "additive"] = "affine"  # element-wise coupling transform
    lu_decomposed: bool = True  # LU-parametrised 1x1 convs (O(C) log-det) vs plain slogdet
    split_prior: Literal["conditional", "standard"] = "conditional"  # prior of factored-out z
    learn_top: bool = True  # learned per-channel mean/std of the top latent (else N(0, I))
    n_bits: int = 8  # bit depth of the modelled pixels (Glow used 5 on CelebA-HQ)


@dataclass(frozen=True)
class RealNVPConfig(ModelConfig):
    family: ClassVar[str] = "realnvp"
    n_levels: int = 3  # scales; each but the last: 3 checkerboard, squeeze, 3 channel couplings
    hidden_channels: int = 64  # conditioner ResNet width
    n_blocks: int = 8  # residual blocks per conditioner
    n_bits: int = 8  # bit depth of the modelled pixels


def _input_spec(data: DataConfig, n_bits: int) -> InputSpec:
    return InputSpec(shape=(data.channels, data.image_size, data.image_size), n_bits=n_bits)


def _glow_transform(config: GlowConfig) -> type[ElementwiseTransform]:
    return {"affine": AffineSigmoid, "additive": Additive}[config.coupling]


def build_glow(config: GlowConfig, data: DataConfig) -> MultiscaleFlow:
    spec = _input_spec(data, config.n_bits)
    transform_cls = _glow_transform(config)
    conv_cls = LUInvertibleConv1x1 if config.lu_decomposed else InvertibleConv1x1
    channels, size = data.channels, data.image_size
    levels: list[Bijection] = []
    splits: list[Split] = []
    for level in range(config.n_levels):
        if size % 2:
            raise ValueError(
                f"{config.n_levels} levels need the image side divisible by "
                f"{2**config.n_levels}; got {data.image_size}"
            )
        channels, size = channels * 4, size // 2
        steps: list[Bijection] = [Squeeze()]
        for _ in range(config.n_steps):
            transform = transform_cls()
            free = channels // 2
            conditioner = GlowConditioner(
                channels - free, transform.params_per_dim * free, config.hidden_channels
            )
            steps += [
                ActNorm(channels),
                conv_cls(channels),
                ChannelCoupling(channels, conditioner, transform),
            ]
        levels.append(Compose(steps))
        if level < config.n_levels - 1:
            keep = channels - channels // 2
            prior: Prior = (
                ConditionalPrior(keep, channels // 2)
                if config.split_prior == "conditional"
                else StandardNormalPrior()
            )
            splits.append(Split(channels, prior))
            channels = keep
    top: Prior = LearnedPrior(channels) if config.learn_top else StandardNormalPrior()
    return MultiscaleFlow(spec, levels, splits, top)


def build_realnvp(config: RealNVPConfig, data: DataConfig) -> MultiscaleFlow:
    spec = _input_spec(data, config.n_bits)
    channels, size = data.channels, data.image_size

    def checkerboard(parity: int) -> list[Bijection]:
        conditioner = ResNetConditioner(
            channels, 2 * channels, config.hidden_channels, config.n_blocks
        )
        mask = checkerboard_mask(size, size, parity)
        return [MaskedCoupling(mask, conditioner, AffineTanh(channels)), ActNorm(channels)]

    def channelwise() -> list[Bijection]:
        free = channels // 2
        conditioner = ResNetConditioner(
            channels - free, 2 * free, config.hidden_channels, config.n_blocks
        )
        coupling = ChannelCoupling(channels, conditioner, AffineTanh(free))
        # reversing the channel order alternates which half is transformed
        return [coupling, ActNorm(channels), _ReverseChannels()]

    levels: list[Bijection] = []
    splits: list[Split] = []
    for level in range(config.n_levels):
        last = level == config.n_levels - 1
        steps: list[Bijection] = []
        n_checker = 4 if last else 3
        for i in range(n_checker):
            steps += checkerboard(i % 2)
        if not last:
            steps.append(Squeeze())
            channels, size = channels * 4, size // 2
            for _ in range(3):
                steps += channelwise()
        levels.append(Compose(steps))
        if not last:
            splits.append(Split(channels, StandardNormalPrior()))
            channels = channels - channels // 2
    return MultiscaleFlow(spec, levels, splits, StandardNormalPrior())


class _ReverseChannels(Bijection):
    """Reverse the channel order: a permutation, volume preserving."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flip(1), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z.flip(1), z.new_zeros(z.shape[0])


_FLOW_CAPABILITIES = frozenset(
    {
        Capability.EXACT_LIKELIHOOD,
        Capability.LOG_DET_DECOMPOSITION,
        Capability.TERM_DECOMPOSITION,
        Capability.MULTISCALE_FLOW,
        Capability.MEMORY_LIGHT,
        Capability.BF16_SAFE,
        Capability.SAMPLING,
    }
)


# log p(x) = log p(z) + log|det J|: Nalisnick et al. 2019, Section 4
FLOW_TERMS = (
    Term("log_pz", "density term log p(z)"),
    Term("log_abs_det_jacobian", "volume term log|det J|"),
)


def _glow_capabilities(config: GlowConfig) -> frozenset[Capability]:
    # additive couplings leave actnorm and the 1x1 convs, whose log-dets do not depend on x
    return frozenset({Capability.CONSTANT_VOLUME}) if config.coupling == "additive" else frozenset()


register_family(
    FamilySpec(
        name="glow",
        config=GlowConfig,
        build=build_glow,
        kind="density",
        description="Glow (Kingma & Dhariwal 2018): actnorm, LU 1x1 convs, affine couplings",
        presets={
            # seconds per step on CPU; for tests
            "tiny": GlowConfig(n_levels=2, n_steps=2, hidden_channels=16),
            # the demo: FashionMNIST in ~10 minutes on 2 CPU cores
            "cpu": GlowConfig(n_levels=3, n_steps=4, hidden_channels=64),
            # Kingma & Dhariwal's CIFAR-10 model (3.35 bits/dim published)
            "paper": GlowConfig(n_levels=3, n_steps=32, hidden_channels=512),
        },
        capabilities=_FLOW_CAPABILITIES,
        config_capabilities=_glow_capabilities,
        decomposition=FLOW_TERMS,
        # CIFAR-10 at the cpu size: ~0.16 CPU-seconds per step of 64 in bf16 (one thread),
        # so 5000 steps are ~13 minutes of one core (docs/RESULTS.md, CIFAR-10)
        colour_train_overrides={
            "cpu": {"steps": 5000, "eval_every": 1000, "checkpoint_every": 250}
        },
        aliases={
            "glow-additive": {"coupling": "additive"},
            # constant-volume Glow (Nalisnick et al. 2019, section 5)
            "cv-glow": {"coupling": "additive", "split_prior": "standard", "learn_top": False},
        },
    )
)
register_family(
    FamilySpec(
        name="realnvp",
        config=RealNVPConfig,
        build=build_realnvp,
        kind="density",
        description="RealNVP (Dinh et al. 2017): checkerboard and channel affine couplings",
        presets={
            "tiny": RealNVPConfig(n_levels=2, hidden_channels=16, n_blocks=1),
            "cpu": RealNVPConfig(n_levels=2, hidden_channels=32, n_blocks=2),
            "paper": RealNVPConfig(n_levels=3, hidden_channels=64, n_blocks=8),
        },
        capabilities=_FLOW_CAPABILITIES,
        decomposition=FLOW_TERMS,
        # CIFAR-10 at the cpu size: ~44 images/s of training in bf16 on one loaded core
        # (benchmarks/throughput.py at load 7), so 1200 x 64 is <= 30 minutes
        colour_train_overrides={"cpu": {"steps": 1200, "eval_every": 400, "checkpoint_every": 100}},
    )
)
