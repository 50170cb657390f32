"""Does a density model give OOD data higher likelihood than its own test data?

The paper's central experiment for one trained model: score the in-distribution train and
test splits and each OOD test set, tabulate bits/dim per set (mean, median, quantiles: a
few extreme images can swamp a mean) with the per-sample breakdown (flows: density term
``log p(z)`` and volume term ``log|det J|``; VAEs: reconstruction and KL), and compare the
registered OOD scores that apply to the model by AUROC / AUPR / FPR@95TPR with bootstrap CIs.

References: Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?", ICLR 2019.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dgmood.evaluation.compare import ScoringOptions, compare_scores, prepare_input
from dgmood.reporting.result import Cell, Figure, Table
from dgmood.runs import LoadedRun
from dgmood.scores.base import Score, ScoreInput, make_score, score_names
from dgmood.scores.density import negative_log_likelihood
from dgmood.studies.base import StudyContext, metrics_table

QUANTILES = (0.05, 0.25, 0.75, 0.95)
TERM_LABELS = {
    "log_pz": "density term log p(z)",
    "log_abs_det_jacobian": "volume term log|det J|",
    "reconstruction": "reconstruction log p(x|z)",
    "kl": "KL(q(z|x) || p(z))",
}


@dataclass(frozen=True)
class SetRole:
    name: str  # dataset name
    split: str
    role: str  # "in-train", "in-test" or "ood"
    limit: int  # images (0 = all)


def select_scores(run: LoadedRun, names: Sequence[str] = ()) -> list[Score]:
    """Scores by name, or every registered score that applies to ``run`` and needs no extra run.

    Scores that need auxiliary runs (a background model, an ensemble) are included only when
    named, since they train models; so are density scores that run the model per image
    (likelihood regret: seconds per image on a CPU).
    """
    if names:
        scores = [make_score(n) for n in names]
        for score in scores:
            if not score.applies_to(run):
                raise ValueError(
                    f"score {score.name!r} does not apply to {run.name} ({run.run_dir})"
                )
        return scores
    candidates = [make_score(n) for n in score_names()]
    return [
        s
        for s in candidates
        if s.applies_to(run)
        and not s.aux_runs(run.config)
        and not (s.uses_model and s.model_kind == "density")
    ]


def distribution_cells(values: np.ndarray, *, std: bool = True) -> list[Cell]:
    """Mean, std (optional), median and the :data:`QUANTILES` of ``values``, as table cells."""
    values = np.asarray(values, dtype=np.float64)
    cells: list[Cell] = [float(values.mean())]
    if std:
        cells.append(float(values.std()))
    cells.append(float(np.median(values)))
    return cells + [float(q) for q in np.quantile(values, QUANTILES)]


def set_summary_table(inputs: dict[str, tuple[str, ScoreInput]]) -> Table:
    """Bits/dim per set (mean, std, median, quantiles) and each term's mean and median."""
    first = next(iter(inputs.values()))[1]
    terms = [k for k in TERM_LABELS if k in first.stats]
    columns = ["set", "role", "n", "bits/dim mean", "std", "median"]
    columns += [f"q{int(q * 100):02d}" for q in QUANTILES]
    for term in terms:
        columns += [f"{TERM_LABELS[term]} mean (nats)", f"{TERM_LABELS[term]} median (nats)"]
    rows: list[list[Cell]] = []
    for label, (role, data) in inputs.items():
        bpd = negative_log_likelihood(data.stats)
        row: list[Cell] = [label, role, len(data), *distribution_cells(bpd)]
        for term in terms:
            values = data.stat(term)
            row += [float(values.mean()), float(np.median(values))]
        rows.append(row)
    return Table(
        name="bits_per_dim",
        title="Bits per dimension of each set",
        columns=columns,
        rows=rows,
        caption="Bits/dim (lower = more likely) of the dequantized images; per-sample terms in "
        "nats per image. Medians and quantiles are robust to a few extreme images.",
    )


def likelihood_comparison(
    run: LoadedRun,
    ctx: StudyContext,
    ood: Sequence[str],
    *,
    in_dataset: str | None = None,
    train_limit: int = 10_000,
    scores: Sequence[str] = (),
    scoring: ScoringOptions | None = None,
) -> tuple[dict[str, tuple[str, ScoreInput]], Table, Table, list[Figure], dict[str, object]]:
    """Score the sets under ``run``; returns inputs, the bits/dim and metrics tables, figures."""
    from dgmood.reporting.plots import plot_bpd_histograms, plot_flow_decomposition

    run.density_model()
    scoring = scoring or ScoringOptions(progress=ctx.progress)
    data = run.config.data
    in_name = in_dataset or data.dataset
    plan = [
        SetRole(in_name, data.train_split, "in-train", train_limit),
        SetRole(in_name, data.val_split, "in-test", ctx.limit),
        *[SetRole(name, "test", "ood", ctx.limit) for name in ood],
    ]
    chosen = select_scores(run, scores)
    aux_runs = {
        role: ctx.obtain(config)
        for score in chosen
        for role, config in score.aux_runs(run.config).items()
    }
    inputs: dict[str, tuple[str, ScoreInput]] = {}
    with ctx.timed("score sets"):
        for entry in plan:
            imageset = ctx.load_set(entry.name, entry.split, data, entry.limit)
            inputs[imageset.label] = (entry.role, prepare_input(run, imageset, aux_runs, scoring))
    by_role = {
        role: [lab for lab, (r, _) in inputs.items() if r == role]
        for role in ("in-train", "in-test", "ood")
    }
    train_input = inputs[by_role["in-train"][0]][1]
    in_test = inputs[by_role["in-test"][0]][1]
    with ctx.timed("compare scores"):
        comparisons = compare_scores(
            chosen, in_test, {label: inputs[label][1] for label in by_role["ood"]}, train_input
        )
    figures_dir = ctx.out_dir
    shown = {
        label: negative_log_likelihood(d.stats)
        for label, (r, d) in inputs.items()
        if r != "in-train"
    }
    figures = [
        Figure(
            "bpd_histogram",
            "Bits/dim of in-distribution test and OOD sets",
            plot_bpd_histograms(
                shown, figures_dir / "bpd_histogram.png", title=f"{run.name} trained on {in_name}"
            ).name,
        )
    ]
    if "log_pz" in in_test.stats:
        figures.append(
            Figure(
                "decomposition",
                "Density term log p(z) vs volume term log|det J|",
                plot_flow_decomposition(
                    {label: inputs[label][1].stats for label in shown},
                    figures_dir / "decomposition.png",
                ).name,
            )
        )
    data_out: dict[str, object] = {
        "metrics": [
            {"score": c.score, "ood": c.ood_label, **c.metrics.to_dict()} for c in comparisons
        ],
        "in_dataset": in_name,
        "model": run.name,
    }
    return inputs, set_summary_table(inputs), metrics_table(comparisons), figures, data_out


def likelihood_finding(run: LoadedRun, in_name: str, metrics: Table) -> str:
    """One sentence: does -log p(x) rank the OOD set as *more* likely (AUROC < 0.5)?"""
    sentences = []
    for row in metrics.rows:
        score, _, ood, auroc, low, high = row[:6]
        if score != "nll":
            continue
        assert isinstance(auroc, float)
        verdict = "higher" if auroc < 0.5 else "lower"
        sentences.append(
            f"{run.name} trained on {in_name} gives {ood} {verdict} likelihood than its own "
            f"test set: AUROC of -log p(x) {auroc:.3f} [{low:.3f}, {high:.3f}]"
            + (" (below 0.5: the paper's failure is reproduced)" if auroc < 0.5 else "")
        )
    return "; ".join(sentences) + "." if sentences else "No likelihood score was compared."
