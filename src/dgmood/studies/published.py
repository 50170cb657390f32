"""Published AUROCs beside ours: the cells of the benchmark grid that papers report.

Each :class:`PublishedCell` names the paper, the table and the row/column a number comes
from, and the grid cell it corresponds to (trained on, OOD set, our model family and our
closest score). A number is entered only when it was read from the paper itself; a cell
whose number could not be looked up on the machine that wrote this module keeps
``auroc=None`` and appears in the report as an empty cell with its source, so a reader knows
where to look, and nobody mistakes a guess for a published value.

Status (the session that wrote this had no network beyond the project's search tool, whose
copies of these papers stop before their tables): none of the AUROCs below could be read,
so every ``auroc`` is None. To fill one, read the table named in ``where`` and set
``auroc``; the benchmark's ``published`` table shows it beside the measured AUROC.

References: Serra, Alvarez, Gomez, Slizovskaia, Nunez & Luque, "Input complexity and
out-of-distribution detection with likelihood-based generative models", ICLR 2020, Table 1
(AUROC of the negative log-likelihood L and of their score S, Glow and PixelCNN++ trained on
CIFAR-10); Ren, Liu, Fertig, Snoek, Poplin, DePristo, Dillon & Lakshminarayanan,
"Likelihood Ratios for Out-of-Distribution Detection", NeurIPS 2019 (AUROC of the likelihood
and of the likelihood ratio, PixelCNN++ on Fashion-MNIST -> MNIST and CIFAR-10 -> SVHN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dgmood.reporting.result import Cell, Table

SERRA = "Serra et al., ICLR 2020"
REN = "Ren et al., NeurIPS 2019"


@dataclass(frozen=True)
class PublishedCell:
    """One published AUROC and the grid cell it belongs to."""

    paper: str  # short citation (see the module's References)
    where: str  # table and row/column in the paper
    in_dataset: str  # trained on (dgmood dataset name)
    ood: str  # OOD set (dgmood dataset name)
    model: str  # our model family
    score: str  # our closest score
    auroc: float | None = None  # None: not read from the paper (see the module doc)
    note: str = ""  # how the paper's setting differs from ours


# Serra et al. 2020, Table 1: rows are OOD sets, columns Glow / PixelCNN++ x L / S.
# Their "TrafficSign" is GTSRB; their S uses the compressor named in that table's caption
# (our complexity-png is the PNG variant; the paper also reports JPEG2000 and FLIF).
_SERRA_ROWS = {
    "constant": "Constant",
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "gtsrb": "TrafficSign",
    "noise": "Noise",
}
_SERRA_MODELS = {"glow": "Glow", "pixelcnnpp": "PixelCNN++"}
_SERRA_SCORES = {
    "nll": ("L", ""),
    "complexity-png": ("S", "their S uses the compressor of Table 1's caption"),
}

PUBLISHED_AUROC: tuple[PublishedCell, ...] = (
    *(
        PublishedCell(
            SERRA,
            f"Table 1, row {row}, column {model_title} {column}",
            "cifar10",
            ood,
            model,
            score,
            None,
            note,
        )
        for ood, row in _SERRA_ROWS.items()
        for model, model_title in _SERRA_MODELS.items()
        for score, (column, note) in _SERRA_SCORES.items()
    ),
    PublishedCell(
        REN,
        "image experiments, Fashion-MNIST vs MNIST, likelihood ratio (PixelCNN++)",
        "fashion-mnist",
        "mnist",
        "pixelcnnpp",
        "likelihood-ratio",
        None,
        "their mutation rate and L2 were tuned; ours are fixed defaults (docs/scores.md)",
    ),
    PublishedCell(
        REN,
        "image experiments, CIFAR-10 vs SVHN, likelihood ratio (PixelCNN++)",
        "cifar10",
        "svhn",
        "pixelcnnpp",
        "likelihood-ratio",
        None,
        "their mutation rate and L2 were tuned; ours are fixed defaults (docs/scores.md)",
    ),
)


@dataclass(frozen=True)
class MeasuredAUROC:
    """One measured grid cell: what :func:`published_table` matches against."""

    in_dataset: str
    ood: str  # dataset name (an OOD label such as "mnist-test" is matched by its name)
    model: str
    score: str
    auroc: float
    low: float
    high: float


def _ood_name(label: str) -> str:
    """``mnist-test`` -> ``mnist``; a name without a split suffix is returned as is."""
    return label.removesuffix("-test")


def published_table(measured: Sequence[MeasuredAUROC]) -> Table | None:
    """The published cells whose (trained on, OOD set, model) the grid measured, with ours
    beside them (None when the grid has no such pair)."""
    ours = {(m.in_dataset, _ood_name(m.ood), m.model, m.score): m for m in measured}
    pairs = {(m.in_dataset, _ood_name(m.ood), m.model) for m in measured}
    rows: list[list[Cell]] = []
    for cell in PUBLISHED_AUROC:
        if (cell.in_dataset, cell.ood, cell.model) not in pairs:
            continue
        m = ours.get((cell.in_dataset, cell.ood, cell.model, cell.score))
        rows.append(
            [
                cell.in_dataset,
                cell.ood,
                cell.model,
                cell.score,
                m.auroc if m else None,
                m.low if m else None,
                m.high if m else None,
                cell.auroc,
                f"{cell.paper}, {cell.where}",
                cell.note,
            ]
        )
    if not rows:
        return None
    return Table(
        name="published",
        title="Measured AUROC beside the published one, where a paper reports the cell",
        columns=[
            "in-distribution",
            "OOD",
            "model",
            "score",
            "AUROC (ours)",
            "AUROC 95% CI low",
            "AUROC 95% CI high",
            "AUROC (published)",
            "source",
            "note",
        ],
        rows=rows,
        caption="Published: Serra et al., 'Input complexity and out-of-distribution detection "
        "with likelihood-based generative models', ICLR 2020, Table 1 (L = negative "
        "log-likelihood, S = their score; TrafficSign = GTSRB); Ren et al., 'Likelihood Ratios "
        "for Out-of-Distribution Detection', NeurIPS 2019. An empty published cell: the "
        "number was not read from the paper on the machine that ran this (no copy of its "
        "tables was reachable); the source column says where it is. Our models are CPU-sized "
        "and our CIFAR-10 test set may be its first 1,000 images: compare rankings, not "
        "decimals.",
    )
