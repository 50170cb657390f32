"""Training: one loop for every model, checkpoints and run directories."""

from dgmood.data.loading import DataSources
from dgmood.runs import LoadedRun, RunDirError, load_run
from dgmood.training.loop import TrainingDivergedError, TrainResult, train

__all__ = [
    "DataSources",
    "LoadedRun",
    "RunDirError",
    "TrainResult",
    "TrainingDivergedError",
    "load_run",
    "train",
]
