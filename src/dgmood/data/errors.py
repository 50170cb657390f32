"""Errors a user can cause with data; each says what to do next."""

from __future__ import annotations


class DataError(RuntimeError):
    """Base class of every data problem a user can fix."""


class DatasetNotFoundError(DataError):
    """The dataset's files are not in the data directory."""


class CorruptDatasetError(DataError):
    """A dataset file exists but fails its checksum or cannot be parsed."""
