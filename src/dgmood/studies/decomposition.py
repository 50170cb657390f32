"""Where does a model's likelihood gap come from: which term of its log p(x)?

A flow's ``log p(x) = log p(z) + log|det J|`` (density and volume terms); a VAE's ELBO is
its reconstruction term minus its KL; a diffusion model's bound is its prior, diffusion and
reconstruction terms. Any family whose spec lists such terms
(``Capability.TERM_DECOMPOSITION``, ``FamilySpec.decomposition``) works here: for one model
trained on ``in_dataset``, score its test set and each OOD test set (reusing
:func:`likelihood_comparison`), draw the histograms of every term per set over the full
range of the data (nothing clipped), and tabulate each term per set (mean, median,
5/25/75/95% quantiles, nats per image) and the per-term gap OOD minus in-distribution test
as its contribution to log p (mean and median; a subtracted term, a KL, counts negated).
The paper found the volume term carries most of Glow's preference for SVHN over CIFAR-10.

References: Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?",
ICLR 2019 (Section 4, Figure 3: log p(z) and log|det J| histograms for CIFAR-10 vs SVHN).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from dgmood.evaluation.compare import ScoringOptions
from dgmood.models.base import Capability, Term
from dgmood.reporting.analysis_plots import plot_histogram_panels
from dgmood.reporting.result import Cell, Figure, StudyResult, Table
from dgmood.studies.base import Study, StudyContext, register_study
from dgmood.studies.likelihood import QUANTILES, distribution_cells, likelihood_comparison
from dgmood.studies.pictures import run_pictures


@dataclass(frozen=True)
class DecompositionOptions:
    model: str = "glow"  # a model whose terms add up to log p (flows, VAEs, diffusion)
    in_dataset: str = "fashion-mnist"  # trained on
    ood: tuple[str, ...] = ("mnist",)  # OOD test sets
    train_limit: int = 10_000  # in-distribution training images scored
    samples: int = 16  # samples of the model shown in the report (0 = none)


@register_study
class Decomposition(Study[DecompositionOptions]):
    """Histograms and gaps of each term of a model's log p(x) per set."""

    name = "decomposition"
    title = "Which term of log p(x) gives the OOD set its higher likelihood?"
    Options = DecompositionOptions

    def run(self, ctx: StudyContext) -> StudyResult:
        o = self.options
        run = ctx.obtain_model(
            o.model,
            o.in_dataset,
            needs=[Capability.TERM_DECOMPOSITION],
            what="the decomposition of log p(x) into terms",
        )
        decomposition = run.spec.decomposition
        sub = dataclasses.replace(ctx, out_dir=ctx.out_dir / "detail")
        inputs, sets, _, _, _ = likelihood_comparison(
            run,
            sub,
            o.ood,
            train_limit=o.train_limit,
            scores=("nll",),
            scoring=ScoringOptions(progress=ctx.progress),
        )
        shown = {label: data for label, (role, data) in inputs.items() if role != "in-train"}
        in_label = next(label for label, (role, _) in inputs.items() if role == "in-test")
        term_rows: list[list[Cell]] = []
        gap_rows: list[list[Cell]] = []
        for term in decomposition:
            for label, data in shown.items():
                values = data.stat(term.key)
                term_rows.append([term.label, label, len(data), *distribution_cells(values)])
            for label, data in shown.items():
                if label == in_label:
                    continue
                ood_values = term.sign * data.stat(term.key)
                in_values = term.sign * shown[in_label].stat(term.key)
                gap_rows.append(
                    [
                        term.label,
                        label,
                        float(ood_values.mean() - in_values.mean()),
                        float(np.median(ood_values) - np.median(in_values)),
                    ]
                )
        quantile_columns = [f"q{int(q * 100):02d}" for q in QUANTILES]
        terms = Table(
            name="flow_terms",
            title="The terms of log p(x) per set (nats per image)",
            columns=["term", "set", "n", "mean", "std", "median", *quantile_columns],
            rows=term_rows,
            caption=f"log p(x) = {_formula(decomposition)}, in nats per image on the model's "
            "input scale.",
        )
        gaps = Table(
            name="flow_term_gaps",
            title="Per-term gap, OOD minus in-distribution test (nats per image)",
            columns=["term", "OOD set", "gap of means", "gap of medians"],
            rows=gap_rows,
            caption="Each term's contribution to log p(x) (a subtracted term negated); "
            "positive: the term favours the OOD set (gives it the higher likelihood).",
        )
        path = plot_histogram_panels(
            {
                f"{term.label} [nats]": {lab: d.stat(term.key) for lab, d in shown.items()}
                for term in decomposition
            },
            ctx.out_dir / "flow_terms.png",
            title=f"{run.name} trained on {o.in_dataset}",
        )
        figure = Figure(
            "flow_terms",
            "The terms of log p(x) per set",
            path.name,
            "Full data range on every x axis; dashed lines are medians.",
        )
        return self.result(
            ctx,
            decomposition_finding(run.name, in_label, gap_rows),
            tables=[gaps, terms, sets],
            figures=[figure, *run_pictures(ctx, run, shown, samples=o.samples)],
            runs={"model": str(run.run_dir)},
            data={"gaps": gap_rows},
        )


def _formula(terms: tuple[Term, ...]) -> str:
    text = " ".join(f"{'-' if t.sign < 0 else '+'} {t.label}" for t in terms)
    return text.removeprefix("+ ")


def decomposition_finding(model: str, in_label: str, gap_rows: list[list[Cell]]) -> str:
    """Per OOD set: the gap each term contributes and which one carries the largest share."""
    by_set: dict[str, dict[str, float]] = {}
    for term, label, mean_gap, _ in gap_rows:
        assert isinstance(mean_gap, float)
        by_set.setdefault(str(label), {})[str(term)] = mean_gap
    parts = []
    for label, gaps in by_set.items():
        largest = max(gaps, key=lambda term: abs(gaps[term]))
        each = ", ".join(f"{gap:+.1f} nats in {term}" for term, gap in gaps.items())
        parts.append(
            f"{model}: {label} minus {in_label} is {each} (mean gaps; the largest: {largest})"
        )
    return "; ".join(parts) + "."
