"""A helper for tests that train one real client (no fixture): the settings of one digits node, with privacy as
the test chooses. Used by the client's privacy tests and by the server's privacy-record test."""

from __future__ import annotations

import torch

from client.config import ClientConfig, PrivacyConfig
from shared_models.federation import FederatedData


def digits_client(privacy: PrivacyConfig, **overrides) -> ClientConfig:
    """Node 0 of 4 on the digits data, one local epoch of batch 64 at learning rate 0.5 on the CPU; ``overrides``
    replace any setting (``model="digits-mlp"``)."""
    settings = dict(
        model="digits-cnn",
        data=FederatedData(dataset="digits"),
        partition_id=0,
        num_partitions=4,
        node_data_path="",
        local_epochs=1,
        batch_size=64,
        learning_rate=0.5,
        momentum=0.0,
        privacy=privacy,
        device=torch.device("cpu"),
    )
    settings.update(overrides)
    return ClientConfig(**settings)
