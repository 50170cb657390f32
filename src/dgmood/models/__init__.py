"""Model families. Importing this package registers every family with the registry."""

from dgmood.models.base import Classifier, DensityModel, InputSpec, bits_per_dim

__all__ = ["Classifier", "DensityModel", "InputSpec", "bits_per_dim"]

# Each family module registers itself; a family that fails to import is a bug, not optional.
from dgmood.models import flows  # noqa: E402,F401
from dgmood.models.autoregressive import pixelcnnpp  # noqa: E402,F401
from dgmood.models.classifiers import cnn  # noqa: E402,F401
from dgmood.models.diffusion import vdm  # noqa: E402,F401
from dgmood.models.latent import vae  # noqa: E402,F401
