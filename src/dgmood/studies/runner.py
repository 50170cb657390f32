"""Running studies by name and evaluating an existing run: what the CLI calls."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dgmood.evaluation.compare import ScoringOptions
from dgmood.io import progress_enabled
from dgmood.reporting.html import write_index, write_report
from dgmood.reporting.result import StudyResult
from dgmood.runs import load_run
from dgmood.studies.base import Study, StudyContext, environment, study_class
from dgmood.studies.likelihood import likelihood_comparison, likelihood_finding
from dgmood.studies.pictures import run_pictures


def run_study(
    name: str,
    ctx: StudyContext,
    overrides: Sequence[str] = (),
    *,
    index_dir: Path | None = None,
    **options: Any,
) -> StudyResult:
    """Run registered study ``name`` in ``ctx`` and write its result into ``ctx.out_dir``.

    ``overrides`` are ``key=value`` strings for the study's options; ``options`` are keyword
    values (an unknown option is one clear error naming the known ones). With ``index_dir``
    (a folder of study folders, e.g. ``reports/``), its ``index.html`` is rewritten too.
    """
    cls = study_class(name)
    known = {f.name for f in dataclasses.fields(cls.Options)}
    unknown = set(options) - known
    if unknown:
        raise ValueError(
            f"study {name!r} has no option(s) {sorted(unknown)}; known: {sorted(known)}"
        )
    study: Study[Any] = cls.with_options(overrides, **options)
    with progress_enabled(ctx.progress):
        result = study.run(ctx)
    result.write(ctx.out_dir)
    write_report(result, ctx.out_dir)
    if index_dir is not None:
        write_index(index_dir)
    return result


def evaluate_run(
    run_dir: Path,
    ood: Sequence[str],
    ctx: StudyContext,
    *,
    scores: Sequence[str] = (),
    train_limit: int = 10_000,
    scoring: ScoringOptions | None = None,
    device: str = "cpu",
    expect_sha256: str | None = None,
) -> StudyResult:
    """In-distribution vs OOD sets under an existing density-model run, without training.

    Scores that need auxiliary runs train them into ``ctx.out_dir/runs``. ``expect_sha256``:
    the published SHA-256 of the run's model file (see :func:`dgmood.runs.load_run`).
    """
    run = load_run(run_dir, device, expect_sha256=expect_sha256)
    scoring = scoring or ScoringOptions(progress=ctx.progress)
    with progress_enabled(ctx.progress):
        inputs, sets, metrics, figures, data = likelihood_comparison(
            run, ctx, ood, train_limit=train_limit, scores=scores, scoring=scoring
        )
        shown = {label: d for label, (role, d) in inputs.items() if role != "in-train"}
        figures += run_pictures(ctx, run, shown)
    # the folder's name, not its path: a report is shared, the machine's layout is not
    folder = Path(run_dir).resolve().name
    result = StudyResult(
        study="evaluate",
        title=f"Is {run.name} ({folder}) fooled by {', '.join(ood)}?",
        finding=likelihood_finding(run, run.config.data.dataset, metrics),
        tables=[sets, metrics],
        figures=figures,
        runs={"model": str(run.run_dir)},  # pretrained:NAME resolved to its folder
        settings={
            "ood": list(ood),
            "scores": list(scores),
            "train_limit": train_limit,
            "limit": ctx.limit,
            "scoring": dataclasses.asdict(scoring),
        },
        data=data,
        timings=dict(ctx.timings),
        environment=environment(),
    )
    result.write(ctx.out_dir)
    # the evaluated run was named by the user: its config may be read (it often lies outside)
    read_root = os.path.commonpath([Path(run_dir).resolve(), ctx.out_dir.resolve()])
    write_report(result, ctx.out_dir, read_root)
    return result
