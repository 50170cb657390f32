"""Does more training fix it? Likelihoods of in-distribution and OOD data along training.

One run is trained in stages in the same run directory: for each stage step ``s_k``
(increasing), ``train_or_reuse(config with train.steps = s_k, run_dir, resume=True)``
continues where the previous stage stopped (the learning-rate schedule is a warm-up then
constant, and batches are a function of the step, so staged training equals one long run).
After each stage the in-distribution train (first ``train_limit``) and test sets and each
OOD test set are scored (score caches are keyed by the step) and the per-set bits/dim are
recorded in ``OUT_DIR/stages/step<s>.npz``, so a rerun reuses finished stages. Default
stages: 1/8, 1/4, 1/2, 1 and 2 times the preset's steps (the last one over-trains). The
paper: the OOD set keeps the higher likelihood throughout training.

References: Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?",
ICLR 2019 (Figure 2(b)/(c): log-likelihood over training, CIFAR-10 vs SVHN).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgmood.config import UNTIL_BUDGET, RunConfig, replace_path
from dgmood.data.imageset import ImageSet
from dgmood.evaluation.compare import ScoringOptions, prepare_input
from dgmood.io import atomic_write_bytes
from dgmood.reporting.analysis_plots import plot_curves
from dgmood.reporting.result import Cell, Figure, StudyResult, Table
from dgmood.runs import CONFIG_FILE, MODEL_FILE, load_run, read_model_metadata
from dgmood.scores.base import ScoreInput
from dgmood.scores.density import negative_log_likelihood
from dgmood.studies.base import Study, StudyContext, register_study
from dgmood.studies.pictures import run_pictures
from dgmood.training.launch import train_or_reuse

STAGE_FRACTIONS = (0.125, 0.25, 0.5, 1.0, 2.0)  # of the preset's (or --steps) steps
STAGES_DIR = "stages"


@dataclass(frozen=True)
class OverTrainingOptions:
    model: str = "glow"  # density model
    in_dataset: str = "fashion-mnist"  # trained on
    ood: tuple[str, ...] = ("mnist",)  # OOD test sets
    stages: tuple[int, ...] = ()  # training steps at which to score (empty: STAGE_FRACTIONS)
    train_limit: int = 2_000  # in-distribution training images scored per stage
    samples: int = 16  # samples of the last stage shown in the report (0 = none)


def stage_steps(stages: tuple[int, ...], base_steps: int) -> list[int]:
    """The increasing, distinct stage steps (from ``stages`` or fractions of ``base_steps``)."""
    chosen = list(stages) or [max(1, round(f * base_steps)) for f in STAGE_FRACTIONS]
    if any(s < 1 for s in chosen):
        raise ValueError(f"stages are positive step counts, got {list(stages)}")
    return sorted(set(chosen))


def current_step(run_dir: Path) -> int:
    """The step of the weights saved in ``run_dir`` (-1 when there are none)."""
    weights = run_dir / MODEL_FILE
    return int(read_model_metadata(weights).get("step", 0)) if weights.exists() else -1


@register_study
class OverTraining(Study[OverTrainingOptions]):
    """Bits/dim of in-distribution and OOD sets at increasing training steps."""

    name = "over-training"
    title = "Does the OOD set keep the higher likelihood as training goes on?"
    Options = OverTrainingOptions

    def run(self, ctx: StudyContext) -> StudyResult:
        o = self.options
        config = ctx.run_config(o.model, o.in_dataset)
        if config.train.steps >= UNTIL_BUDGET:
            raise ValueError(
                "over-training scores fixed training steps: give --steps (or -o stages=[...]) "
                "instead of a time budget"
            )
        steps = stage_steps(o.stages, config.train.steps)
        data = config.data
        sets = [ctx.load_set(o.in_dataset, data.train_split, data, o.train_limit)]
        sets += [ctx.load_set(o.in_dataset, data.val_split, data)]
        sets += [ctx.load_set(name, "test", data) for name in o.ood]
        # one run directory trained in stages: named by the identity of its last stage
        run_dir = ctx.run_dir(replace_path(config, "train.steps", steps[-1]))
        run_dir = run_dir.with_name(f"{run_dir.name}-staged")
        per_stage = {step: self.stage(ctx, config, run_dir, step, sets) for step in steps}
        labels = [s.label for s in sets]
        roles = dict(zip(labels, ["in-train", "in-test", *["ood"] * len(o.ood)], strict=True))
        rows, figure = self.summarize(ctx, steps, per_stage, roles)
        return self.result(
            ctx,
            over_training_finding(rows, steps),
            tables=[stage_table(rows)],
            figures=[figure, *self._pictures(ctx, run_dir, sets, per_stage[steps[-1]], roles)],
            runs={"model": str(run_dir)},
            data={
                "steps": steps,
                "mean_bits_per_dim": {
                    lab: [float(per_stage[s][lab].mean()) for s in steps] for lab in labels
                },
            },
        )

    def stage(
        self,
        ctx: StudyContext,
        config: RunConfig,
        run_dir: Path,
        step: int,
        sets: list[ImageSet],
    ) -> dict[str, np.ndarray]:
        """Bits/dim of every set after ``step`` steps: recorded, or trained to and scored."""
        stages_dir = ctx.out_dir / STAGES_DIR
        record = stages_dir / f"step{step}.npz"
        if record.exists():
            with np.load(record) as stored:
                return {key: stored[key] for key in stored.files}
        if current_step(run_dir) > step:
            raise ValueError(
                f"{run_dir} is already trained to step {current_step(run_dir)}, past stage "
                f"{step}, whose scores were not recorded in {record}; delete {run_dir} and "
                f"{stages_dir} to redo the stages"
            )
        with ctx.timed("train stages"):
            train_or_reuse(
                replace_path(config, "train.steps", step),
                run_dir,
                sources=ctx.sources,
                resume=(run_dir / CONFIG_FILE).exists(),
                progress=ctx.progress,
            )
        run = load_run(run_dir)
        scoring = ScoringOptions(progress=ctx.progress)
        with ctx.timed("score sets"):
            scored = {
                s.label: negative_log_likelihood(prepare_input(run, s, options=scoring).stats)
                for s in sets
            }
        buffer = io.BytesIO()
        np.savez(buffer, **scored)  # type: ignore[arg-type]
        atomic_write_bytes(record, buffer.getvalue())
        return scored

    def summarize(
        self,
        ctx: StudyContext,
        steps: list[int],
        per_stage: dict[int, dict[str, np.ndarray]],
        roles: dict[str, str],
    ) -> tuple[list[list[Cell]], Figure]:
        """One row per set and stage, and the curves of the medians with their 25-75% band."""
        rows: list[list[Cell]] = []
        curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for label, role in roles.items():
            stacked = [per_stage[step][label] for step in steps]
            quantiles = np.array([np.quantile(v, (0.5, 0.25, 0.75)) for v in stacked])
            curves[label] = (quantiles[:, 0], quantiles[:, 1], quantiles[:, 2])
            for step, values, (median, q25, q75) in zip(steps, stacked, quantiles, strict=True):
                row: list[Cell] = [step, label, role, len(values), float(values.mean())]
                rows.append([*row, float(median), float(q25), float(q75)])
        o = self.options
        path = plot_curves(
            steps,
            curves,
            ctx.out_dir / "over_training.png",
            "training step",
            "bits/dim (lower = more likely)",
            title=f"{o.model} trained on {o.in_dataset}, scored along training",
        )
        figure = Figure(
            "over_training",
            "Bits/dim along training",
            path.name,
            "Median per set with its 25-75% band.",
        )
        return rows, figure

    def _pictures(
        self,
        ctx: StudyContext,
        run_dir: Path,
        sets: list[ImageSet],
        last: dict[str, np.ndarray],
        roles: dict[str, str],
    ) -> list[Figure]:
        """The last stage's pictures: most/least likely images, samples, training curve."""
        if not (run_dir / MODEL_FILE).exists():  # the stages' records outlived the run
            return []
        inputs = {
            s.label: ScoreInput({"bits_per_dim": last[s.label]}, s.images, s.labels, label=s.label)
            for s in sets
            if roles[s.label] != "in-train"
        }
        run = load_run(run_dir)
        return run_pictures(ctx, run, inputs, samples=self.options.samples)


def stage_table(rows: list[list[Cell]]) -> Table:
    return Table(
        name="over_training",
        title="Bits/dim per set at each training stage",
        columns=["step", "set", "role", "n", "bits/dim mean", "median", "q25", "q75"],
        rows=rows,
        caption="The same run, trained in stages in one run directory and scored after "
        "each stage with the same dequantization noise.",
    )


def over_training_finding(rows: list[list[Cell]], steps: list[int]) -> str:
    """At how many stages each OOD set has a lower mean bits/dim than the in-distribution test."""
    mean = {(r[0], r[1]): r[4] for r in rows}
    in_test = next(str(r[1]) for r in rows if r[2] == "in-test")
    oods = sorted({str(r[1]) for r in rows if r[2] == "ood"})
    parts = []
    for ood in oods:
        gaps = [float(mean[s, ood]) - float(mean[s, in_test]) for s in steps]  # type: ignore[arg-type]
        below = sum(g < 0 for g in gaps)
        parts.append(
            f"{ood} has lower bits/dim (higher likelihood) than {in_test} at {below} of "
            f"{len(steps)} stages (gap {gaps[0]:+.3f} at step {steps[0]}, {gaps[-1]:+.3f} at "
            f"step {steps[-1]})"
        )
    return "; ".join(parts) + "."
