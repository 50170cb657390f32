"""A one-class model on the per-sample statistics a density model already produces.

References: Morningstar, Ham, Gallagher, Lakshminarayanan, Alemi & Dillon, "Density of States
Estimation for Out-of-Distribution Detection", AISTATS 2021.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from dgmood.scores.base import Score, ScoreInput, register_score

# scalar statistics a model may cache (flows: density and volume terms; VAEs: the ELBO's terms)
FEATURE_STATS = (
    "bits_per_dim",
    "log_pz",
    "log_abs_det_jacobian",
    "reconstruction",
    "kl",
    "iwae_bits_per_dim",
)
Method = Literal["ocsvm", "gmm"]


def statistic_features(stats: ScoreInput, keys: tuple[str, ...]) -> np.ndarray:
    """The chosen per-sample statistics as columns ``[N, len(keys)]``, float64."""
    return np.stack([stats.stat(key) for key in keys], axis=1)


@register_score
class DensityOfStates(Score):
    """One-class model (OCSVM or Gaussian mixture) on standardized per-sample statistics.

    Features are every scalar statistic the main run provides among bits/dim, log p(z),
    log|det J|, reconstruction, KL and the IWAE bits/dim. The model is fitted on
    in-distribution *training* statistics only; the score is the negative OCSVM decision
    function or the negative GMM log density.

    References: Morningstar, Ham, Gallagher, Lakshminarayanan, Alemi & Dillon, "Density of
    States Estimation for Out-of-Distribution Detection", AISTATS 2021.
    """

    name = "dose"
    needs_stats = ("bits_per_dim",)
    needs_fit = True

    def __init__(
        self,
        method: Method = "ocsvm",
        nu: float = 0.05,
        n_components: int = 4,
        max_fit_samples: int = 5000,
        seed: int = 0,
    ) -> None:
        if method not in ("ocsvm", "gmm"):
            raise ValueError(f"unknown method {method!r}; use 'ocsvm' or 'gmm'")
        self.method, self.nu, self.n_components = method, nu, n_components
        self.max_fit_samples, self.seed = max_fit_samples, seed
        self.keys: tuple[str, ...] = ()
        self.scaler: StandardScaler | None = None
        self.model: OneClassSVM | GaussianMixture | None = None

    def fit(self, train: ScoreInput) -> DensityOfStates:
        self.keys = tuple(k for k in FEATURE_STATS if k in train.stats)
        if not self.keys:
            raise ValueError(f"{train.label}: none of the statistics {FEATURE_STATS} is present")
        features = statistic_features(train, self.keys)
        if len(features) > self.max_fit_samples:  # an OCSVM is quadratic in the samples
            rng = np.random.default_rng(self.seed)
            features = features[rng.choice(len(features), self.max_fit_samples, replace=False)]
        self.scaler = StandardScaler().fit(features)
        standardized = self.scaler.transform(features)
        if self.method == "ocsvm":
            self.model = OneClassSVM(kernel="rbf", gamma="scale", nu=self.nu).fit(standardized)
        else:
            self.model = GaussianMixture(
                n_components=min(self.n_components, len(standardized)),
                covariance_type="full",
                random_state=self.seed,
            ).fit(standardized)
        return self

    def score(self, data: ScoreInput) -> np.ndarray:
        if self.model is None or self.scaler is None:
            raise ValueError("call fit() on in-distribution training data before score()")
        standardized = self.scaler.transform(statistic_features(data, self.keys))
        if isinstance(self.model, OneClassSVM):
            return -np.asarray(self.model.decision_function(standardized), dtype=np.float64)
        return -np.asarray(self.model.score_samples(standardized), dtype=np.float64)
