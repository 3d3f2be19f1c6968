"""Is the artifact faithful? Compare its outputs with the float PyTorch model's on the same inputs.

- ``max-abs-diff`` / ``mean-abs-diff``: of the logits, over the test samples (after dequantizing an int8 output);
- ``top1-agreement``: the fraction of samples where the artifact and the float model pick the same class;
- ``accuracy``: of the artifact on the test split, next to the float model's (``reference-accuracy``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from edge.export.errors import VerificationError
from edge.export.runtime import ArtifactRunner
from shared_models.data import ArrayDataset
from shared_models.training import predict


@dataclass(frozen=True)
class Verification:
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    accuracy: float
    reference_accuracy: float
    samples: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "max-abs-diff": self.max_abs_diff,
            "mean-abs-diff": self.mean_abs_diff,
            "top1-agreement": self.top1_agreement,
            "accuracy": self.accuracy,
            "reference-accuracy": self.reference_accuracy,
            "test-samples": self.samples,
        }


def compare_logits(logits: np.ndarray, reference_logits: np.ndarray, labels: np.ndarray) -> Verification:
    if logits.shape != reference_logits.shape:
        raise VerificationError(
            f"the artifact returns logits of shape {logits.shape[1:]} but the float model {reference_logits.shape[1:]}"
        )
    diff = np.abs(logits.astype(np.float64) - reference_logits.astype(np.float64))
    predicted, reference = logits.argmax(axis=1), reference_logits.argmax(axis=1)
    return Verification(
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        top1_agreement=float((predicted == reference).mean()),
        accuracy=float((predicted == labels).mean()),
        reference_accuracy=float((reference == labels).mean()),
        samples=len(labels),
    )


def verify_artifact(
    runner: ArtifactRunner,
    reference: nn.Module,
    test: ArrayDataset,
    *,
    reference_logits: np.ndarray | None = None,
) -> Verification:
    """Run ``test`` through the artifact and through ``reference`` (the float PyTorch model) and compare."""
    if len(test) == 0:
        raise VerificationError("the test set is empty; verification needs samples with labels")
    if reference_logits is None:
        reference_logits = predict(reference, test.x)
    return compare_logits(runner.run(test.x), reference_logits, test.y)
