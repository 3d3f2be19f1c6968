"""Knowledge distillation: train a smaller student on a teacher's softened outputs (Hinton et al., 2015).

The loss is ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels)``;
the ``T^2`` keeps the soft term's gradients on the scale of the hard one whatever the temperature.

The student is either a model the user names (a built-in name or a second factory's import path,
``my_project.task:build_student``) or the teacher's own factory at a width multiplier (``width=0.4``: 40% of the
channels and hidden units, about 16% of the parameters for ``mnist-cnn``) when that factory takes ``width``; the
registry (:func:`shared_models.registry.resolve_model`) builds both.

>>> from shared_models.models import build_model, count_parameters
>>> teacher = build_model("mnist-cnn", input_shape=(1, 28, 28), num_classes=10, seed=0)
>>> student = make_student("mnist-cnn", input_shape=(1, 28, 28), num_classes=10, width=0.4)
>>> count_parameters(student) < count_parameters(teacher) / 4
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.compress.errors import DistillationError
from shared_models.data import ArrayDataset
from shared_models.errors import SharedModelsError
from shared_models.models import count_parameters
from shared_models.registry import resolve_model
from shared_models.training import evaluate, predict

#: The student's width multiplier of the teacher when neither a width nor a student model is given.
DEFAULT_STUDENT_WIDTH = 0.4


def make_student(
    teacher: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    student: str | None = None,
    width: float | None = None,
    seed: int = 0,
    options: dict[str, object] | None = None,
    project_dir: str | None = None,
) -> nn.Module:
    """A fresh student: ``student`` (a built-in name or a factory's import path), or the ``teacher`` factory at
    ``width`` (0 < w < 1) with the teacher's ``options``, where that factory takes ``width``."""
    shape = tuple(int(d) for d in input_shape)
    if student is not None:
        if width is not None:
            raise DistillationError("give either a student model or a width multiplier, not both")
        try:
            return resolve_model(student, project_dir=project_dir).build(shape, num_classes, seed=seed)
        except SharedModelsError as e:
            raise DistillationError(f"cannot build the student {student!r}: {e}") from e
    if width is None:
        width = DEFAULT_STUDENT_WIDTH
    if not (0.0 < float(width) < 1.0) or math.isnan(float(width)):
        raise DistillationError(f"the student's width multiplier must be in (0, 1), got {width!r}")
    try:
        factory = resolve_model(teacher, project_dir=project_dir)
        if not factory.accepts_width:
            raise DistillationError(
                f"the model factory {factory.import_path} takes no width multiplier, so no narrower student can be "
                "built from it: name a student factory (fedge package --student my_project.task:build_student) or "
                "give the factory a width parameter (width: float = 1.0, scaling its channels and units)"
            )
        return factory.build(shape, num_classes, dict(options or {}), width=float(width), seed=seed)
    except SharedModelsError as e:
        raise DistillationError(
            f"cannot build {teacher!r} at width {float(width):g} as the student: {e}; name a student model instead"
        ) from e


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)
    if alpha >= 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


@dataclass(frozen=True)
class DistillationResult:
    student: nn.Module
    teacher_parameters: int
    student_parameters: int
    temperature: float
    alpha: float
    epochs: int
    final_loss: float
    teacher_accuracy: float | None = None
    student_accuracy: float | None = None

    @property
    def parameter_ratio(self) -> float:
        return self.student_parameters / self.teacher_parameters

    @property
    def accuracy_retained(self) -> float | None:
        if self.teacher_accuracy is None or self.student_accuracy is None or not self.teacher_accuracy:
            return None
        return self.student_accuracy / self.teacher_accuracy

    def summary(self) -> dict[str, object]:
        return {
            "teacher-parameters": self.teacher_parameters,
            "student-parameters": self.student_parameters,
            "parameter-ratio": self.parameter_ratio,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "epochs": self.epochs,
            "final-loss": self.final_loss,
            "teacher-accuracy": self.teacher_accuracy,
            "student-accuracy": self.student_accuracy,
            "accuracy-retained": self.accuracy_retained,
        }


def distill(
    teacher: nn.Module,
    student: nn.Module,
    data: ArrayDataset,
    *,
    temperature: float = 4.0,
    alpha: float = 0.7,
    epochs: int = 5,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    test: ArrayDataset | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> DistillationResult:
    """Train ``student`` (in place) on ``teacher``'s soft labels over ``data``; report both on ``test`` if given.

    The teacher's logits are computed once up front (the teacher is frozen and in eval mode).
    """
    if not temperature > 0 or math.isnan(temperature):
        raise DistillationError(f"the temperature must be > 0, got {temperature}; 2-8 is usual")
    if not 0.0 <= alpha <= 1.0:
        raise DistillationError(f"alpha (the weight of the teacher's soft labels) must be in [0, 1], got {alpha}")
    if epochs < 1:
        raise DistillationError(f"distillation needs at least one epoch, got {epochs}")
    if len(data) == 0:
        raise DistillationError("the distillation data set is empty; pass the samples to distil on")
    teacher.eval()
    teacher_logits = predict(teacher, data.x).astype(np.float32)
    if teacher_logits.shape[1] != data.num_classes:
        raise DistillationError(
            f"the teacher has {teacher_logits.shape[1]} outputs but the data has {data.num_classes} classes"
        )
    torch.manual_seed(seed)
    dataset = torch.utils.data.TensorDataset(
        torch.from_numpy(np.ascontiguousarray(data.x)), torch.from_numpy(teacher_logits), torch.from_numpy(data.y)
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    optimizer = torch.optim.Adam(student.parameters(), lr=learning_rate)
    loss_value = float("nan")
    for epoch in range(epochs):
        student.train()
        total, seen = 0.0, 0
        for x, soft, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = distillation_loss(student(x), soft, y, temperature=temperature, alpha=alpha)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(y)
            seen += len(y)
        loss_value = total / seen
        if on_epoch is not None:
            on_epoch(epoch + 1, loss_value)
    student.eval()
    return DistillationResult(
        student=student,
        teacher_parameters=count_parameters(teacher),
        student_parameters=count_parameters(student),
        temperature=float(temperature),
        alpha=float(alpha),
        epochs=epochs,
        final_loss=loss_value,
        teacher_accuracy=evaluate(teacher, test).accuracy if test is not None else None,
        student_accuracy=evaluate(student, test).accuracy if test is not None else None,
    )
