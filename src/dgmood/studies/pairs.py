"""Dataset pairs in both directions: is the likelihood failure asymmetric?

For each model family and each pair ``IN:OOD``, train the model on ``IN`` (or reuse the
run), score ``IN``-train, ``IN``-test and ``OOD``-test with :func:`likelihood_comparison`
(``-log p(x)`` only), and tabulate bits/dim per set (mean, median, quantiles) next to the
published number where the paper gives one. Histograms show log p(x) of the 8-bit image in
nats (``-bpd * D * ln 2``) over the full range of the data. The paper's asymmetry: trained
on FashionMNIST, MNIST gets *higher* likelihood; trained on MNIST, FashionMNIST gets lower
(likewise CIFAR-10 -> SVHN vs SVHN -> CIFAR-10).

At ``--preset paper`` the default pairs are the paper's: CIFAR-10 <-> SVHN, CelebA -> SVHN,
ImageNet32 -> CIFAR-10 / CIFAR-100 / SVHN. Every dataset is loaded before any training, so a
missing one stops at once with the loader's message (file name and where to put it).

References: Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?",
ICLR 2019 (Figures 1 and 2, Table of Appendix: Glow on CIFAR-10 3.386 train / 3.464 test,
SVHN test 2.389 bits/dim).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from dgmood.evaluation.compare import ScoringOptions
from dgmood.reporting.analysis_plots import plot_histograms
from dgmood.reporting.result import Cell, Figure, StudyResult, Table
from dgmood.scores.density import negative_log_likelihood
from dgmood.studies.base import Study, StudyContext, metrics_table, register_study
from dgmood.studies.likelihood import QUANTILES, distribution_cells, likelihood_comparison
from dgmood.studies.pictures import extremes_figure, run_pictures

CPU_PAIRS = ("fashion-mnist:mnist", "mnist:fashion-mnist")
PAPER_PAIRS = (
    "cifar10:svhn",
    "svhn:cifar10",
    "celeba:svhn",
    "imagenet32:cifar10",
    "imagenet32:cifar100",
    "imagenet32:svhn",
)
# (model family, trained on, set label) -> published bits/dim (Nalisnick et al. 2019)
PUBLISHED_BPD: dict[tuple[str, str, str], float] = {
    ("glow", "cifar10", "cifar10-train"): 3.386,
    ("glow", "cifar10", "cifar10-test"): 3.464,
    ("glow", "cifar10", "svhn-test"): 2.389,
}


@dataclass(frozen=True)
class PairsOptions:
    models: tuple[str, ...] = ("glow", "realnvp", "pixelcnnpp", "vae")  # density models
    pairs: tuple[str, ...] = ()  # IN:OOD pairs (empty: fashion-mnist<->mnist; paper's at paper)
    train_limit: int = 10_000  # in-distribution training images scored
    samples: int = 16  # samples of each model shown in the report (0 = none)


def parse_pair(pair: str) -> tuple[str, str]:
    """``"fashion-mnist:mnist"`` -> ``("fashion-mnist", "mnist")``, or one clear error."""
    in_name, sep, ood_name = pair.partition(":")
    if not sep or not in_name or not ood_name or ":" in ood_name:
        raise ValueError(f"a pair is IN:OOD (e.g. fashion-mnist:mnist), got {pair!r}")
    return in_name.strip(), ood_name.strip()


def log_px_nats(bits_per_dim: np.ndarray, num_dims: int) -> np.ndarray:
    """log p(x) of the 8-bit image in nats from bits/dim: ``-bpd * D * ln 2``."""
    return -np.asarray(bits_per_dim, dtype=np.float64) * num_dims * math.log(2.0)


@register_study
class Pairs(Study[PairsOptions]):
    """Train on one set, score the other, in both directions, for every model family."""

    name = "pairs"
    title = "Which set gets the higher likelihood, in both directions of each pair?"
    Options = PairsOptions

    def default_pairs(self, preset: str) -> tuple[str, ...]:
        return self.options.pairs or (PAPER_PAIRS if preset == "paper" else CPU_PAIRS)

    def run(self, ctx: StudyContext) -> StudyResult:
        o = self.options
        pairs = [parse_pair(p) for p in self.default_pairs(ctx.preset)]
        configs = {}
        for model in o.models:  # refuse bad models and missing datasets before any training
            for in_name, _ in pairs:
                configs[model, in_name] = ctx.run_config(model, in_name)
        for in_name, ood_name in pairs:
            like = configs[o.models[0], in_name].data
            ctx.load_set(in_name, like.val_split, like, 1)
            ctx.load_set(ood_name, "test", like, 1)

        set_rows: list[list[Cell]] = []
        gap_rows: list[list[Cell]] = []
        metric_parts = []
        figures: list[Figure] = []
        data: dict[str, object] = {}
        drawn: set[tuple[str, str]] = set()
        for model in o.models:
            for in_name, ood_name in pairs:
                tag = f"{model}-{in_name}-vs-{ood_name}"
                run = ctx.obtain(configs[model, in_name])
                sub = dataclasses.replace(ctx, out_dir=ctx.out_dir / "detail" / tag)
                inputs, _, metrics, _, _ = likelihood_comparison(
                    run,
                    sub,
                    [ood_name],
                    train_limit=o.train_limit,
                    scores=("nll",),
                    scoring=ScoringOptions(progress=ctx.progress),
                )
                metric_parts.extend(metrics.rows)
                bpd = {label: negative_log_likelihood(d.stats) for label, (_, d) in inputs.items()}
                for label, (role, _) in inputs.items():
                    values = bpd[label]
                    published = PUBLISHED_BPD.get((model, in_name, label))
                    set_rows.append(
                        [
                            model,
                            in_name,
                            label,
                            role,
                            len(values),
                            *distribution_cells(values, std=False),
                            published,
                        ]
                    )
                in_label = next(lab for lab, (r, _) in inputs.items() if r == "in-test")
                ood_label = next(lab for lab, (r, _) in inputs.items() if r == "ood")
                auroc = float(metrics.rows[0][3])  # type: ignore[arg-type]
                gap_rows.append(
                    [
                        model,
                        in_name,
                        ood_name,
                        float(bpd[in_label].mean()),
                        float(bpd[ood_label].mean()),
                        float(bpd[ood_label].mean() - bpd[in_label].mean()),
                        float(np.median(bpd[ood_label]) - np.median(bpd[in_label])),
                        auroc,
                    ]
                )
                dims = run.density_model().input_spec.num_dims
                shown = {
                    lab: log_px_nats(v, dims)
                    for lab, v in bpd.items()
                    if inputs[lab][0] != "in-train"
                }
                path = plot_histograms(
                    shown,
                    ctx.out_dir / f"log_px_{tag}.png",
                    "log p(x) of the 8-bit image [nats] (higher = more likely)",
                    title=f"{run.name} trained on {in_name}",
                )
                figures.append(
                    Figure(
                        f"log_px_{tag}",
                        f"log p(x): {model} trained on {in_name}, {ood_name} as OOD",
                        path.name,
                        "Full data range on the x axis; dashed lines are medians.",
                    )
                )
                data[tag] = {"in_test_bpd_mean": gap_rows[-1][3], "ood_bpd_mean": gap_rows[-1][4]}
                pictured = {lab: d for lab, (r, d) in inputs.items() if r != "in-train"}
                figures.append(extremes_figure(ctx, run, pictured, tag))
                if (model, in_name) not in drawn:  # a run's samples and curve once
                    drawn.add((model, in_name))
                    figures += run_pictures(ctx, run, samples=o.samples, tag=f"{model}-{in_name}")
        sets = Table(
            name="pairs_bits_per_dim",
            title="Bits per dimension of each set, per model and training set",
            columns=[
                "model",
                "trained on",
                "set",
                "role",
                "n",
                "bits/dim mean",
                "median",
                *[f"q{int(q * 100):02d}" for q in QUANTILES],
                "published bits/dim",
            ],
            rows=set_rows,
            caption="Lower bits/dim = higher likelihood. 'published': Nalisnick et al. 2019 "
            "(blank where the paper gives no number for that model and set).",
        )
        gaps = Table(
            name="pairs_gap",
            title="OOD minus in-distribution test bits/dim, per direction",
            columns=[
                "model",
                "trained on",
                "OOD",
                "in-test bits/dim mean",
                "OOD bits/dim mean",
                "gap mean (OOD - in)",
                "gap median (OOD - in)",
                "AUROC of -log p(x)",
            ],
            rows=gap_rows,
            caption="A negative gap (AUROC < 0.5) means the OOD set gets the higher likelihood.",
        )
        metrics = metrics_table([])
        metrics.rows = metric_parts
        return self.result(
            ctx,
            pairs_finding(gap_rows),
            tables=[gaps, sets, metrics],
            figures=figures,
            runs={f"{m}-{i}": str(ctx.run_dir(c)) for (m, i), c in configs.items()},
            data=data,
        )


def pairs_finding(gap_rows: list[list[Cell]]) -> str:
    """One sentence per direction: which set gets the higher likelihood, by how much."""
    parts = []
    for model, in_name, ood_name, _, _, gap, _, auroc in gap_rows:
        assert isinstance(gap, float) and isinstance(auroc, float)
        verdict = "higher" if gap < 0 else "lower"
        parts.append(
            f"{model} on {in_name}: {ood_name} gets {verdict} likelihood "
            f"({gap:+.3f} bits/dim, AUROC {auroc:.3f})"
        )
    return "; ".join(parts) + "."
