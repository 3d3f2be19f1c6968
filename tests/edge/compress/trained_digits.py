"""A digits-cnn trained for a moment on scikit-learn's digits (about a second), shared by the compress and export
tests: small enough to convert quickly, trained enough (about 0.95 accuracy) for agreement to mean something."""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from shared_models.data import ArrayDataset, load_digits, train_test_split
from shared_models.models import build_model
from shared_models.training import train_epochs

INPUT_SHAPE = (1, 8, 8)


@functools.cache
def digits_split() -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) of scikit-learn's digits, 80/20, seed 0."""
    return train_test_split(load_digits(), test_fraction=0.2, seed=0)


@functools.cache
def _trained() -> nn.Module:
    train, _ = digits_split()
    model = build_model("digits-cnn", input_shape=INPUT_SHAPE, num_classes=10, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    train_epochs(model, train.loader(64, shuffle=True), optimizer=optimizer, criterion=nn.CrossEntropyLoss(), epochs=6)
    return model.eval()


def trained_digits_cnn() -> nn.Module:
    """A fresh copy each call, so a test may change it."""
    return copy.deepcopy(_trained())
