"""Which OOD score should I use? Every registered score on a grid of datasets and models.

The grid is in-distribution dataset x OOD sets x model families x scores. For each
in-distribution dataset and model the run is trained or reused (``runs/<in>-<model>``),
with any auxiliary runs its scores declare (``runs/<in>-<model>-<aux>``); the in-distribution
train (for fits) and test splits and each OOD test set are scored once and cached in the
run; then every score is fitted on in-distribution training images and compared on
in-distribution test vs each OOD set. Any folder of images is an OOD set (``folder:PATH``).

A grid can take hours, so it says up front what it will do (a plan line: runs to train,
sets to score, what the scores cost), writes ``benchmark.csv``/``.md`` again after every
finished model x score cell (a kill loses the cell under way, not the grid), and records a
cell that fails (a score that crashes, NaN scores) in a ``failed_cells`` table instead of
ending the grid.

References: Nalisnick et al., ICLR 2019; the scores' own references (``dgmood scores``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dgmood.config import RunConfig
from dgmood.evaluation.compare import ScoreComparison, ScoringOptions, compare_scores
from dgmood.evaluation.compare import prepare_input as prepare
from dgmood.evaluation.typicality import BatchTestResult, typicality_batch_test
from dgmood.io import atomic_write_text, progress_enabled
from dgmood.models.registry import model_kind
from dgmood.reporting.result import Cell, Figure, StudyResult, Table
from dgmood.runs import MODEL_FILE, LoadedRun, is_finished, read_metrics, read_model_metadata
from dgmood.scores.base import Score, make_score, score_names
from dgmood.scores.compressor import MODEL_FREE_MODEL
from dgmood.scores.density import negative_log_likelihood
from dgmood.studies.base import Study, StudyContext, register_study
from dgmood.studies.model_free import (
    model_free_comparisons,
    model_free_format,
    model_free_scores,
)
from dgmood.studies.pictures import run_pictures
from dgmood.studies.published import MeasuredAUROC, published_table


@dataclass(frozen=True)
class BenchmarkOptions:
    in_datasets: tuple[str, ...] = ("fashion-mnist", "mnist")  # models are trained on each
    ood: tuple[str, ...] = ("mnist", "fashion-mnist")  # OOD sets (an in-dataset skips itself)
    models: tuple[str, ...] = ("glow", "pixelcnnpp", "vae")  # model names (`dgmood models`)
    scores: tuple[str, ...] = ()  # empty: every registered score that applies to each model
    train_limit: int = 10_000  # in-distribution training images scored for fits
    iwae_k: int = 0  # VAEs: score with the importance-weighted bound (0 = the ELBO)
    # batch sizes M of the typicality test on batches (Nalisnick et al. 2019b; empty = none):
    # fitted on half the in-distribution test set, batches from its other half and the OOD set
    typicality_batch: tuple[int, ...] = ()
    # model-free scores shown once per pair as the pseudo-model "none" (with any named in
    # `scores`): how much of a model-based score's win the images alone already give
    baselines: tuple[str, ...] = ("compressor-png",)
    samples: int = 16  # samples of each density model shown in the report (0 = none)


@dataclass(frozen=True)
class BenchmarkRow:
    """One cell of the grid: a score of a model, in-distribution test vs one OOD set."""

    in_dataset: str
    ood: str
    model: str
    comparison: ScoreComparison
    aux_train_seconds: float  # training time of the score's auxiliary runs (0 = none)
    # forward passes of model networks per scored image (Score.network_evaluations; None:
    # not stated): a diffusion score costs tens of passes where a flow's likelihood costs one
    network_evaluations: float | None = None


@dataclass(frozen=True)
class TypicalityBatchRow:
    """The typicality test on batches of M images for one model and OOD set."""

    in_dataset: str
    ood: str
    model: str
    result: BatchTestResult


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
    return [
        s
        for s in candidates
        # a model-free score has its own row per pair (dgmood.studies.model_free)
        if not s.model_free and s.applies_to(run) and set(s.needs_stats) <= stats_keys
    ]


@dataclass(frozen=True)
class FailedCell:
    """A model x score cell of the grid that could not be computed, and why."""

    in_dataset: str
    model: str
    score: str
    error: str


@dataclass
class BenchmarkSink:
    """The cells finished so far, written to ``out_dir`` after each one."""

    out_dir: Path
    rows: list[BenchmarkRow] = field(default_factory=list)
    failures: list[FailedCell] = field(default_factory=list)

    def add(self, rows: Sequence[BenchmarkRow]) -> None:
        self.rows += rows
        self._write()

    def fail(self, failure: FailedCell) -> None:
        self.failures.append(failure)
        self._write()

    def tables(self) -> list[Table]:
        return [benchmark_table(self.rows)] + (
            [failures_table(self.failures)] if self.failures else []
        )

    def _write(self) -> None:
        for table in self.tables():
            atomic_write_text(self.out_dir / f"{table.name}.csv", table.to_csv())
            atomic_write_text(self.out_dir / f"{table.name}.md", table.to_markdown())


def benchmark_model(
    ctx: StudyContext,
    in_dataset: str,
    model: str,
    ood: Sequence[str],
    options: BenchmarkOptions,
    scoring: ScoringOptions,
    sink: BenchmarkSink | None = None,
    batch_tests: list[TypicalityBatchRow] | None = None,
) -> list[BenchmarkRow]:
    """Train or reuse ``model`` on ``in_dataset`` (and aux runs), compare scores on each OOD set.

    Each score's rows go to ``sink`` as soon as they are computed; a score that fails is
    recorded there as a :class:`FailedCell` and the other scores go on. With
    ``options.typicality_batch``, the typicality batch test's rows are appended to
    ``batch_tests``.
    """
    sink = sink or BenchmarkSink(ctx.out_dir)
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
    passes = {
        score.name: score.network_evaluations(
            run, {name: aux[name] for name in score.aux_runs(run.config)}
        )
        for score in scores
    }
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
    rows: list[BenchmarkRow] = []
    for score in scores:
        with ctx.timed("compare scores"):
            try:
                comparisons = compare_scores([score], in_test, ood_inputs, train)
            except Exception as error:  # one cell lost, not the grid: recorded and named
                sink.fail(
                    FailedCell(in_dataset, model, score.name, f"{type(error).__name__}: {error}")
                )
                continue
        cells = [
            BenchmarkRow(in_dataset, c.ood_label, model, c, aux_seconds[c.score], passes[c.score])
            for c in comparisons
        ]
        rows += cells
        sink.add(cells)
    if options.typicality_batch and batch_tests is not None:
        for label, ood_input in ood_inputs.items():
            batch_tests += [
                TypicalityBatchRow(in_dataset, label, model, result)
                for result in typicality_batch_test(
                    negative_log_likelihood(in_test.stats),
                    negative_log_likelihood(ood_input.stats),
                    options.typicality_batch,
                )
            ]
    return rows


def failures_table(failures: Sequence[FailedCell]) -> Table:
    return Table(
        name="failed_cells",
        title="Cells that could not be computed",
        columns=["in-distribution", "model", "score", "error"],
        rows=[[f.in_dataset, f.model, f.score, f.error] for f in failures],
        caption="Each row is one model x score cell of the grid that failed; the other cells "
        "are unaffected.",
    )


def _is_done(ctx: StudyContext, config: RunConfig) -> bool:
    weights = ctx.run_dir(config) / MODEL_FILE
    if not weights.is_file():
        return False
    try:
        return is_finished(read_model_metadata(weights), config.train.steps)
    except Exception:  # a damaged file: training will say what is wrong
        return False


def benchmark_plan(ctx: StudyContext, options: BenchmarkOptions) -> str:
    """One line, before anything runs: the runs to train, the sets to score, what it costs.

    Counted from the configs alone (no run is loaded, no model built): a score counts for
    every model of its kind (density or classifier), so auxiliary runs and slow scores are
    an upper bound. Runs are counted once per identity, as they are trained.
    """
    scores = [make_score(name) for name in options.scores or score_names()]
    wanted: dict[str, RunConfig] = {}  # run directory name -> config, main and auxiliary
    aux_for: set[str] = set()  # scores that train auxiliary runs
    slow: set[str] = set()  # scores that run the model on every image
    passes = 0  # images scored, summed over the runs that score them
    n_main = 0
    for in_dataset in options.in_datasets:
        n_ood = len([name for name in options.ood if name != in_dataset])
        for model in options.models:
            config = ctx.run_config(model, in_dataset, kind=None)  # or pretrained:NAME
            kind = model_kind(config.model)
            runs = {ctx.run_dir(config).name: config}
            n_main += 1
            for score in (s for s in scores if s.model_kind == kind):
                for aux_config in score.aux_runs(config).values():
                    aux_config = ctx.configure(aux_config)
                    runs[ctx.run_dir(aux_config).name] = aux_config
                    aux_for.add(score.name)
                if score.uses_model:
                    slow.add(score.name)
            wanted |= runs
            per_set = ctx.limit or 10_000  # a test split
            passes += len(runs) * ((options.train_limit or 60_000) + per_set * (1 + n_ood))
    new = [name for name, config in wanted.items() if not _is_done(ctx, config)]
    steps = sum(wanted[name].train.steps for name in new)
    n_aux = max(0, len(wanted) - n_main)
    parts = [
        f"plan: {len(wanted)} runs ({n_aux} auxiliary"
        + (f", for {', '.join(sorted(aux_for))}" if aux_for else "")
        + f"), {len(new)} to train ({steps:,} steps)"
        + (f": {', '.join(new)}" if new else ""),
        f"each model scores its in-distribution train (fits) and test sets and "
        f"{', '.join(options.ood)}: about {passes:,} images in all",
        f"{len(scores)} scores",
    ]
    if slow:
        parts.append(f"{', '.join(sorted(slow))} run the model on every image (minutes per set)")
    return "; ".join(parts)


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
                r.network_evaluations,
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
            "network evaluations per image",
            "aux training (s)",
            "n in",
            "n OOD",
        ],
        rows=cells,
        caption="Higher score = more OOD; rows sorted by AUROC within each pair. Model 'none': "
        "a model-free score (the compressor alone, -L(x)), the same for every model. AUROC with a "
        "bootstrap 95% confidence interval. FPR@95TPR: fraction of OOD images accepted when "
        "95% of in-distribution test images are accepted (Hendrycks & Gimpel, OpenOOD). "
        "ms per image: computing the score from the model's cached per-sample statistics "
        "(the model's forward pass, shared by all its scores, is not included); network "
        "evaluations per image: forward passes of model networks per scored image, that pass "
        "included (a flow's likelihood: 1; a VAE's ELBO: encoder + decoder per latent; a "
        "diffusion model's bound: one denoiser pass per timestep; blank: not stated); aux "
        "training: seconds spent training the auxiliary runs the score needs (background "
        "models, ...).",
    )


def typicality_batch_table(rows: Sequence[TypicalityBatchRow]) -> Table:
    """The typicality test on batches of M images: AUROC and the share of batches flagged."""
    return Table(
        name="typicality_batch",
        title="Typicality test on batches of M images (Nalisnick et al. 2019b)",
        columns=[
            "in-distribution",
            "OOD",
            "model",
            "M",
            "AUROC",
            "threshold (bits/dim)",
            "in-distribution batches flagged",
            "OOD batches flagged",
        ],
        rows=[
            [
                r.in_dataset,
                r.ood,
                r.model,
                r.result.batch_size,
                r.result.auroc,
                r.result.threshold,
                r.result.in_flagged,
                r.result.ood_flagged,
            ]
            for r in rows
        ],
        caption="Score of a batch: |mean NLL of its M images - H|. The entropy H and the "
        "bootstrap thresholds (alpha = 0.01) come from the first half of the in-distribution "
        "test set (held out: the model never trained on it); 1,000 batches per M are drawn "
        "from its second half and from the OOD set. In-distribution batches flagged should "
        "be about alpha.",
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


@dataclass
class Grid:
    """What the benchmark grid has gathered so far."""

    sink: BenchmarkSink
    rows: list[BenchmarkRow] = field(default_factory=list)
    batch_tests: list[TypicalityBatchRow] = field(default_factory=list)
    runs: dict[str, str] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)


def measured_auroc(row: BenchmarkRow) -> MeasuredAUROC:
    metrics = row.comparison.metrics
    low, high = metrics.ci.get("auroc", (float("nan"), float("nan")))
    return MeasuredAUROC(
        row.in_dataset, row.ood, row.model, row.comparison.score, metrics.auroc, low, high
    )


@register_study
class Benchmark(Study[BenchmarkOptions]):
    """Every registered score on a grid of datasets, OOD sets and model families."""

    name = "benchmark"
    title = "Which OOD score separates in-distribution from OOD images best, and at what cost?"
    Options = BenchmarkOptions

    def check(self) -> None:
        """Refuse options that cannot make a grid, before anything is trained."""
        o = self.options
        if not o.in_datasets:
            raise ValueError("the benchmark needs at least one in-distribution dataset")
        if not o.models and not model_free_scores(o.baselines + o.scores):
            raise ValueError(
                "the benchmark needs at least one model, or a model-free score alone "
                "(-o 'models=[]' -o 'baselines=[compressor-png]')"
            )
        for name in o.scores:
            make_score(name)  # an unknown name fails before any training
        for in_dataset in o.in_datasets:
            if not [name for name in o.ood if name != in_dataset]:
                raise ValueError(f"no OOD set for {in_dataset}: give --ood other than itself")
        if any(m < 1 for m in o.typicality_batch):
            raise ValueError(f"typicality batch sizes must be >= 1, got {o.typicality_batch}")

    def grid_row(self, ctx: StudyContext, in_dataset: str, grid: Grid) -> None:
        """Every model and the model-free baselines on ``in_dataset`` vs its OOD sets."""
        o = self.options
        ood = [name for name in o.ood if name != in_dataset]
        scoring = ScoringOptions(iwae_k=o.iwae_k, progress=ctx.progress)
        for model in o.models:
            grid.rows += benchmark_model(
                ctx, in_dataset, model, ood, o, scoring, grid.sink, grid.batch_tests
            )
            grid.runs[f"{in_dataset}-{model}"] = str(ctx.model_run_dir(model, in_dataset))
            # each model's samples and training curve (the run is finished: reused)
            grid.figures += run_pictures(
                ctx,
                ctx.obtain_model(model, in_dataset),
                samples=o.samples,
                tag=f"{in_dataset}-{model}",
            )
        baselines = model_free_scores(tuple(dict.fromkeys(o.baselines + o.scores)))
        like = model_free_format(ctx, in_dataset, o.models)
        model_free_rows = [
            BenchmarkRow(in_dataset, c.ood_label, MODEL_FREE_MODEL, c, 0.0, 0.0)
            for c in model_free_comparisons(ctx, in_dataset, ood, baselines, like)
        ]
        grid.rows += model_free_rows
        grid.sink.add(model_free_rows)

    def run(self, ctx: StudyContext) -> StudyResult:
        o = self.options
        self.check()
        print(benchmark_plan(ctx, o), file=sys.stderr, flush=True)  # before hours of work
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        grid = Grid(BenchmarkSink(ctx.out_dir))
        with progress_enabled(ctx.progress):
            for in_dataset in o.in_datasets:
                self.grid_row(ctx, in_dataset, grid)
        rows, sink, batch_tests, runs, figures = (
            grid.rows,
            grid.sink,
            grid.batch_tests,
            grid.runs,
            grid.figures,
        )
        missing = (
            set(o.scores) - {r.comparison.score for r in rows} - {f.score for f in sink.failures}
        )
        if o.scores and missing:
            raise ValueError(
                f"score(s) {sorted(missing)} apply to none of the models {list(o.models)}"
            )
        finding = benchmark_finding(rows)
        if sink.failures:
            finding += (
                f" {len(sink.failures)} cell(s) failed and are listed in failed_cells: "
                + "; ".join(f"{f.score} under {f.model} on {f.in_dataset}" for f in sink.failures)
                + "."
            )
        tables = sink.tables()
        if batch_tests:
            tables.append(typicality_batch_table(batch_tests))
        published = published_table([measured_auroc(r) for r in rows])
        if published is not None:
            tables.append(published)
        return self.result(
            ctx,
            finding,
            tables=tables,
            figures=figures,
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
                "typicality_batch": [
                    {"in_dataset": r.in_dataset, "ood": r.ood, "model": r.model, **vars(r.result)}
                    for r in batch_tests
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
                "failed_cells": [vars(f) for f in sink.failures],
            },
        )
