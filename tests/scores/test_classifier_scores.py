"""Classifier OOD scores on cases whose answer is known (higher score = more OOD)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dgmood.scores.classifier import (
    confidence_fractions,
    energy_score,
    fit_class_gaussians,
    mahalanobis_distances,
    mahalanobis_score,
    max_softmax_probability,
    max_softmax_score,
    odin_logits,
    odin_score,
)


def test_max_softmax_uniform_logits_score_higher_than_one_hot() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]])
    scores = max_softmax_score(logits)
    assert scores[0] > scores[1]
    assert scores[0].item() == pytest.approx(-0.25)
    assert scores[1].item() == pytest.approx(-math.exp(10) / (math.exp(10) + 3))
    torch.testing.assert_close(max_softmax_probability(logits), -scores)


def test_energy_matches_hand_logsumexp() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)) * 3
    for temperature in (1.0, 2.5):
        scaled = logits / temperature
        peak = scaled.max(axis=1, keepdims=True)
        by_hand = -temperature * (peak[:, 0] + np.log(np.exp(scaled - peak).sum(axis=1)))
        np.testing.assert_allclose(energy_score(logits, temperature).numpy(), by_hand, rtol=1e-12)


def test_energy_is_higher_for_flat_small_logits() -> None:
    logits = torch.tensor([[1.0, 1.0, 1.0], [12.0, 0.0, 0.0]])
    scores = energy_score(logits)
    assert scores[0] > scores[1]


def test_energy_at_large_temperature_tends_to_minus_mean_logit() -> None:
    logits = torch.tensor([[3.0, -1.0, 0.5, 2.0], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    temperature = 1e6
    limit = -temperature * math.log(4) - logits.mean(dim=1)
    torch.testing.assert_close(energy_score(logits, temperature), limit, rtol=0, atol=1e-4)


def test_odin_score_at_unit_temperature_is_max_softmax() -> None:
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(odin_score(logits, temperature=1.0), max_softmax_score(logits))


def test_odin_score_at_large_temperature_ranks_by_max_minus_mean_logit() -> None:
    # at T=1 the ranking differs: row 0 has the larger max softmax but the smaller margin
    # over the mean logit (first-order expansion of softmax(l / T) around uniform)
    logits = torch.tensor([[5.0, 0.0, 0.0, 0.0], [6.0, 5.0, -4.0, -4.0]], dtype=torch.float64)
    assert max_softmax_score(logits)[0] < max_softmax_score(logits)[1]
    margin = logits.amax(dim=1) - logits.mean(dim=1)
    assert margin[0] < margin[1]
    scores = odin_score(logits, temperature=1000.0)
    assert scores[0] > scores[1]
    assert torch.allclose(scores, torch.full((2,), -0.25, dtype=torch.float64), atol=1e-2)


def _linear_model() -> nn.Linear:
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(
            torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, 1.0, -1.0], [2.0, 0.0, -1.0, 1.0]])
        )
        model.bias.copy_(torch.tensor([0.1, -0.2, 0.0]))
    return model


def test_odin_perturbation_matches_hand_gradient_and_raises_max_softmax() -> None:
    model = _linear_model()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    temperature, epsilon = 10.0, 0.05
    with torch.no_grad():
        logits = model(x)
        # d/dx log softmax_yhat(Wx/T) = (W_yhat - sum_k p_k W_k) / T
        probs = (logits / temperature).softmax(dim=1)
        predicted = logits.argmax(dim=1)
        gradient = (model.weight[predicted] - probs @ model.weight) / temperature
        expected = model(x + epsilon * gradient.sign())
    perturbed_logits = odin_logits(model, x, temperature=temperature, epsilon=epsilon)
    torch.testing.assert_close(perturbed_logits, expected)
    before = (logits / temperature).softmax(dim=1).amax(dim=1)
    after = (perturbed_logits / temperature).softmax(dim=1).amax(dim=1)
    assert (after > before).all()
    assert (odin_score(perturbed_logits, temperature) < odin_score(logits, temperature)).all()


def test_odin_without_perturbation_returns_plain_logits_and_leaves_model_alone() -> None:
    model = _linear_model().train()
    x = torch.randn(5, 4)
    torch.testing.assert_close(odin_logits(model, x, epsilon=0.0), model(x).detach())
    assert model.training
    assert model.weight.grad is None
    assert not odin_logits(model, x).requires_grad


def test_odin_runs_dropout_models_in_eval_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 32), nn.Dropout(0.5), nn.Linear(32, 3)).train()
    x = torch.randn(6, 4)
    torch.testing.assert_close(odin_logits(model, x), odin_logits(model, x))
    assert model.training


def _two_blobs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    covariance = np.array([[2.0, 0.6], [0.6, 0.5]])
    chol = np.linalg.cholesky(covariance)
    blob_a = rng.normal(size=(200, 2)) @ chol.T + np.array([0.0, 0.0])
    blob_b = rng.normal(size=(300, 2)) @ chol.T + np.array([6.0, 1.0])
    features = np.concatenate([blob_a, blob_b])
    labels = np.array([3] * 200 + [7] * 300)
    return features, labels


def test_mahalanobis_matches_hand_computation_on_two_blobs() -> None:
    features, labels = _two_blobs(np.random.default_rng(0))
    gaussians = fit_class_gaussians(features, labels, ridge=0.0)
    assert gaussians.classes.tolist() == [3, 7]

    means = np.stack([features[labels == c].mean(axis=0) for c in (3, 7)])
    centred = features - means[(labels == 7).astype(int)]
    tied = centred.T @ centred / len(features)
    precision = np.linalg.inv(tied)
    queries = np.array([[0.0, 0.0], [6.0, 1.0], [3.0, 0.5], [-20.0, 15.0]])
    by_hand = np.stack(
        [np.einsum("nd,de,ne->n", queries - mu, precision, queries - mu) for mu in means], axis=1
    )
    np.testing.assert_allclose(gaussians.means.numpy(), means, rtol=1e-12)
    np.testing.assert_allclose(gaussians.covariance.numpy(), tied, rtol=1e-12)
    np.testing.assert_allclose(
        mahalanobis_distances(queries, gaussians).numpy(), by_hand, rtol=1e-9
    )
    scores = mahalanobis_score(queries, gaussians).numpy()
    np.testing.assert_allclose(scores, by_hand.min(axis=1), rtol=1e-9)
    assert scores[3] > scores[:3].max()  # the far point is the most OOD
    assert scores[0] < 0.1 and scores[1] < 0.1  # the class means themselves


def test_mahalanobis_uses_the_covariance_not_euclidean_distance() -> None:
    # along the blobs' long axis a point is closer in Mahalanobis terms than across it,
    # although both are at the same Euclidean distance from the first mean
    features, labels = _two_blobs(np.random.default_rng(1))
    gaussians = fit_class_gaussians(features, labels)
    mean = gaussians.means[0].numpy()
    long_axis = np.linalg.eigh(gaussians.covariance.numpy())[1][:, 1]
    short_axis = np.linalg.eigh(gaussians.covariance.numpy())[1][:, 0]
    distances = mahalanobis_distances(
        np.stack([mean + 2 * long_axis, mean + 2 * short_axis]), gaussians
    )
    assert distances[0, 0] < distances[1, 0]


def test_ridge_makes_rank_deficient_features_fit() -> None:
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(size=(50, 3)), np.zeros((50, 1))], axis=1)
    labels = np.arange(50) % 2
    with pytest.raises(ValueError, match="singular"):
        fit_class_gaussians(features, labels, ridge=0.0)
    gaussians = fit_class_gaussians(features, labels, ridge=1e-6)
    assert torch.isfinite(mahalanobis_score(features, gaussians)).all()


@pytest.mark.parametrize(
    "call",
    [
        lambda: max_softmax_score(torch.zeros(5)),
        lambda: max_softmax_score(torch.zeros(5, 1)),
        lambda: energy_score(torch.zeros(2, 3, 4)),
        lambda: energy_score(torch.zeros(2, 3), temperature=0.0),
        lambda: odin_score(torch.zeros(2, 3), temperature=-1.0),
        lambda: odin_logits(nn.Linear(2, 2), torch.zeros(1, 2), epsilon=-0.1),
        lambda: fit_class_gaussians(np.zeros((4, 2)), np.zeros(3, dtype=int)),
        lambda: fit_class_gaussians(np.zeros((4, 2)), np.zeros(4)),
        lambda: fit_class_gaussians(np.zeros(4), np.zeros(4, dtype=int)),
        lambda: mahalanobis_score(
            np.zeros((2, 3)), fit_class_gaussians(np.eye(4), np.array([0, 0, 1, 1]))
        ),
        lambda: confidence_fractions(np.zeros((2, 2))),
        lambda: confidence_fractions(np.array([])),
        lambda: confidence_fractions(np.array([0.5, 3.0])),
    ],
)
def test_bad_inputs_raise_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_confidence_fractions_count_strictly_above_each_threshold() -> None:
    max_probs = np.array([0.99, 0.995, 0.5, 0.96, 0.8, 0.75, 1.0, 0.2])
    fractions = confidence_fractions(max_probs)
    assert fractions == {0.99: 2 / 8, 0.95: 4 / 8, 0.75: 5 / 8}
    assert list(fractions) == [0.99, 0.95, 0.75]
    assert confidence_fractions(torch.tensor([0.3, 0.6]), thresholds=(0.5,)) == {0.5: 0.5}
