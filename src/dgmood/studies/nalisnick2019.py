"""The whole paper in one command: every analysis study, one summary.

Runs, in order, ``fashion-mnist`` (Figure 1), ``pairs`` (both directions of each pair),
``decomposition`` (log p(z) vs log|det J|), ``moments`` (per-dimension means/variances),
``graying`` (constant/low-contrast inputs) and ``over-training`` (likelihood along
training); each writes its own result into ``OUT_DIR/<study>``. Runs live in one shared
``OUT_DIR/runs``, named by what they are (model, data and training config), so studies
asking for the same run (fashion-mnist, pairs, decomposition and graying all use the Glow
trained on FashionMNIST) train it once. Resumable:
finished runs, score caches and over-training stages are reused; an interrupted run is
continued with ``--resume``.

Budget at ``--preset cpu`` on 2 cores (estimated from the measured cpu runs in
docs/RESULTS.md, ~4 min for Glow, <=10 min for each other family): 9 trainings (8 for
pairs, of which the Glow/FashionMNIST one is shared with decomposition and graying, plus
one for fashion-mnist) ~ 50-70 min; over-training trains Glow to 2x its steps in stages,
~8 min; scoring with every set capped at 2,000 images (``CPU_LIMIT``) ~ 20-30 min. Under
2 hours in all; ``--limit`` overrides the cap.

References: Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?",
ICLR 2019.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dgmood.reporting.result import Cell, StudyResult, Table
from dgmood.studies.base import Study, StudyContext, register_study

PAPER_STUDIES = ("fashion-mnist", "pairs", "decomposition", "moments", "graying", "over-training")
CPU_LIMIT = 2_000  # images per scored set at --preset cpu (keeps the whole paper < 2 h)
TRAIN_LIMIT_STUDIES = ("fashion-mnist", "pairs", "decomposition", "over-training")


@dataclass(frozen=True)
class Nalisnick2019Options:
    studies: tuple[str, ...] = PAPER_STUDIES  # which of the paper's studies to run, in order
    train_limit: int = 0  # in-distribution training images scored (0: the limit of each set)


@register_study
class Nalisnick2019(Study[Nalisnick2019Options]):
    """Every analysis of the paper, each into OUT_DIR/<study>, and one summary."""

    name = "nalisnick2019"
    title = "Do deep generative models know what they don't know? (all analyses)"
    Options = Nalisnick2019Options

    def run(self, ctx: StudyContext) -> StudyResult:
        from dgmood.studies.base import study_class
        from dgmood.studies.runner import run_study

        o = self.options
        for name in o.studies:
            study_class(name)  # an unknown name fails before any work
            if name == self.name:
                raise ValueError(f"{self.name} cannot run itself")
        limit = ctx.limit or (CPU_LIMIT if ctx.preset == "cpu" else 0)
        train_limit = o.train_limit or limit or 10_000
        rows: list[list[Cell]] = []
        data: dict[str, Any] = {}
        for name in o.studies:
            sub = dataclasses.replace(
                ctx, out_dir=ctx.out_dir / name, limit=limit, timings={}, runs_root=ctx.runs_dir
            )
            options: dict[str, Any] = {}
            if name in TRAIN_LIMIT_STUDIES:
                options["train_limit"] = train_limit
            with ctx.timed(name):
                result = run_study(name, sub, **options)
            seconds = sum(v for k, v in sub.timings.items())
            rows.append([name, result.title, result.finding, f"{name}/summary.md", seconds])
            data[name] = {"finding": result.finding, "folder": name}
        table = Table(
            name="studies",
            title="The paper's analyses",
            columns=["study", "question", "finding", "result", "seconds (timed steps)"],
            rows=rows,
            caption=f"Each study's tables and figures are in its folder; scored sets capped "
            f"at {limit or 'all'} images.",
            digits=1,
        )
        finding = " | ".join(f"{r[0]}: {r[2]}" for r in rows)
        return self.result(ctx, finding, tables=[table], data=data)
