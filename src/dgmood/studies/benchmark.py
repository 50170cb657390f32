"""Which OOD score should I use? Every registered score on a grid of datasets and models.

The grid is in-distribution dataset x OOD sets x model families x scores. For each
in-distribution dataset and model the run is trained or reused (``runs/<in>-<model>``),
with any auxiliary runs its scores declare (``runs/<in>-<model>-<aux>``); the in-distribution
train (for fits) and test splits and each OOD test set are scored once and cached in the
run; then every score is fitted on in-distribution training images and compared on
in-distribution test vs each OOD set. Any folder of images is an OOD set (``folder:PATH``).

References: Nalisnick et al., ICLR 2019; the scores' own references (``dgmood scores``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dgmood.config import RunConfig
from dgmood.evaluation.compare import ScoreComparison, ScoringOptions, compare_scores
from dgmood.evaluation.compare import prepare_input as prepare
from dgmood.reporting.result import Cell, StudyResult, Table
from dgmood.runs import LoadedRun, read_metrics
from dgmood.scores.base import Score, make_score, score_names
from dgmood.studies.base import Study, StudyContext, register_study


@dataclass(frozen=True)
class BenchmarkOptions:
    in_datasets: tuple[str, ...] = ("fashion-mnist", "mnist")  # models are trained on each
    ood: tuple[str, ...] = ("mnist", "fashion-mnist")  # OOD sets (an in-dataset skips itself)
    models: tuple[str, ...] = ("glow", "pixelcnnpp", "vae")  # model names (`dgmood models`)
    scores: tuple[str, ...] = ()  # empty: every registered score that applies to each model
    train_limit: int = 10_000  # in-distribution training images scored for fits
    iwae_k: int = 0  # VAEs: score with the importance-weighted bound (0 = the ELBO)


@dataclass(frozen=True)
class BenchmarkRow:
    """One cell of the grid: a score of a model, in-distribution test vs one OOD set."""

    in_dataset: str
    ood: str
    model: str
    comparison: ScoreComparison
    aux_train_seconds: float  # training time of the score's auxiliary runs (0 = none)


def training_seconds(run: LoadedRun) -> float:
    """Wall-clock training time recorded in a run's metrics (summed over resumed sessions)."""
    total, last = 0.0, 0.0
    for record in read_metrics(run.run_dir):
        seconds = record.get("seconds")
        if not isinstance(seconds, int | float):
            continue
        if seconds < last:  # a resumed session restarts its clock
            total += last
        last = float(seconds)
    return total + last


def applicable_scores(run: LoadedRun, names: Sequence[str], stats_keys: set[str]) -> list[Score]:
    """Named scores (or every registered one) that apply to ``run`` and find their statistics."""
    candidates = [make_score(n) for n in (names or score_names())]
    return [s for s in candidates if s.applies_to(run) and set(s.needs_stats) <= stats_keys]


def benchmark_model(
    ctx: StudyContext,
    in_dataset: str,
    model: str,
    ood: Sequence[str],
    options: BenchmarkOptions,
    scoring: ScoringOptions,
) -> list[BenchmarkRow]:
    """Train or reuse ``model`` on ``in_dataset`` (and aux runs), compare scores on each OOD set."""
    run = ctx.obtain_model(model, in_dataset)
    data = run.config.data
    with ctx.timed("score sets"):
        in_test_set = ctx.load_set(in_dataset, data.val_split, data)
        stats_keys = set(prepare(run, in_test_set, options=scoring).stats)
    scores = applicable_scores(run, options.scores, stats_keys)
    aux: dict[str, LoadedRun] = {}
    asked: dict[str, RunConfig] = {}
    aux_seconds: dict[str, float] = {}
    for score in scores:
        seconds = 0.0
        for aux_name, config in score.aux_runs(run.config).items():
            if aux_name not in aux:
                asked[aux_name] = config
                aux[aux_name] = ctx.obtain(config)
            elif asked[aux_name] != config:
                raise ValueError(f"two scores ask for different auxiliary runs named {aux_name!r}")
            seconds += training_seconds(aux[aux_name])
        aux_seconds[score.name] = seconds
    if not scores:
        return []
    with ctx.timed("score sets"):
        train = prepare(
            run, ctx.load_set(in_dataset, data.train_split, data, options.train_limit), aux, scoring
        )
        in_test = prepare(run, in_test_set, aux, scoring)
        ood_inputs = {
            name: prepare(run, ctx.load_set(name, "test", data), aux, scoring) for name in ood
        }
    with ctx.timed("compare scores"):
        comparisons = compare_scores(scores, in_test, ood_inputs, train)
    return [
        BenchmarkRow(in_dataset, c.ood_label, model, c, aux_seconds[c.score]) for c in comparisons
    ]


def benchmark_table(rows: Sequence[BenchmarkRow]) -> Table:
    """One row per (in-distribution, OOD, model, score), best AUROC first within each pair."""
    ordered = sorted(rows, key=lambda r: (r.in_dataset, r.ood, -r.comparison.metrics.auroc))
    cells: list[list[Cell]] = []
    for r in ordered:
        m = r.comparison.metrics
        low, high = m.ci.get("auroc", (float("nan"), float("nan")))
        cells.append(
            [
                r.in_dataset,
                r.ood,
                r.model,
                r.comparison.score,
                m.auroc,
                low,
                high,
                m.aupr_out,
                m.aupr_in,
                m.fpr95_in,
                r.comparison.seconds_per_image * 1e3,
                r.aux_train_seconds,
                m.n_in,
                m.n_out,
            ]
        )
    return Table(
        name="benchmark",
        title="OOD scores on every in-distribution / OOD pair and model",
        columns=[
            "in-distribution",
            "OOD",
            "model",
            "score",
            "AUROC",
            "AUROC 95% CI low",
            "AUROC 95% CI high",
            "AUPR (OOD positive)",
            "AUPR (in positive)",
            "FPR@95TPR",
            "ms per image",
            "aux training (s)",
            "n in",
            "n OOD",
        ],
        rows=cells,
        caption="Higher score = more OOD; rows sorted by AUROC within each pair. AUROC with a "
        "bootstrap 95% confidence interval. FPR@95TPR: fraction of OOD images accepted when "
        "95% of in-distribution test images are accepted (Hendrycks & Gimpel, OpenOOD). "
        "ms per image: computing the score from the model's cached per-sample statistics "
        "(the model's forward pass, shared by all its scores, is not included); aux training: "
        "seconds spent training the auxiliary runs the score needs (background models, ...).",
    )


def best_per_pair(rows: Sequence[BenchmarkRow]) -> list[BenchmarkRow]:
    best: dict[tuple[str, str], BenchmarkRow] = {}
    for r in rows:
        key = (r.in_dataset, r.ood)
        if key not in best or r.comparison.metrics.auroc > best[key].comparison.metrics.auroc:
            best[key] = r
    return list(best.values())


def benchmark_finding(rows: Sequence[BenchmarkRow]) -> str:
    """One sentence: the best score (and model) per pair, with its AUROC [CI]."""
    parts = []
    for r in best_per_pair(rows):
        m = r.comparison.metrics
        low, high = m.ci.get("auroc", (float("nan"), float("nan")))
        ci = f" [{low:.3f}, {high:.3f}]" if math.isfinite(low) and math.isfinite(high) else ""
        parts.append(
            f"{r.in_dataset} -> {r.ood}: {r.comparison.score} under {r.model}, AUROC "
            f"{m.auroc:.3f}{ci}"
        )
    return "Best score per pair: " + "; ".join(parts) + "." if parts else "No score applied."


@register_study
class Benchmark(Study[BenchmarkOptions]):
    """Every registered score on a grid of datasets, OOD sets and model families."""

    name = "benchmark"
    title = "Which OOD score separates in-distribution from OOD images best, and at what cost?"
    Options = BenchmarkOptions

    def run(self, ctx: StudyContext) -> StudyResult:
        o = self.options
        if not o.in_datasets or not o.models:
            raise ValueError("the benchmark needs at least one in-distribution dataset and model")
        for name in o.scores:
            make_score(name)  # an unknown name fails before any training
        scoring = ScoringOptions(iwae_k=o.iwae_k, progress=ctx.progress)
        rows: list[BenchmarkRow] = []
        runs: dict[str, str] = {}
        for in_dataset in o.in_datasets:
            ood = [name for name in o.ood if name != in_dataset]
            if not ood:
                raise ValueError(f"no OOD set for {in_dataset}: give --ood other than itself")
            for model in o.models:
                rows += benchmark_model(ctx, in_dataset, model, ood, o, scoring)
                runs[f"{in_dataset}-{model}"] = str(ctx.model_run_dir(model, in_dataset))
        missing = set(o.scores) - {r.comparison.score for r in rows}
        if o.scores and missing:
            raise ValueError(
                f"score(s) {sorted(missing)} apply to none of the models {list(o.models)}"
            )
        return self.result(
            ctx,
            benchmark_finding(rows),
            tables=[benchmark_table(rows)],
            runs=runs,
            data={
                "rows": [
                    {
                        "in_dataset": r.in_dataset,
                        "ood": r.ood,
                        "model": r.model,
                        "score": r.comparison.score,
                        "seconds_per_image": r.comparison.seconds_per_image,
                        "aux_train_seconds": r.aux_train_seconds,
                        **r.comparison.metrics.to_dict(),
                    }
                    for r in rows
                ],
                "best": [
                    {
                        "in_dataset": r.in_dataset,
                        "ood": r.ood,
                        "model": r.model,
                        "score": r.comparison.score,
                        "auroc": r.comparison.metrics.auroc,
                    }
                    for r in best_per_pair(rows)
                ],
            },
        )
