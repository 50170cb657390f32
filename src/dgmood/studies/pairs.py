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

from dgmood.config import RunConfig
from dgmood.evaluation.compare import ScoringOptions
from dgmood.reporting.analysis_plots import plot_histograms
from dgmood.reporting.result import Cell, Figure, StudyResult, Table
from dgmood.runs import LoadedRun
from dgmood.scores.density import negative_log_likelihood
from dgmood.studies.base import Study, StudyContext, metrics_table, register_study
from dgmood.studies.likelihood import QUANTILES, distribution_cells, likelihood_comparison
from dgmood.studies.pictures import extremes_figure, run_pictures, slug

CPU_PAIRS = ("fashion-mnist:mnist", "mnist:fashion-mnist")
PAPER_PAIRS = (
    "cifar10:svhn",
    "svhn:cifar10",
    "celeba:svhn",
    "imagenet32:cifar10",
    "imagenet32:cifar100",
    "imagenet32:svhn",
)
# (model family, trained on, scored dataset, split) -> published bits/dim on the *whole* split
# (Nalisnick et al. 2019, Appendix table; also the talk's slides). Shown beside our set even
# where only part of the split is here (its label says "first N").
PUBLISHED_BPD: dict[tuple[str, str, str, str], float] = {
    ("glow", "cifar10", "cifar10", "train"): 3.386,
    ("glow", "cifar10", "cifar10", "test"): 3.464,
    ("glow", "cifar10", "svhn", "test"): 2.389,
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
        pairs = [parse_pair(p) for p in self.default_pairs(ctx.preset)]
        configs = self.check(ctx, pairs)
        directions: list[Direction] = []
        for model in self.options.models:
            for in_name, ood_name in pairs:
                directions.append(self.compare(ctx, model, in_name, ood_name, configs))
        gap_rows = [d.gap_row for d in directions]
        metrics = metrics_table([])
        metrics.rows = [row for d in directions for row in d.metric_rows]
        return self.result(
            ctx,
            pairs_finding(gap_rows),
            tables=[gap_table(gap_rows), set_table([r for d in directions for r in d.set_rows]),
                    metrics],
            figures=[f for d in directions for f in d.figures],
            runs={f"{m}-{i}": str(ctx.run_dir(c)) for (m, i), c in configs.items()},
            data={d.tag: d.data for d in directions},
        )  # fmt: skip

    def check(
        self, ctx: StudyContext, pairs: list[tuple[str, str]]
    ) -> dict[tuple[str, str], RunConfig]:
        """Every run's config, and one image of every set: bad models and missing datasets
        are refused before any training."""
        configs = {
            (model, in_name): ctx.run_config(model, in_name)
            for model in self.options.models
            for in_name, _ in pairs
        }
        for in_name, ood_name in pairs:
            like = configs[self.options.models[0], in_name].data
            ctx.load_set(in_name, like.val_split, like, 1)
            ctx.load_set(ood_name, "test", like, 1)
        return configs

    def compare(
        self,
        ctx: StudyContext,
        model: str,
        in_name: str,
        ood_name: str,
        configs: dict[tuple[str, str], RunConfig],
    ) -> Direction:
        """One direction: ``model`` trained on ``in_name`` (obtained), its sets scored."""
        tag = f"{model}-{in_name}-vs-{ood_name}"
        run = ctx.obtain(configs[model, in_name])
        inputs, _, metrics, _, _ = likelihood_comparison(
            run,
            dataclasses.replace(ctx, out_dir=ctx.out_dir / "detail" / slug(tag)),
            [ood_name],
            train_limit=self.options.train_limit,
            scores=("nll",),
            scoring=ScoringOptions(progress=ctx.progress),
        )
        bpd = {label: negative_log_likelihood(d.stats) for label, (_, d) in inputs.items()}
        role_of = {label: role for label, (role, _) in inputs.items()}
        scored = {  # role -> (dataset, split) whose published number applies
            "in-train": (in_name, "train"),
            "in-test": (in_name, "test"),
            "ood": (ood_name, "test"),
        }
        set_rows: list[list[Cell]] = [
            [
                model,
                in_name,
                label,
                role_of[label],
                len(values),
                *distribution_cells(values, std=False),
                PUBLISHED_BPD.get((model, in_name, *scored[role_of[label]])),
            ]
            for label, values in bpd.items()
        ]
        in_label = next(lab for lab, r in role_of.items() if r == "in-test")
        ood_label = next(lab for lab, r in role_of.items() if r == "ood")
        in_bpd, ood_bpd = bpd[in_label], bpd[ood_label]
        gap_row: list[Cell] = [
            model,
            in_name,
            ood_name,
            float(in_bpd.mean()),
            float(ood_bpd.mean()),
            float(ood_bpd.mean() - in_bpd.mean()),
            float(np.median(ood_bpd) - np.median(in_bpd)),
            float(metrics.rows[0][3]),  # type: ignore[arg-type]
        ]
        figures = [self.histogram(ctx, run, model, (in_name, ood_name), bpd, role_of)]
        pictured = {lab: d for lab, (r, d) in inputs.items() if r != "in-train"}
        figures.append(extremes_figure(ctx, run, pictured, tag))
        if ood_name == self.first_ood(ctx, in_name):  # a run's samples and curve once
            figures += run_pictures(
                ctx, run, samples=self.options.samples, tag=f"{model}-{in_name}"
            )
        data: dict[str, object] = {"in_test_bpd_mean": gap_row[3], "ood_bpd_mean": gap_row[4]}
        return Direction(tag, set_rows, gap_row, list(metrics.rows), figures, data)

    def first_ood(self, ctx: StudyContext, in_name: str) -> str:
        """The first OOD set paired with ``in_name`` (where its run's pictures go)."""
        return next(o for i, o in map(parse_pair, self.default_pairs(ctx.preset)) if i == in_name)

    def histogram(
        self,
        ctx: StudyContext,
        run: LoadedRun,
        model: str,
        pair: tuple[str, str],
        bpd: dict[str, np.ndarray],
        role_of: dict[str, str],
    ) -> Figure:
        """log p(x) of the test and OOD sets over the full range of the data."""
        in_name, ood_name = pair
        tag = f"{model}-{in_name}-vs-{ood_name}"
        dims = run.density_model().input_spec.num_dims
        shown = {lab: log_px_nats(v, dims) for lab, v in bpd.items() if role_of[lab] != "in-train"}
        path = plot_histograms(
            shown,
            ctx.out_dir / f"log_px_{tag}.png",
            "log p(x) of the 8-bit image [nats] (higher = more likely)",
            title=f"{run.name} trained on {in_name}",
        )
        return Figure(
            f"log_px_{tag}",
            f"log p(x): {model} trained on {in_name}, {ood_name} as OOD",
            path.name,
            "Full data range on the x axis; dashed lines are medians.",
        )


@dataclass
class Direction:
    """What one direction (a model trained on one set, the other as OOD) contributes."""

    tag: str
    set_rows: list[list[Cell]]
    gap_row: list[Cell]
    metric_rows: list[list[Cell]]
    figures: list[Figure]
    data: dict[str, object]


def set_table(rows: list[list[Cell]]) -> Table:
    return Table(
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
        rows=rows,
        caption="Lower bits/dim = higher likelihood. 'published': Nalisnick et al. 2019, on the "
        "whole split (blank where the paper gives no number for that model and set).",
    )


def gap_table(rows: list[list[Cell]]) -> Table:
    return Table(
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
        rows=rows,
        caption="A negative gap (AUROC < 0.5) means the OOD set gets the higher likelihood.",
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
