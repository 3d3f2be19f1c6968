"""The family of errors raised by ``shared_models``, and (re-exported) fedge's one exception base.

Every error fedge raises on purpose derives from :class:`FedgeError`, so the command line can show its
message (what happened, why, and the fix) instead of a traceback. It is defined in :mod:`edge.agent.errors`, the
bottom layer that every install has (a device's ``fedge[agent]`` has no ``shared_models`` dependencies such as
torch), and re-exported here for the server, the clients and the commands.
"""

from __future__ import annotations

from edge.agent.errors import FedgeError as FedgeError  # re-exported: the root lives at the bottom layer


class SharedModelsError(FedgeError):
    """Base of the errors raised by ``shared_models``."""


class UnknownModelError(SharedModelsError):
    """A model name that is not in the registry."""


class ModelWidthError(SharedModelsError):
    """A width multiplier a model cannot be built at (not a positive number, or a model that does not scale)."""


class WeightsMismatchError(SharedModelsError):
    """Arrays that do not fit a model (missing, extra or differently shaped tensors)."""


class DatasetError(SharedModelsError):
    """A data set that cannot be loaded: unknown name, missing file, malformed contents."""


class SchemaMismatchError(DatasetError):
    """A node's table whose columns do not match the federation's schema (names, count, or the model's inputs)."""


class PartitionError(SharedModelsError):
    """A partitioning request that cannot be met (bad alpha, more partitions than samples, ...)."""
