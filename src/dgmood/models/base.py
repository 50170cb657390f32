"""The contracts every model honours.

A density model maps an image on its *continuous input scale* to a per-sample log density
(or, for discrete models such as PixelCNN++, a log probability mass) together with a
per-sample breakdown of that number. Turning uint8 pixels into that scale, and the
resulting change of units, lives in :mod:`dgmood.data.dequantize`; bits per dimension is
derived in exactly one place, :func:`dgmood.models.base.bits_per_dim`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from dgmood.config import DataConfig, ModelConfig


@dataclass(frozen=True)
class InputSpec:
    """What a model expects as input, and how uint8 pixels map onto it.

    A uint8 pixel ``k`` (reduced to ``n_bits``) maps to ``low + (k + u) / 2**n_bits * (high - low)``
    for continuous models (``u`` is the dequantization offset), and to
    ``low + k / (2**n_bits - 1) * (high - low)`` for discrete ones.
    """

    shape: tuple[int, int, int]  # (channels, height, width) of one image
    n_bits: int = 8  # bit depth the model sees; 8 = all 256 levels
    low: float = -0.5  # lower end of the continuous input range
    high: float = 0.5  # upper end of the continuous input range
    discrete: bool = False  # True: log_prob is already a log mass over the 2**n_bits levels

    @property
    def num_dims(self) -> int:
        """Number of scalar dimensions D of one image."""
        c, h, w = self.shape
        return c * h * w

    @property
    def n_levels(self) -> int:
        result: int = 2**self.n_bits
        return result

    def log_bin_volume(self) -> float:
        """log of the volume of one quantization bin on the continuous scale, for all D dims.

        ``log P(k) ~= log p(x) + log_bin_volume()``: the scaling term of bits/dim.
        Zero for discrete models, whose log_prob is already a mass.
        """
        if self.discrete:
            return 0.0
        return self.num_dims * math.log((self.high - self.low) / self.n_levels)


def bits_per_dim(log_prob: Tensor, spec: InputSpec) -> Tensor:
    """Bits per dimension of the discrete (quantized) data, per sample.

    ``bpd = -(log p(x) + D log(bin width)) / (D ln 2)``; for inputs scaled to [-0.5, 0.5)
    with 256 levels this is the familiar ``-(log p(x) - D log 256) / (D ln 2)``.
    With uniform dequantization noise its expectation is an upper bound on the true
    discrete bits/dim (Theis et al. 2016), which is how published numbers are reported.
    """
    return -(log_prob + spec.log_bin_volume()) / (spec.num_dims * math.log(2.0))


class DensityModel(nn.Module, ABC):
    """A model of p(x) on images.

    Subclasses set ``input_spec`` and implement :meth:`log_prob_terms`, which returns a dict
    of per-sample tensors of shape ``[batch]`` that always contains ``"log_prob"`` plus the
    model family's breakdown (flows: ``"log_pz"`` density term and ``"log_abs_det_jacobian"``
    volume term; VAEs: ``"reconstruction"`` and ``"kl"``).
    """

    input_spec: InputSpec
    # the family this model was built as and what its config lets it do (both set by
    # dgmood.models.registry.build_model): asked instead of the model's class
    family_spec: FamilySpec | None = None
    capabilities: frozenset[Capability] = frozenset()

    @abstractmethod
    def log_prob_terms(self, x: Tensor) -> dict[str, Tensor]:
        """Per-sample log density of ``x`` (continuous input scale) and its breakdown."""

    def log_prob(self, x: Tensor) -> Tensor:
        """Per-sample log density (or log mass, for discrete models) of ``x``."""
        return self.log_prob_terms(x)["log_prob"]

    def network_evaluations(self) -> int:
        """Forward passes of the model's networks per image for :meth:`log_prob_terms`
        (one for a flow or PixelCNN++): the cost column of the benchmark."""
        return 1

    def training_loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss in bits/dim to minimise, and per-sample terms for logging.

        The default is the negative log-likelihood; models whose training objective differs
        (e.g. a VAE with KL warm-up) override this.
        """
        terms = self.log_prob_terms(x)
        bpd = bits_per_dim(terms["log_prob"], self.input_spec)
        return bpd.mean(), terms

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """Draw ``n`` samples on the continuous input scale (optional for a family)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement sampling")


class Classifier(nn.Module, ABC):
    """A classifier p(y | x) that also exposes its penultimate features (for Mahalanobis)."""

    input_spec: InputSpec
    num_classes: int
    family_spec: FamilySpec | None = None  # set by dgmood.models.registry.build_model
    capabilities: frozenset[Capability] = frozenset()

    @abstractmethod
    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features, shape ``[batch, feature_dim]``."""

    @abstractmethod
    def head(self, features: Tensor) -> Tensor:
        """Logits from features, shape ``[batch, num_classes]``."""

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def network_evaluations(self) -> int:
        """Forward passes per image for logits and features: one."""
        return 1

    def training_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        accuracy = (logits.argmax(-1) == y).float()
        return loss, {"accuracy": accuracy}


# --- model families -----------------------------------------------------------------------


class Capability(StrEnum):
    """What a family's models can do beyond the contract of their kind.

    Training, inference, scores and studies ask a family's :class:`FamilySpec` for these,
    never the model's class; a method a capability promises is named beside it.
    """

    EXACT_LIKELIHOOD = "exact-likelihood"  # log_prob is log p(x) itself (flows, PixelCNN++)
    LIKELIHOOD_BOUND = "likelihood-bound"  # log_prob is a lower bound (a VAE's or diffusion ELBO)
    # log_prob draws random numbers: seeded_log_prob_terms(x, generators) takes them per image
    STOCHASTIC_LOG_PROB = "stochastic-log-prob"
    IWAE = "iwae"  # iwae_log_prob(x, k): the importance-weighted bound (Burda et al. 2016)
    LATENT_POSTERIOR = "latent-posterior"  # an amortised q(z|x) to refit per image (VAE)
    RECONSTRUCTION = "reconstruction"  # reconstruct(x): x through the model and back
    LOG_DET_DECOMPOSITION = "log-det-decomposition"  # terms log_pz + log_abs_det_jacobian
    # per-image terms that add up to log_prob, named in the spec (FamilySpec.decomposition)
    TERM_DECOMPOSITION = "term-decomposition"
    MULTISCALE_FLOW = "multiscale-flow"  # a MultiscaleFlow: its layers can be inspected
    CONSTANT_VOLUME = "constant-volume"  # log|det J| does not depend on x (CV-Glow)
    MEMORY_LIGHT = "memory-light"  # set_memory_light(True): recompute activations in backward
    BF16_SAFE = "bf16-safe"  # bf16 autocast checked against fp32 (docs/RESULTS.md, Speed)
    SAMPLING = "sampling"  # sample(n) draws images on the continuous input scale
    DENOISER = "denoiser"  # a diffusion model's noise levels and denoiser, for its scores


# the methods that capabilities promise, for code that has asked the spec first
class MemoryLight(Protocol):
    """:attr:`Capability.MEMORY_LIGHT`."""

    def set_memory_light(self, enabled: bool) -> None: ...


class ImportanceWeighted(Protocol):
    """:attr:`Capability.IWAE`."""

    def iwae_log_prob(self, x: Tensor, k: int) -> Tensor: ...


class SeededLogProb(Protocol):
    """:attr:`Capability.STOCHASTIC_LOG_PROB`: ``log_prob_terms`` (with ``iwae_k > 0`` also
    ``"iwae_log_prob"``) with image ``b``'s random draws from ``generators[b]`` alone, so an
    image's score depends neither on the batch nor on its position among the inputs."""

    def seeded_log_prob_terms(
        self, x: Tensor, generators: Sequence[torch.Generator], iwae_k: int = 0
    ) -> dict[str, Tensor]: ...


class Reconstructs(Protocol):
    """:attr:`Capability.RECONSTRUCTION`: ``x`` on the input scale back, as [0, 1] floats."""

    def reconstruct(self, x: Tensor) -> Tensor: ...


ModelKind = Literal["density", "classifier"]


@dataclass(frozen=True)
class Term:
    """One per-image statistic of a decomposition: ``log_prob = sum(sign * stat[key])``."""

    key: str  # the statistic's name in log_prob_terms (e.g. "log_pz")
    label: str  # how tables name it (e.g. "density term log p(z)")
    sign: float = 1.0  # +1 if it adds to log_prob, -1 if it is subtracted (a VAE's KL)


@dataclass(frozen=True)
class FamilySpec:
    """One model family, registered once from its own module.

    ``dgmood.models.registry.register_family(FamilySpec(...))`` makes the family trainable by
    name (``dgmood train NAME``), loadable from a stored config, and visible to every score
    and study that asks for its kind and capabilities.
    """

    name: str  # registry name, equal to ``config.family`` (e.g. "glow")
    config: type[ModelConfig]  # the family's frozen config dataclass
    build: Callable[[Any, DataConfig], nn.Module]  # (config, data) -> the network
    kind: ModelKind  # "density" (a DensityModel) or "classifier" (a Classifier)
    presets: Mapping[str, ModelConfig]  # at least "tiny" and "cpu"; "paper" where published
    capabilities: frozenset[Capability] = frozenset()
    # capabilities that depend on the config (e.g. additive couplings make a Glow CV-Glow)
    config_capabilities: Callable[[Any], frozenset[Capability]] | None = None
    # per train preset, TrainConfig fields that differ for this family ("cpu": {"steps": 1500})
    train_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # per train preset, DataConfig fields that differ for this family ("cpu": {"val_size": 500})
    data_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # the terms log_prob adds up from (Capability.TERM_DECOMPOSITION): flows' density and
    # volume terms, a VAE's reconstruction and KL, a diffusion model's prior, diffusion and
    # reconstruction terms; the decomposition study shows which one prefers an OOD set
    decomposition: tuple[Term, ...] = ()
    # per train preset, TrainConfig fields that differ again for colour data (3 channels:
    # CIFAR-10, SVHN, ...), applied on top of ``train_overrides``: natural colour images take
    # longer to model than gray digits and clothes at the same size
    colour_train_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # named architecture variants on top of any size preset: alias -> config field overrides
    aliases: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    description: str = ""  # one line for `dgmood models`

    def capabilities_of(self, config: ModelConfig) -> frozenset[Capability]:
        """The capabilities of this family's model built from ``config``."""
        extra = self.config_capabilities(config) if self.config_capabilities else frozenset()
        return self.capabilities | extra
