"""The paper's failure: a model trained on FashionMNIST gives MNIST *higher* likelihood.

References: Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?", ICLR 2019
(Figure 1 and Section 3).
"""

from __future__ import annotations

from dataclasses import dataclass

from dgmood.reporting.result import StudyResult
from dgmood.studies.base import Study, StudyContext, register_study
from dgmood.studies.likelihood import likelihood_comparison, likelihood_finding
from dgmood.studies.pictures import run_pictures


@dataclass(frozen=True)
class LikelihoodOptions:
    model: str = "glow"  # density model: glow, cv-glow, realnvp, pixelcnnpp, vae, ...
    in_dataset: str = "fashion-mnist"  # trained on
    ood: tuple[str, ...] = ("mnist",)  # OOD test sets
    train_limit: int = 10_000  # in-distribution training images scored (and used for fits)
    scores: tuple[str, ...] = ()  # OOD scores to compare (empty: every applicable one)
    iwae_k: int = 0  # VAEs: score with the importance-weighted bound (0 = the ELBO)
    samples: int = 16  # samples of the model shown in the report (0 = none)


@register_study
class FashionMnist(Study[LikelihoodOptions]):
    """Train a density model on FashionMNIST; does it prefer MNIST?"""

    name = "fashion-mnist"
    title = "Does a model trained on FashionMNIST give MNIST higher likelihood?"
    Options = LikelihoodOptions

    def run(self, ctx: StudyContext) -> StudyResult:
        from dgmood.evaluation.compare import ScoringOptions

        o = self.options
        run = ctx.obtain_model(o.model, o.in_dataset)
        inputs, sets, metrics, figures, data = likelihood_comparison(
            run,
            ctx,
            o.ood,
            train_limit=o.train_limit,
            scores=o.scores,
            scoring=ScoringOptions(iwae_k=o.iwae_k, progress=ctx.progress),
        )
        shown = {label: d for label, (role, d) in inputs.items() if role != "in-train"}
        figures += run_pictures(ctx, run, shown, samples=o.samples)
        return self.result(
            ctx,
            likelihood_finding(run, o.in_dataset, metrics),
            tables=[sets, metrics],
            figures=figures,
            runs={"model": str(run.run_dir)},
            data=data,
        )
