"""Natural colour images: which sets does a CIFAR-10 model find *more* likely than CIFAR-10?

The paper's headline is CIFAR-10 -> SVHN. For each density family (Glow, PixelCNN++, VAE,
RealNVP by default), train on CIFAR-10 (or reuse the run), score CIFAR-10 train (a slice),
CIFAR-10 test and every colour OOD set at the run's 3x32x32 format: GTSRB, MNIST and
FashionMNIST as 3x32x32 (gray repeated, zero-padded), ``constant`` and ``noise`` (Serra et
al. 2020), and SVHN, CIFAR-100, CelebA, ImageNet32 wherever their files exist (each missing
set is skipped with the loader's message in the ``skipped`` table, never silently). Then:

- bits/dim per set and model (mean, std, median, quantiles), with the published Glow numbers
  beside ours where the paper gives them, and each set named with its size (the mirror's
  CIFAR-10 test set is "CIFAR-10 test (first 1,000)");
- the paper's Figure 1 in colour: bits/dim histograms per model;
- AUROC (bootstrap 95% CI) of ``-log p(x)``, of the model-free compressor baseline and of
  input complexity (PNG) per OOD set;
- per OOD set and model, the finding: does the set get *higher* likelihood than CIFAR-10's
  own test images (AUROC of ``-log p`` below 0.5, and the gap of means and medians)?
- for flows, log p(z) and log|det J| per set (the decomposition of the CIFAR-10 Glow);
- pictures: most and least likely images per set, samples, training curves.

A CIFAR-10 test set of 1,000 images makes every AUROC's interval wider than the paper's
(10,000 test images); the interval says how much.

References: Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?",
ICLR 2019 (Figure 1, Section 3, and the Glow bits/dim of CIFAR-10 train 3.386, test 3.464,
SVHN test 2.389); Serra et al., "Input complexity and out-of-distribution detection with
likelihood-based generative models", ICLR 2020 (Constant, Noise, TrafficSign as OOD sets).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dgmood import pretrained
from dgmood.config import RunConfig
from dgmood.data.errors import DataError
from dgmood.data.sources import resolve_data_dir
from dgmood.evaluation.compare import ScoringOptions
from dgmood.reporting.plots import plot_bpd_histograms, plot_flow_decomposition
from dgmood.reporting.result import Cell, Figure, StudyResult, Table
from dgmood.runs import LoadedRun
from dgmood.scores.base import ScoreInput
from dgmood.scores.density import negative_log_likelihood
from dgmood.studies.base import (
    METRIC_COLUMNS,
    METRICS_CAPTION,
    Study,
    StudyContext,
    register_study,
)
from dgmood.studies.likelihood import QUANTILES, distribution_cells, likelihood_comparison
from dgmood.studies.pairs import PUBLISHED_BPD
from dgmood.studies.pictures import SAMPLES, run_pictures, slug

# every colour OOD set dgmood can load; the last four exist only where a user has the files
COLOUR_OOD = (
    "gtsrb",
    "mnist",
    "fashion-mnist",
    "constant",
    "noise",
    "svhn",
    "cifar100",
    "celeba",
    "imagenet32",
)
DENSITY_FAMILIES = ("glow", "pixelcnnpp", "vae", "realnvp")
DEFAULT_SCORES = ("nll", "compressor-png", "complexity-png")


@dataclass(frozen=True)
class Cifar10Options:
    models: tuple[str, ...] = DENSITY_FAMILIES  # density models trained on in_dataset
    in_dataset: str = "cifar10"  # trained on
    ood: tuple[str, ...] = COLOUR_OOD  # OOD test sets; a set whose files are absent is skipped
    train_limit: int = 10_000  # in-distribution training images scored (a slice, as the issue)
    # scores compared per OOD set (nll = -log p(x); compressor-png = the model-free baseline)
    scores: tuple[str, ...] = DEFAULT_SCORES
    samples: int = SAMPLES  # samples drawn from each model for the report (0 = none)


def available_sets(
    ctx: StudyContext, names: Sequence[str], like: RunConfig, split: str = "test"
) -> tuple[list[str], list[tuple[str, str]]]:
    """``names`` whose ``split`` loads in ``like``'s format, and ``(name, why)`` for the rest.

    Only a missing or unreadable dataset is skipped (its loader's one-line message says
    what to do); any other error is a bug and propagates.
    """
    present: list[str] = []
    skipped: list[tuple[str, str]] = []
    for name in names:
        try:
            ctx.load_set(name, split, like.data, 1)
        except DataError as error:
            # the report is shared, this machine's folders are not
            where = str(resolve_data_dir(ctx.sources.data_dir))
            skipped.append((name, " ".join(str(error).replace(where, "<data dir>").split())))
        else:
            present.append(name)
    return present, skipped


def published_bpd(model: str, in_dataset: str, name: str, split: str) -> float | None:
    """The paper's bits/dim for this model and set (:data:`PUBLISHED_BPD`), or None; a
    shipped run (``pretrained:NAME``) counts as the model it was trained as."""
    if pretrained.is_reference(model):
        model = pretrained.get(model).model
    return PUBLISHED_BPD.get((model, in_dataset, name, split))


@dataclass
class ModelPart:
    """What one model contributes to the cifar10 study's tables and figures."""

    model: str
    run_dir: str
    in_label: str
    set_rows: list[list[Cell]]
    metric_rows: list[list[Cell]]
    finding_rows: list[list[Cell]]
    term_rows: list[list[Cell]]
    figures: list[Figure]


ScoredSet = tuple[str, str, ScoreInput]  # label, role, statistics


def finding_rows(
    model: str, sets: list[ScoredSet], in_data: ScoreInput, metrics: Table
) -> list[list[Cell]]:
    """Per OOD set: medians, gaps, AUROC of -log p [CI], share below the test median."""
    in_bpd = negative_log_likelihood(in_data.stats)
    nll_auroc = {str(r[2]): r[3:6] for r in metrics.rows if r[0] == "nll"}
    rows: list[list[Cell]] = []
    for label, role, data in sets:
        if role != "ood":
            continue
        bpd = negative_log_likelihood(data.stats)
        auroc, low, high = nll_auroc[label]
        assert isinstance(auroc, float)
        rows.append(
            [
                label,
                model,
                len(data),
                float(np.median(in_bpd)),
                float(np.median(bpd)),
                float(bpd.mean() - in_bpd.mean()),
                float(np.median(bpd) - np.median(in_bpd)),
                auroc,
                low,
                high,
                float((bpd < np.median(in_bpd)).mean()),
                verdict(auroc),
            ]
        )
    return rows


def flow_term_rows(model: str, sets: list[ScoredSet], in_data: ScoreInput) -> list[list[Cell]]:
    """A flow's density and volume terms per set, and their gaps to the test set (nats)."""
    if "log_pz" not in in_data.stats:
        return []
    rows: list[list[Cell]] = []
    for label, role, data in sets:
        if role == "in-train":
            continue
        log_pz, log_det = data.stat("log_pz"), data.stat("log_abs_det_jacobian")
        rows.append(
            [
                model,
                label,
                len(data),
                float(log_pz.mean()),
                float(log_det.mean()),
                float(log_pz.mean() - in_data.stat("log_pz").mean()),
                float(log_det.mean() - in_data.stat("log_abs_det_jacobian").mean()),
            ]
        )
    return rows


def skipped_table(skipped: list[tuple[str, str]]) -> Table:
    return Table(
        "skipped_sets",
        "OOD sets skipped (their files are not on this machine)",
        ["set", "why"],
        [[n, why] for n, why in skipped],
        caption="Put the files where the message says (or pass --download) and run "
        "again: finished runs and cached statistics are reused.",
    )


def verdict(auroc: float) -> str:
    """How ``-log p`` ranks an OOD set against in-distribution test images."""
    return "higher" if auroc < 0.5 else "lower"


@register_study
class Cifar10(Study[Cifar10Options]):
    """Each density family trained on CIFAR-10, scored on every colour OOD set."""

    name = "cifar10"
    title = "Which colour sets does a model trained on CIFAR-10 find more likely than CIFAR-10?"
    Options = Cifar10Options

    def run(self, ctx: StudyContext) -> StudyResult:
        o = self.options
        configs, ood, skipped = self.check(ctx)
        parts = [self.score_model(ctx, model, configs[model], ood) for model in o.models]
        finding_rows = [row for part in parts for row in part.finding_rows]
        term_rows = [row for part in parts for row in part.term_rows]
        tables = [
            findings_table(finding_rows, o.in_dataset),
            bits_per_dim_table([row for part in parts for row in part.set_rows]),
            auroc_table([row for part in parts for row in part.metric_rows]),
        ]
        if term_rows:
            tables.append(flow_terms_table(term_rows))
        if skipped:
            tables.append(skipped_table(skipped))
        return self.result(
            ctx,
            cifar10_finding(finding_rows, skipped, parts[0].in_label),
            tables=tables,
            figures=[figure for part in parts for figure in part.figures],
            runs={part.model: part.run_dir for part in parts},
            data={
                "ood": ood,
                "skipped": dict(skipped),
                "findings": [dict(zip(FINDING_COLUMNS, r, strict=True)) for r in finding_rows],
            },
        )

    def check(
        self, ctx: StudyContext
    ) -> tuple[dict[str, RunConfig], list[str], list[tuple[str, str]]]:
        """Every model's config, the OOD sets present and those skipped (with why); bad
        options and a missing in-distribution set are refused before any training."""
        o = self.options
        if not o.models:
            raise ValueError("cifar10 needs at least one model (e.g. -o 'models=[glow]')")
        if "nll" not in o.scores:
            raise ValueError("cifar10 compares -log p(x): keep 'nll' in its scores")
        configs = {model: ctx.run_config(model, o.in_dataset) for model in o.models}
        first = configs[o.models[0]]
        ctx.load_set(o.in_dataset, first.data.val_split, first.data, 1)
        ctx.load_set(o.in_dataset, first.data.train_split, first.data, 1)
        ood, skipped = available_sets(ctx, [n for n in o.ood if n != o.in_dataset], first)
        if not ood:
            raise ValueError(f"none of the OOD sets {list(o.ood)} could be loaded: {skipped}")
        return configs, ood, skipped

    def score_model(
        self, ctx: StudyContext, model: str, config: RunConfig, ood: list[str]
    ) -> ModelPart:
        """``model`` trained on CIFAR-10 (obtained) and every set scored under it."""
        o = self.options
        run = ctx.obtain(config)
        inputs, _, metrics, _, _ = likelihood_comparison(
            run,
            dataclasses.replace(ctx, out_dir=ctx.out_dir / "detail" / slug(model)),
            ood,
            in_dataset=o.in_dataset,
            train_limit=o.train_limit,
            scores=o.scores,
            scoring=ScoringOptions(progress=ctx.progress),
        )
        sets = [(label, role, data) for label, (role, data) in inputs.items()]
        names = [o.in_dataset, o.in_dataset, *ood]
        splits = [run.config.data.train_split, run.config.data.val_split, *["test"] * len(ood)]
        set_rows: list[list[Cell]] = [
            [
                model,
                label,
                role,
                len(data),
                *distribution_cells(negative_log_likelihood(data.stats)),
                published_bpd(model, o.in_dataset, name, split),
            ]
            for (label, role, data), name, split in zip(sets, names, splits, strict=True)
        ]
        in_label, in_data = next((lab, d) for lab, r, d in sets if r == "in-test")
        shown = {lab: d for lab, r, d in sets if r != "in-train"}
        return ModelPart(
            model=model,
            run_dir=str(run.run_dir),
            in_label=in_label,
            set_rows=set_rows,
            metric_rows=[[model, *row[:-1]] for row in metrics.rows],
            finding_rows=finding_rows(model, sets, in_data, metrics),
            term_rows=flow_term_rows(model, sets, in_data),
            figures=self._figures(ctx, run, model, in_label, shown),
        )

    def _figures(
        self,
        ctx: StudyContext,
        run: LoadedRun,
        model: str,
        in_label: str,
        shown: dict[str, ScoreInput],
    ) -> list[Figure]:
        bpd = {label: negative_log_likelihood(d.stats) for label, d in shown.items()}
        path = plot_bpd_histograms(
            bpd,
            ctx.out_dir / f"bpd_{slug(model)}.png",
            title=f"{run.name} trained on {self.options.in_dataset}",
        )
        figures = [
            Figure(
                f"bpd_{slug(model)}",
                f"Bits/dim of {in_label} and each OOD set under {model} (Figure 1 in colour)",
                path.name,
                "Normalised histograms; the axis spans the 0.1-99.9 percentiles of all sets and "
                "each legend counts the images beyond it.",
            )
        ]
        if "log_pz" in shown[in_label].stats:
            path = plot_flow_decomposition(
                {label: d.stats for label, d in shown.items()},
                ctx.out_dir / f"decomposition_{slug(model)}.png",
            )
            figures.append(
                Figure(
                    f"decomposition_{slug(model)}",
                    f"Density term log p(z) and volume term log|det J| under {model}",
                    path.name,
                    "Nats per image on the model's input scale; higher = more likely.",
                )
            )
        return figures + run_pictures(ctx, run, shown, tag=model, samples=self.options.samples)


FINDING_COLUMNS = [
    "OOD set",
    "model",
    "n OOD",
    "in-test median bits/dim",
    "OOD median bits/dim",
    "gap of means (OOD - in)",
    "gap of medians (OOD - in)",
    "AUROC of -log p(x)",
    "AUROC 95% CI low",
    "AUROC 95% CI high",
    "share of OOD below the in-test median",
    "likelihood vs in-test",
]


def findings_table(rows: list[list[Cell]], in_dataset: str) -> Table:
    ordered = sorted(rows, key=lambda r: (str(r[0]), str(r[1])))
    return Table(
        "findings",
        f"Which sets get higher likelihood than {in_dataset}'s own test images?",
        FINDING_COLUMNS,
        ordered,
        caption="Bits/dim: lower = more likely. 'higher' (AUROC of -log p(x) below 0.5): the "
        "model ranks the OOD set as more likely than the in-distribution test set, the "
        "paper's failure. 'share of OOD below the in-test median': fraction of OOD images "
        "more likely than the median test image (0.5 = no preference).",
    )


def bits_per_dim_table(rows: list[list[Cell]]) -> Table:
    return Table(
        "bits_per_dim",
        "Bits per dimension of each set, per model",
        [
            "model",
            "set",
            "role",
            "n",
            "bits/dim mean",
            "std",
            "median",
            *[f"q{int(q * 100):02d}" for q in QUANTILES],
            "published bits/dim",
        ],
        rows,
        caption="Bits/dim of the dequantized images (uniform noise, seeded per image), lower = "
        "more likely. 'published': Glow of Nalisnick et al. 2019 (CIFAR-10 train 3.386, test "
        "3.464 on all 10,000 test images, SVHN test 2.389; the paper's bits/dim table, also in "
        "the talk's slides), blank where no number is published for that model and set.",
    )


def auroc_table(rows: list[list[Cell]]) -> Table:
    return Table(
        "ood_metrics",
        "OOD detection metrics per model, score and OOD set",
        ["model", "score", "in-distribution", "OOD", *METRIC_COLUMNS],
        rows,
        caption=METRICS_CAPTION
        + " nll: -log p(x) in bits/dim; compressor-png: minus the PNG length of the image, "
        "no model (the model-free baseline); complexity-png: bits/dim minus the PNG length "
        "(Serra et al. 2020).",
    )


def flow_terms_table(rows: list[list[Cell]]) -> Table:
    return Table(
        "flow_terms",
        "Flows: density term log p(z) and volume term log|det J| per set (nats per image)",
        [
            "model",
            "set",
            "n",
            "log p(z) mean",
            "log|det J| mean",
            "log p(z) gap (set - in-test)",
            "log|det J| gap (set - in-test)",
        ],
        rows,
        caption="log p(x) = log p(z) + log|det J| on the model's input scale; a positive gap "
        "favours the set over the in-distribution test images. The paper found the volume "
        "term carries Glow's preference for SVHN over CIFAR-10.",
    )


def cifar10_finding(
    rows: list[list[Cell]], skipped: Sequence[tuple[str, str]], in_label: str
) -> str:
    """Per OOD set: the models that give it higher likelihood than the in-distribution test."""
    by_set: dict[str, list[str]] = {}
    for row in rows:
        label, model, auroc, relation = str(row[0]), str(row[1]), row[7], row[11]
        assert isinstance(auroc, float)
        by_set.setdefault(label, []).append(f"{model} {relation} ({auroc:.2f})")
    parts = [f"{label}: {', '.join(v)}" for label, v in sorted(by_set.items())]
    text = (
        f"Likelihood of each OOD set relative to {in_label} (higher/lower, AUROC of -log p): "
        + "; ".join(parts)
        + "."
    )
    if skipped:
        text += f" Skipped (files absent): {', '.join(n for n, _ in skipped)}."
    return text
