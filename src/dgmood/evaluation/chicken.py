"""The chicken post, end to end: a confident MNIST classifier vs a VAE's ELBO.

An MNIST CNN (32x32 input) is shown natural photos and FashionMNIST; the fraction of
FashionMNIST test images with max-softmax above 0.99 / 0.95 / 0.75 measures its
overconfidence, a sorted-confidence "barcode" shows it, and a conv VAE trained on MNIST
separates the two sets far better by its ELBO. Classifier OOD scores (max-softmax, ODIN,
energy, Mahalanobis) and the VAE's ``-ELBO`` are compared by AUROC / AUPR / FPR@95TPR with
MNIST-test as in-distribution and FashionMNIST-test as OOD.

References: "Passing a chicken through an MNIST model" (2018); Hendrycks & Gimpel 2017;
Liang et al. 2018 (ODIN); Liu et al. 2020 (energy); Lee et al. 2018 (Mahalanobis).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dgmood.data.dequantize import to_model_input
from dgmood.data.loading import DataSources
from dgmood.evaluation.metrics import FPR_HEADERS, OODMetrics, ood_metrics
from dgmood.inference import score_cached
from dgmood.io import atomic_write_text
from dgmood.runs import LoadedRun
from dgmood.scores.classifier import (
    confidence_fractions,
    energy_score,
    fit_class_gaussians,
    mahalanobis_score,
    max_softmax_probability,
    max_softmax_score,
    odin_logits,
    odin_score,
)
from dgmood.scores.density import negative_log_likelihood

THRESHOLDS = (0.99, 0.95, 0.75)
POST_FASHION_FRACTIONS = {0.99: 0.634, 0.95: 0.743, 0.75: 0.889}  # the post's numbers


@dataclass(frozen=True)
class PhotoPrediction:
    name: str
    predicted_class: int
    confidence: float  # max softmax probability
    probabilities: list[float]


@dataclass
class ChickenStudy:
    mnist_accuracy: float
    fashion_fractions: dict[float, float]  # FashionMNIST-test: fraction with max softmax > t
    mnist_fractions: dict[float, float]
    photos: list[PhotoPrediction]
    metrics: dict[str, OODMetrics]  # score name -> MNIST (in) vs FashionMNIST (out)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mnist_accuracy": self.mnist_accuracy,
            "fashion_fractions": {str(k): v for k, v in self.fashion_fractions.items()},
            "post_fashion_fractions": {str(k): v for k, v in POST_FASHION_FRACTIONS.items()},
            "mnist_fractions": {str(k): v for k, v in self.mnist_fractions.items()},
            "photos": [asdict(p) for p in self.photos],
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "settings": self.settings,
        }

    def table_markdown(self) -> str:
        lines = [
            f"MNIST test accuracy: {self.mnist_accuracy:.4f}",
            "",
            "| max softmax > | FashionMNIST (measured) | FashionMNIST (post) | MNIST test |",
            "|---|---:|---:|---:|",
        ]
        for t in THRESHOLDS:
            lines.append(
                f"| {t} | {self.fashion_fractions[t]:.1%} | {POST_FASHION_FRACTIONS[t]:.1%} | "
                f"{self.mnist_fractions[t]:.1%} |"
            )
        lines += ["", "| photo | predicted digit | confidence |", "|---|---:|---:|"]
        for p in self.photos:
            lines.append(f"| {p.name} | {p.predicted_class} | {p.confidence:.4f} |")
        lines += [
            "",
            f"| score (MNIST in, FashionMNIST out) | AUROC | AUPR-in | AUPR-out | {FPR_HEADERS} |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, m in self.metrics.items():
            lines.append(
                f"| {name} | {m.auroc:.3f} | {m.aupr_in:.3f} | {m.aupr_out:.3f} | "
                f"{m.fpr95_in:.3f} | {m.fpr95_out:.3f} |"
            )
        return "\n".join(lines) + "\n"


def _odin_scores(
    model: nn.Module, images: Tensor, temperature: float, epsilon: float, batch_size: int = 500
) -> np.ndarray:
    out = []
    for start in range(0, len(images), batch_size):
        x = to_model_input(images[start : start + batch_size], model.input_spec)  # type: ignore[arg-type]
        logits = odin_logits(model, x, temperature=temperature, epsilon=epsilon)
        out.append(odin_score(logits, temperature).numpy())
    return np.concatenate(out)


def chicken_study(
    classifier: LoadedRun,
    vae: LoadedRun | None,
    photos: dict[str, Tensor],
    *,
    sources: DataSources | None = None,
    limit: int = 0,
    fit_limit: int = 10_000,
    odin_temperature: float = 1000.0,
    odin_epsilon: float = 0.0014,
    progress: bool = True,
) -> tuple[ChickenStudy, dict[str, Any]]:
    """Run every measurement of the post; returns the study and the arrays for figures."""
    sources = sources or DataSources()
    data = classifier.config.data
    mnist = sources.load_like("mnist", "test", data).head(limit)
    fashion = sources.load_like("fashion-mnist", "test", data).head(limit)
    mnist_train = sources.load_like("mnist", "train", data).head(fit_limit)

    def stats_of(run: LoadedRun, imageset: Any) -> dict[str, np.ndarray]:
        return score_cached(run.model, imageset, run.run_dir, step=run.step, progress=progress)

    s_mnist, s_fashion = stats_of(classifier, mnist), stats_of(classifier, fashion)
    s_train = stats_of(classifier, mnist_train)
    conf_mnist = max_softmax_probability(s_mnist["logits"]).numpy()
    conf_fashion = max_softmax_probability(s_fashion["logits"]).numpy()
    predicted = s_mnist["logits"].argmax(1)
    correct = predicted == mnist.labels.numpy()
    gaussians = fit_class_gaussians(s_train["features"], mnist_train.labels.numpy())

    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "max-softmax": (
            max_softmax_score(s_mnist["logits"]).numpy(),
            max_softmax_score(s_fashion["logits"]).numpy(),
        ),
        "energy": (
            energy_score(s_mnist["logits"]).numpy(),
            energy_score(s_fashion["logits"]).numpy(),
        ),
        "odin": (
            _odin_scores(classifier.model, mnist.images, odin_temperature, odin_epsilon),
            _odin_scores(classifier.model, fashion.images, odin_temperature, odin_epsilon),
        ),
        "mahalanobis": (
            mahalanobis_score(s_mnist["features"], gaussians).numpy(),
            mahalanobis_score(s_fashion["features"], gaussians).numpy(),
        ),
    }
    arrays: dict[str, Any] = {
        "confidence_mnist_correct": conf_mnist[correct],
        "confidence_fashion": conf_fashion,
    }
    if vae is not None:
        v_mnist, v_fashion = stats_of(vae, mnist), stats_of(vae, fashion)
        scores["vae -elbo"] = (negative_log_likelihood(v_mnist), negative_log_likelihood(v_fashion))
        arrays["elbo_mnist"], arrays["elbo_fashion"] = v_mnist["log_prob"], v_fashion["log_prob"]

    photo_predictions = []
    if photos:
        batch = torch.stack(list(photos.values()))
        x = to_model_input(batch, classifier.model.input_spec)  # type: ignore[arg-type]
        with torch.no_grad():
            probs = torch.softmax(classifier.model(x), dim=1)
        for name, p in zip(photos, probs, strict=True):
            photo_predictions.append(
                PhotoPrediction(name, int(p.argmax()), float(p.max()), [float(v) for v in p])
            )
        arrays["photo_probabilities"] = probs.numpy()
    study = ChickenStudy(
        mnist_accuracy=float(correct.mean()),
        fashion_fractions=confidence_fractions(conf_fashion, THRESHOLDS),
        mnist_fractions=confidence_fractions(conf_mnist, THRESHOLDS),
        photos=photo_predictions,
        metrics={name: ood_metrics(a, b) for name, (a, b) in scores.items()},
        settings={
            "limit": limit,
            "fit_limit": fit_limit,
            "odin_temperature": odin_temperature,
            "odin_epsilon": odin_epsilon,
            "classifier": str(classifier.run_dir),
            "vae": str(vae.run_dir) if vae else None,
        },
    )
    arrays["mnist_digit"] = mnist.images[0]
    return study, arrays


def write_chicken_study(
    study: ChickenStudy,
    arrays: dict[str, Any],
    photos: dict[str, Tensor],
    vae: LoadedRun | None,
    out_dir: Path,
) -> dict[str, Path]:
    """results.json, table.md and the post's figures into ``out_dir``."""
    from dgmood.reporting.classifier_plots import (
        plot_class_probabilities,
        plot_confidence_barcode,
        plot_reconstructions,
        plot_sorted_scores,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"results": out_dir / "results.json", "table": out_dir / "table.md"}
    atomic_write_text(paths["results"], json.dumps(study.to_dict(), indent=2))
    atomic_write_text(paths["table"], study.table_markdown())
    paths["barcode"] = plot_confidence_barcode(
        arrays["confidence_mnist_correct"],
        arrays["confidence_fashion"],
        out_dir / "confidence_barcode.png",
        labels=("MNIST (correctly classified)", "FashionMNIST"),
    )
    for (name, image), prediction in zip(photos.items(), study.photos, strict=True):
        paths[f"photo-{name}"] = plot_class_probabilities(
            np.asarray(prediction.probabilities),
            out_dir / f"probabilities_{name}.png",
            image=image.numpy(),
            title=f"{name}: {prediction.confidence:.1%} a {prediction.predicted_class}",
        )
    if vae is not None:
        paths["sorted_elbo"] = plot_sorted_scores(
            arrays["elbo_mnist"],
            arrays["elbo_fashion"],
            out_dir / "sorted_elbo.png",
            labels=("MNIST", "FashionMNIST"),
        )
        originals = torch.stack([arrays["mnist_digit"], *photos.values()])
        x = to_model_input(originals, vae.model.input_spec)  # type: ignore[arg-type]
        reconstructions = vae.model.reconstruct(x)  # type: ignore[operator]
        paths["reconstructions"] = plot_reconstructions(
            originals.float() / 255,
            reconstructions.clamp(0, 1),
            out_dir / "reconstructions.png",
            titles=["MNIST digit", *photos],
        )
    return paths


def bundled_photos() -> dict[str, Any]:
    """Natural photos that ship inside scikit-image (no download), as RGB/gray arrays."""
    from skimage import data

    return {
        name: getattr(data, name)()
        for name in ("chelsea", "astronaut", "coffee", "rocket", "camera")
    }
