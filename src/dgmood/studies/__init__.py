"""Studies: one module per question of the paper or the post; ``dgmood reproduce NAME``.

Importing this package registers the built-in studies; a new study is one module here plus
one import line below.
"""

from dgmood.studies.base import (
    Study,
    StudyContext,
    register_study,
    study_class,
    study_names,
)
from dgmood.studies.runner import evaluate_run, run_study

# each module registers its study on import (order = the order `dgmood studies` lists them)
from dgmood.studies import fashion_mnist  # noqa: E402,F401  isort: skip
from dgmood.studies import chicken  # noqa: E402,F401  isort: skip
from dgmood.studies import pairs  # noqa: E402,F401  isort: skip
from dgmood.studies import cifar10  # noqa: E402,F401  isort: skip
from dgmood.studies import decomposition  # noqa: E402,F401  isort: skip
from dgmood.studies import moments  # noqa: E402,F401  isort: skip
from dgmood.studies import graying  # noqa: E402,F401  isort: skip
from dgmood.studies import over_training  # noqa: E402,F401  isort: skip
from dgmood.studies import nalisnick2019  # noqa: E402,F401  isort: skip
from dgmood.studies import benchmark  # noqa: E402,F401  isort: skip
from dgmood.studies import cv_glow  # noqa: E402,F401  isort: skip
from dgmood.studies import chicken_grid  # noqa: E402,F401  isort: skip

__all__ = [
    "Study",
    "StudyContext",
    "evaluate_run",
    "register_study",
    "run_study",
    "study_class",
    "study_names",
]
