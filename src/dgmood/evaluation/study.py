"""The paper's central experiment: a density model's likelihood on in-dist vs OOD sets.

For a trained run: score the in-distribution train and test splits and each OOD test set,
summarise bits/dim per set (the paper's tables), keep the per-sample flow decomposition
(density term log p(z) vs volume term log|det J|), and compute AUROC / AUPR / FPR@95TPR of
``-log p(x)`` (higher = more OOD) for in-dist test vs each OOD set.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dgmood.data.dequantize import DequantMode
from dgmood.data.loading import DataSources
from dgmood.evaluation.metrics import FPR_HEADERS, OODMetrics, ood_metrics
from dgmood.inference import score_cached
from dgmood.io import atomic_write_text
from dgmood.models.base import DensityModel
from dgmood.runs import LoadedRun
from dgmood.scores.density import negative_log_likelihood


@dataclass(frozen=True)
class SetSummary:
    label: str  # e.g. "mnist-test"
    role: str  # "in-train", "in-test" or "ood"
    n: int
    bpd_mean: float
    bpd_std: float
    bpd_median: float
    # mean of every per-sample term in nats per image: flows' density term log_pz and volume
    # term log_abs_det_jacobian, VAEs' reconstruction and kl, ...
    term_means: dict[str, float] = field(default_factory=dict)


@dataclass
class LikelihoodStudy:
    model: str
    in_dataset: str
    summaries: list[SetSummary]
    metrics: dict[str, OODMetrics]  # OOD label -> metrics of -log p(x)
    stats: dict[str, dict[str, np.ndarray]] = field(repr=False, default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "in_dataset": self.in_dataset,
            "settings": self.settings,
            "sets": [asdict(s) for s in self.summaries],
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
        }

    def table_markdown(self) -> str:
        terms = [k for k in self.summaries[0].term_means if k != "log_prob"]
        lines = [
            "| set | role | n | bits/dim mean | std | median | "
            + "".join(f"mean {k} (nats) | " for k in terms),
            "|---|---|---:|---:|---:|---:|" + "---:|" * len(terms),
        ]
        for s in self.summaries:
            lines.append(
                f"| {s.label} | {s.role} | {s.n} | {s.bpd_mean:.3f} | {s.bpd_std:.3f} | "
                f"{s.bpd_median:.3f} | " + "".join(f"{s.term_means[k]:.1f} | " for k in terms)
            )
        lines += [
            "",
            f"| in (test) vs OOD | AUROC | AUPR-in | AUPR-out | {FPR_HEADERS} |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        in_label = next(s.label for s in self.summaries if s.role == "in-test")
        for label, m in self.metrics.items():
            lines.append(
                f"| {in_label} vs {label} | {m.auroc:.3f} | {m.aupr_in:.3f} | {m.aupr_out:.3f} | "
                f"{m.fpr95_in:.3f} | {m.fpr95_out:.3f} |"
            )
        return "\n".join(lines) + "\n"


def summarise(label: str, role: str, stats: dict[str, np.ndarray]) -> SetSummary:
    bpd = negative_log_likelihood(stats)
    terms = {
        key: float(value.mean())
        for key, value in stats.items()
        if value.ndim == 1 and "bits_per_dim" not in key
    }
    return SetSummary(
        label=label,
        role=role,
        n=int(bpd.size),
        bpd_mean=float(bpd.mean()),
        bpd_std=float(bpd.std()),
        bpd_median=float(np.median(bpd)),
        term_means=terms,
    )


def likelihood_study(
    run: LoadedRun,
    out_datasets: list[str],
    *,
    sources: DataSources | None = None,
    in_dataset: str | None = None,
    limit: int = 0,
    train_limit: int = 10_000,
    dequantization: DequantMode = "uniform",
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
    iwae_k: int = 0,
) -> LikelihoodStudy:
    """Score in-dist train/test and every OOD test set under ``run``; compare likelihoods.

    ``limit`` caps each test set (0 = all); ``train_limit`` caps the train split.
    """
    if not isinstance(run.model, DensityModel):
        raise ValueError(
            f"{run.run_dir} holds a {type(run.model).__name__}, not a density model; the "
            "likelihood study needs one (classifier scores: `dgmood reproduce chicken`)"
        )
    sources = sources or DataSources()
    data = run.config.data
    in_name = in_dataset or data.dataset
    plan = [
        (in_name, data.train_split, "in-train", train_limit),
        (in_name, data.val_split, "in-test", limit),
    ]
    plan += [(name, "test", "ood", limit) for name in out_datasets]
    stats: dict[str, dict[str, np.ndarray]] = {}
    summaries: list[SetSummary] = []
    for name, split, role, cap in plan:
        imageset = sources.load_like(name, split, data).head(cap)
        set_stats = score_cached(
            run.model,
            imageset,
            run.run_dir,
            step=run.step,
            batch_size=batch_size,
            dequantization=dequantization,
            seed=seed,
            progress=progress,
            iwae_k=iwae_k,
        )
        stats[imageset.label] = set_stats
        summaries.append(summarise(imageset.label, role, set_stats))
    in_test = next(s.label for s in summaries if s.role == "in-test")
    metrics = {
        s.label: ood_metrics(
            negative_log_likelihood(stats[in_test]), negative_log_likelihood(stats[s.label])
        )
        for s in summaries
        if s.role == "ood"
    }
    settings = {
        "dequantization": dequantization,
        "seed": seed,
        "limit": limit,
        "iwae_k": iwae_k,
        "train_limit": train_limit,
        "run_dir": str(run.run_dir),
        "step": run.step,
    }
    model_name = run.config.preset or type(run.config.model).family
    return LikelihoodStudy(model_name, in_name, summaries, metrics, stats, settings)


def write_study(study: LikelihoodStudy, out_dir: Path) -> dict[str, Path]:
    """results.json, table.md and the figures of a study into ``out_dir``."""
    from dgmood.reporting.plots import plot_bpd_histograms, plot_flow_decomposition

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"results": out_dir / "results.json", "table": out_dir / "table.md"}
    atomic_write_text(paths["results"], json.dumps(study.to_dict(), indent=2))
    atomic_write_text(paths["table"], study.table_markdown())
    labels = [s.label for s in study.summaries if s.role != "in-train"]
    bpd = {label: negative_log_likelihood(study.stats[label]) for label in labels}
    paths["histogram"] = plot_bpd_histograms(
        bpd,
        out_dir / "bpd_histogram.png",
        title=f"{study.model} trained on {study.in_dataset}",
    )
    if all("log_pz" in study.stats[label] for label in labels):
        paths["decomposition"] = plot_flow_decomposition(
            {label: study.stats[label] for label in labels}, out_dir / "decomposition.png"
        )
    return paths
