"""Datasets, data directories and mirrors, stores, transforms, dequantization, user images."""

from dgmood.data.datasets import DATASETS, ImageSet, dataset_names, load_dataset
from dgmood.data.errors import CorruptDatasetError, DataError, DatasetNotFoundError
from dgmood.data.loading import DataSources
from dgmood.data.transforms import match_format

__all__ = [
    "DATASETS",
    "CorruptDatasetError",
    "DataError",
    "DataSources",
    "DatasetNotFoundError",
    "ImageSet",
    "dataset_names",
    "load_dataset",
    "match_format",
]
