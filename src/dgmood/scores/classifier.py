"""OOD scores from a classifier's cached logits and penultimate features.

Every score is a pure function of per-sample statistics computed once (logits ``[N, K]``,
features ``[N, D]``) and follows the package's one sign convention: **higher score = more
likely OOD**. The one exception to "statistics only" is :func:`odin_logits`, which needs the
model to perturb its inputs; its output is again a cacheable statistic for
:func:`odin_score`.

Inputs may be torch tensors or numpy arrays; outputs are torch tensors of shape ``[N]``.

References:
    Hendrycks & Gimpel, ICLR 2017 (max softmax); Liang et al., ICLR 2018 (ODIN);
    Lee et al., NeurIPS 2018 (Mahalanobis); Liu et al., NeurIPS 2020 (energy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from dgmood.io import Progress
from dgmood.runs import LoadedRun
from dgmood.scores.base import Score, ScoreInput, register_score

ArrayLike = Tensor | np.ndarray


def _as_tensor(values: ArrayLike) -> Tensor:
    return values if isinstance(values, Tensor) else torch.as_tensor(values)


def _check_logits(logits: ArrayLike) -> Tensor:
    logits = _as_tensor(logits)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"expected logits of shape [num_samples, num_classes >= 2], got {list(logits.shape)}"
        )
    if not logits.is_floating_point():
        logits = logits.to(torch.get_default_dtype())
    return logits


def _check_temperature(temperature: float) -> None:
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")


def max_softmax_probability(logits: ArrayLike) -> Tensor:
    """The classifier's confidence ``max_k softmax(logits)_k`` per sample (not an OOD score).

    References:
        Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution
        Examples in Neural Networks", ICLR 2017.
    """
    return _check_logits(logits).softmax(dim=-1).amax(dim=-1)


def max_softmax_score(logits: ArrayLike) -> Tensor:
    """Max-softmax OOD score ``-max_k softmax(logits)_k``: low confidence = OOD.

    References:
        Hendrycks & Gimpel, ICLR 2017.
    """
    return -max_softmax_probability(logits)


def energy_score(logits: ArrayLike, temperature: float = 1.0) -> Tensor:
    """Free energy ``E(x) = -T logsumexp(logits / T)``: high energy = OOD.

    As ``T -> inf`` it tends to ``-T log K - mean_k(logits)``.

    References:
        Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020.
    """
    _check_temperature(temperature)
    return -temperature * torch.logsumexp(_check_logits(logits) / temperature, dim=-1)


def odin_logits(
    model: nn.Module, x: Tensor, temperature: float = 1000.0, epsilon: float = 0.0014
) -> Tensor:
    """Logits of ODIN-perturbed inputs ``x - epsilon * sign(-grad_x log S_yhat(x; T))``.

    The step moves each input in the direction that *increases* the temperature-scaled
    softmax probability of its predicted class ``yhat``; in-distribution inputs gain more
    than OOD ones (Liang et al., Sec. 3). The model runs in eval mode (its mode is restored
    afterwards) and its parameters get no gradient. Inputs are not clipped to the input range,
    as in the reference implementation. Returns detached logits ``[N, K]`` at ``T = 1``:
    feed them to :func:`odin_score` with the same ``temperature``.

    References:
        Liang, Li & Srikant, "Enhancing The Reliability of Out-of-distribution Image Detection
        in Neural Networks", ICLR 2018.
    """
    _check_temperature(temperature)
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    was_training = model.training
    model.eval()
    try:
        inputs = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            scaled_logits = model(inputs) / temperature
            predicted = scaled_logits.argmax(dim=-1)
            log_prob_predicted = scaled_logits.log_softmax(dim=-1).gather(1, predicted[:, None])
            (gradient,) = torch.autograd.grad(log_prob_predicted.sum(), inputs)
        perturbed = x.detach() + epsilon * gradient.sign()
        with torch.no_grad():
            result: Tensor = model(perturbed).detach()
            return result
    finally:
        model.train(was_training)


def odin_score(logits: ArrayLike, temperature: float = 1000.0) -> Tensor:
    """ODIN score ``-max_k softmax(logits / T)_k`` of (perturbed) logits: low = in-distribution.

    For large ``T`` the ranking tends to that of ``-(max_k logits_k - mean_k logits_k)``.

    References:
        Liang, Li & Srikant, ICLR 2018.
    """
    _check_temperature(temperature)
    return -(_check_logits(logits) / temperature).softmax(dim=-1).amax(dim=-1)


@dataclass(frozen=True, eq=False)
class ClassGaussians:
    """Class-conditional Gaussians with one shared (tied) covariance, in float64.

    ``whitening`` is ``L^{-1}`` for the Cholesky factor ``covariance = L L^T``, so that
    ``(f - mu)^T covariance^{-1} (f - mu) = ||whitening (f - mu)||^2``.
    """

    classes: Tensor  # [K] the class labels, sorted
    means: Tensor  # [K, D] class means
    covariance: Tensor  # [D, D] tied covariance including the ridge
    whitening: Tensor  # [D, D] inverse Cholesky factor of the covariance

    @property
    def num_classes(self) -> int:
        return int(self.classes.numel())

    @property
    def feature_dim(self) -> int:
        return int(self.means.shape[1])


def _check_features(features: ArrayLike) -> Tensor:
    features = _as_tensor(features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(
            f"expected features of shape [num_samples > 0, feature_dim], got {list(features.shape)}"
        )
    return features.to(torch.float64)


def fit_class_gaussians(
    features: ArrayLike, labels: ArrayLike, ridge: float = 1e-6
) -> ClassGaussians:
    """Fit class means and the tied covariance ``1/N sum_i (f_i - mu_{y_i})(f_i - mu_{y_i})^T``.

    ``ridge * trace(covariance) / D`` is added to the diagonal so that the covariance is
    invertible even when features are rank-deficient (ReLU features often are).

    References:
        Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution
        Samples and Adversarial Attacks", NeurIPS 2018 (Eq. 1).
    """
    features = _check_features(features)
    labels = _as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"labels must have shape [{features.shape[0]}] to match features, "
            f"got {list(labels.shape)}"
        )
    if labels.is_floating_point():
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    classes, class_index = torch.unique(labels.to(torch.int64), sorted=True, return_inverse=True)
    num_classes, feature_dim = int(classes.numel()), features.shape[1]
    counts = torch.bincount(class_index, minlength=num_classes).to(torch.float64)
    sums = torch.zeros(num_classes, feature_dim, dtype=torch.float64)
    sums.index_add_(0, class_index, features)
    means = sums / counts[:, None]
    centred = features - means[class_index]
    covariance = centred.T @ centred / features.shape[0]
    scale = covariance.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    covariance = covariance + ridge * scale * torch.eye(feature_dim, dtype=torch.float64)
    cholesky, info = torch.linalg.cholesky_ex(covariance)
    if int(info) != 0:
        raise ValueError(
            "the tied feature covariance is singular; fit on more samples or raise `ridge`"
        )
    identity = torch.eye(feature_dim, dtype=torch.float64)
    whitening = torch.linalg.solve_triangular(cholesky, identity, upper=False)
    return ClassGaussians(classes=classes, means=means, covariance=covariance, whitening=whitening)


def mahalanobis_distances(features: ArrayLike, gaussians: ClassGaussians) -> Tensor:
    """Squared Mahalanobis distance of each sample to each class mean, ``[N, K]`` float64."""
    features = _check_features(features)
    if features.shape[1] != gaussians.feature_dim:
        raise ValueError(
            f"features have dimension {features.shape[1]}, the Gaussians were fitted on "
            f"{gaussians.feature_dim}"
        )
    whitened = features @ gaussians.whitening.T
    whitened_means = gaussians.means @ gaussians.whitening.T
    # ||a - b||^2 expanded: O(N K) memory instead of O(N K D); float64 keeps it exact enough
    squared = (
        whitened.square().sum(dim=1, keepdim=True)
        - 2.0 * whitened @ whitened_means.T
        + whitened_means.square().sum(dim=1)[None, :]
    )
    return squared.clamp_min(0.0)


def mahalanobis_score(features: ArrayLike, gaussians: ClassGaussians) -> Tensor:
    """Squared Mahalanobis distance to the closest class mean: far from every class = OOD.

    This is ``-M(x)`` of Lee et al. (Eq. 2) on one layer's features, without their input
    preprocessing or layer ensemble.

    References:
        Lee, Lee, Lee & Shin, NeurIPS 2018.
    """
    return mahalanobis_distances(features, gaussians).amin(dim=-1)


def confidence_fractions(
    max_probs: ArrayLike, thresholds: Sequence[float] = (0.99, 0.95, 0.75)
) -> dict[float, float]:
    """Fraction of samples whose confidence is strictly above each threshold.

    The chicken post reports 63.4% / 74.3% / 88.9% of FashionMNIST above 0.99 / 0.95 / 0.75
    under its MNIST CNN.

    References:
        "Passing a chicken through an MNIST model" (2018).
    """
    probs = _as_tensor(max_probs)
    if probs.ndim != 1 or probs.numel() == 0:
        raise ValueError(
            f"expected a non-empty 1-D array of probabilities, got {list(probs.shape)}"
        )
    probs = probs.to(torch.float64)
    if bool(((probs < 0) | (probs > 1) | probs.isnan()).any()):
        raise ValueError("max_probs must lie in [0, 1]; pass softmax probabilities, not logits")
    return {float(t): float((probs > t).to(torch.float64).mean()) for t in thresholds}


# --- the same scores under the one Score contract (numpy out) --------------------------


@register_score
class MaxSoftmax(Score):
    """Negative maximum softmax probability: a confident classifier calls the input in-distribution.

    References: Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
    Out-of-Distribution Examples in Neural Networks", ICLR 2017.
    """

    name = "max-softmax"
    model_kind = "classifier"
    needs_stats = ("logits",)

    def score(self, data: ScoreInput) -> np.ndarray:
        return max_softmax_score(data.stat("logits")).numpy()


@register_score
class Energy(Score):
    """Free energy ``-T logsumexp(logits / T)`` of the classifier's logits.

    References: Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection",
    NeurIPS 2020.
    """

    name = "energy"
    model_kind = "classifier"
    needs_stats = ("logits",)

    def __init__(self, temperature: float = 1.0) -> None:
        _check_temperature(temperature)
        self.temperature = temperature

    def score(self, data: ScoreInput) -> np.ndarray:
        return energy_score(data.stat("logits"), self.temperature).numpy()


@register_score
class Odin(Score):
    """ODIN: temperature-scaled max-softmax of inputs perturbed towards their predicted class.

    References: Liang, Li & Srikant, "Enhancing The Reliability of Out-of-distribution Image
    Detection in Neural Networks", ICLR 2018.
    """

    name = "odin"
    model_kind = "classifier"
    uses_model = True

    def __init__(
        self, temperature: float = 1000.0, epsilon: float = 0.0014, batch_size: int = 500
    ) -> None:
        _check_temperature(temperature)
        self.temperature, self.epsilon, self.batch_size = temperature, epsilon, batch_size

    def network_evaluations(
        self, run: LoadedRun, aux_runs: Mapping[str, LoadedRun] | None = None
    ) -> float | None:
        """A forward and a backward pass to perturb the input, then a forward pass."""
        return 3.0

    def score(self, data: ScoreInput) -> np.ndarray:
        from dgmood.data.dequantize import to_model_input

        model = data.require_run(self.name).classifier()
        device = next(model.parameters()).device
        out = []
        with Progress(len(data), f"odin {data.label}", unit="images") as bar:
            for start in range(0, len(data), self.batch_size):
                chunk = data.images[start : start + self.batch_size]
                x = to_model_input(chunk, model.input_spec).to(device)
                logits = odin_logits(model, x, temperature=self.temperature, epsilon=self.epsilon)
                out.append(odin_score(logits.cpu(), self.temperature).numpy())
                bar.update(len(chunk))
        return np.concatenate(out).astype(np.float64)


@register_score
class Mahalanobis(Score):
    """Squared Mahalanobis distance of penultimate features to the closest class mean.

    Class means and the tied covariance are fitted on labelled in-distribution training data.

    References: Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting
    Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018.
    """

    name = "mahalanobis"
    model_kind = "classifier"
    needs_stats = ("features",)
    needs_fit = True

    def __init__(self, ridge: float = 1e-6) -> None:
        self.ridge = ridge
        self.gaussians: ClassGaussians | None = None

    def fit(self, train: ScoreInput) -> Mahalanobis:
        labels = train.labels.numpy()
        if (labels < 0).any():
            raise ValueError("Mahalanobis needs labelled in-distribution training data")
        self.gaussians = fit_class_gaussians(train.stat("features"), labels, self.ridge)
        return self

    def score(self, data: ScoreInput) -> np.ndarray:
        if self.gaussians is None:
            raise ValueError("call fit() on in-distribution training data before score()")
        return mahalanobis_score(data.stat("features"), self.gaussians).numpy()
