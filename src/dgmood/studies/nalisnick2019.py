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

Then the colour half (``colour``, on by default): the same questions on natural colour
images, each into ``OUT_DIR/colour/<study>``: ``cifar10`` (every density family trained on
CIFAR-10, scored on every colour OOD set), ``decomposition`` of the CIFAR-10 Glow,
``moments`` of CIFAR-10 and each colour set at 3x32x32, ``graying`` of colour images (the
paper's Figure 6b) and ``cv-glow`` trained on CIFAR-10. The OOD sets are those of
:data:`dgmood.studies.cifar10.COLOUR_OOD` whose files exist; a missing one is listed in the
summary, and without CIFAR-10 itself the colour half is skipped with the loader's message
(the grayscale half still runs). ``-o colour=[]`` leaves it out. At ``--preset cpu`` it adds
the four CIFAR-10 trainings of ``cifar10`` (the Glow shared with decomposition and graying)
and CV-Glow's ``cpu-long`` run on CIFAR-10, the longest single run.

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
TRAIN_LIMIT_STUDIES = ("fashion-mnist", "pairs", "decomposition", "over-training", "cifar10")
COLOUR_STUDIES = ("cifar10", "decomposition", "moments", "graying", "cv-glow")
COLOUR_IN = "cifar10"  # the colour studies' training set
COLOUR_FOLDER = "colour"  # OUT_DIR/colour/<study>


@dataclass(frozen=True)
class Nalisnick2019Options:
    studies: tuple[str, ...] = PAPER_STUDIES  # which of the paper's studies to run, in order
    train_limit: int = 0  # in-distribution training images scored (0: the limit of each set)
    # the studies run again on CIFAR-10 and the colour OOD sets (empty: none)
    colour: tuple[str, ...] = COLOUR_STUDIES


def colour_options(name: str, ood: tuple[str, ...]) -> dict[str, Any]:
    """The options that point study ``name`` at CIFAR-10 and the colour OOD sets ``ood``."""
    if name == "cifar10":
        return {"in_dataset": COLOUR_IN, "ood": ood}
    if name == "moments":
        return {"datasets": (COLOUR_IN, *ood), "channels": 3}
    if name in ("decomposition", "graying", "cv-glow", "fashion-mnist", "over-training"):
        return {"in_dataset": COLOUR_IN, "ood": ood}
    raise ValueError(f"study {name!r} has no colour version; colour studies: {COLOUR_STUDIES}")


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
        for name in (*o.studies, *o.colour):
            study_class(name)  # an unknown name fails before any work
            if name == self.name:
                raise ValueError(f"{self.name} cannot run itself")
        for name in o.colour:
            colour_options(name, ())  # a study without a colour version fails before any work
        limit = ctx.limit or (CPU_LIMIT if ctx.preset == "cpu" else 0)
        train_limit = o.train_limit or limit or 10_000
        rows: list[list[Cell]] = []
        data: dict[str, Any] = {}
        plan: list[tuple[str, str, dict[str, Any]]] = [(name, name, {}) for name in o.studies]
        if o.colour:
            ood, skipped = self._colour_sets(ctx)
            for name, why in skipped:
                rows.append([f"{COLOUR_FOLDER} (set {name})", "skipped", why, "", 0.0])
            if ood is not None:
                plan += [
                    (name, f"{COLOUR_FOLDER}/{name}", colour_options(name, ood))
                    for name in o.colour
                ]
        for name, folder, options in plan:
            sub = dataclasses.replace(
                ctx, out_dir=ctx.out_dir / folder, limit=limit, timings={}, runs_root=ctx.runs_dir
            )
            options = dict(options)
            if name in TRAIN_LIMIT_STUDIES:
                options["train_limit"] = train_limit
            with ctx.timed(folder):
                result = run_study(name, sub, **options)
            seconds = sum(v for k, v in sub.timings.items())
            rows.append([folder, result.title, result.finding, f"{folder}/summary.md", seconds])
            data[folder] = {"finding": result.finding, "folder": folder}
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

    def _colour_sets(
        self, ctx: StudyContext
    ) -> tuple[tuple[str, ...] | None, list[tuple[str, str]]]:
        """The colour OOD sets on this machine (None without CIFAR-10) and the skipped ones."""
        from dgmood.data.errors import DataError
        from dgmood.data.sources import resolve_data_dir
        from dgmood.presets import run_preset
        from dgmood.studies.cifar10 import COLOUR_OOD, available_sets

        like = run_preset("glow", ctx.preset, COLOUR_IN)
        try:
            ctx.load_set(COLOUR_IN, like.data.train_split, like.data, 1)
        except DataError as error:
            where = str(resolve_data_dir(ctx.sources.data_dir))  # shared report, not our disk
            why = " ".join(str(error).replace(where, "<data dir>").split())
            return None, [(COLOUR_IN, f"the colour studies were skipped: {why}")]
        present, skipped = available_sets(ctx, COLOUR_OOD, like)
        return tuple(present), skipped
