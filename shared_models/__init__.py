"""Models, data sets, partitioners and train/test loops shared by the client, the server and the edge tools.

Imports only torch and numpy (and scikit-learn for its bundled data sets): never Flower or Opacus.
"""

from shared_models.errors import (
    DatasetError,
    FedgeError,
    PartitionError,
    SchemaMismatchError,
    SharedModelsError,
    UnknownModelError,
    WeightsMismatchError,
)

__all__ = [
    "DatasetError",
    "FedgeError",
    "PartitionError",
    "SchemaMismatchError",
    "SharedModelsError",
    "UnknownModelError",
    "WeightsMismatchError",
]
