"""OOD scores under one contract (:class:`Score`), registered by name; higher = more OOD.

``dgmood scores`` lists them. Importing this package registers the built-in scores; a new
score is one module here plus one import line below.
"""

from dgmood.models.base import ModelKind
from dgmood.scores.base import (
    Score,
    ScoreInput,
    make_score,
    register_score,
    score_class,
    score_names,
)

# each module registers its scores on import (order = the order tables list them)
from dgmood.scores import density  # noqa: E402,F401  isort: skip
from dgmood.scores import classifier  # noqa: E402,F401  isort: skip
from dgmood.scores import likelihood_ratio  # noqa: E402,F401  isort: skip
from dgmood.scores import complexity  # noqa: E402,F401  isort: skip
from dgmood.scores import compressor  # noqa: E402,F401  isort: skip
from dgmood.scores import typicality  # noqa: E402,F401  isort: skip
from dgmood.scores import waic  # noqa: E402,F401  isort: skip
from dgmood.scores import likelihood_regret  # noqa: E402,F401  isort: skip
from dgmood.scores import dose  # noqa: E402,F401  isort: skip
from dgmood.scores import diffusion_ode_nll  # noqa: E402,F401  isort: skip
from dgmood.scores import noise_level_ratio  # noqa: E402,F401  isort: skip
from dgmood.scores import diffusion_reconstruction  # noqa: E402,F401  isort: skip
from dgmood.scores import diffpath  # noqa: E402,F401  isort: skip

__all__ = [
    "ModelKind",
    "Score",
    "ScoreInput",
    "make_score",
    "register_score",
    "score_class",
    "score_names",
]
