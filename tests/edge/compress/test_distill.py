import pytest
import torch

from edge.compress import DistillationError, distill, make_student
from edge.compress.distill import distillation_loss
from shared_models.data import ArrayDataset
from shared_models.models import build_model, count_parameters
from tests.edge.compress.trained_digits import INPUT_SHAPE, digits_split, trained_digits_cnn


@pytest.mark.parametrize(
    "name, shape, classes",
    [
        ("mnist-cnn", (1, 28, 28), 10),
        ("mnist-small-cnn", (1, 28, 28), 10),
        ("digits-cnn", (1, 8, 8), 10),
        ("tabular-mlp", (30,), 2),
    ],
)
def test_a_width_student_is_smaller_than_its_teacher(name, shape, classes):
    teacher = build_model(name, input_shape=shape, num_classes=classes, seed=0)
    student = make_student(name, input_shape=shape, num_classes=classes, width=0.4)
    assert count_parameters(student) < count_parameters(teacher)
    assert student(torch.zeros(2, *shape)).shape == (2, classes)


def test_the_default_mnist_student_has_at_most_a_quarter_of_the_parameters():
    teacher = build_model("mnist-cnn", input_shape=(1, 28, 28), num_classes=10, seed=0)
    student = make_student("mnist-cnn", input_shape=(1, 28, 28), num_classes=10)
    assert count_parameters(student) <= count_parameters(teacher) / 4


def test_distillation_trains_a_smaller_student_that_learns_from_the_teacher():
    train, test = digits_split()
    teacher = trained_digits_cnn()
    student = make_student("digits-cnn", input_shape=INPUT_SHAPE, num_classes=10, width=0.5, seed=0)
    result = distill(teacher, student, train, temperature=4.0, alpha=0.7, epochs=8, learning_rate=5e-3, test=test)
    assert result.student_parameters < result.teacher_parameters
    assert result.parameter_ratio < 0.6
    assert result.student_accuracy > 0.8
    assert result.teacher_accuracy > 0.9
    assert result.summary()["accuracy-retained"] == pytest.approx(result.student_accuracy / result.teacher_accuracy)


def test_the_soft_loss_is_zero_when_the_student_matches_the_teacher():
    logits = torch.randn(8, 10)
    labels = logits.argmax(1)
    assert float(distillation_loss(logits, logits, labels, temperature=3.0, alpha=1.0)) == pytest.approx(0, abs=1e-6)


def test_a_registry_student_can_be_named():
    student = make_student("digits-cnn", input_shape=(30,), num_classes=2, student="tabular-mlp")
    assert count_parameters(student) > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"alpha": 1.5}, "alpha"),
        ({"epochs": 0}, "at least one epoch"),
    ],
)
def test_rejects_bad_distillation_settings(kwargs, message):
    train, _ = digits_split()
    student = make_student("digits-cnn", input_shape=INPUT_SHAPE, num_classes=10, width=0.5)
    with pytest.raises(DistillationError, match=message):
        distill(trained_digits_cnn(), student, train, **kwargs)


def test_rejects_empty_data_and_unknown_students():
    empty = ArrayDataset("empty", digits_split()[0].x[:0], digits_split()[0].y[:0], 10)
    student = make_student("digits-cnn", input_shape=INPUT_SHAPE, num_classes=10, width=0.5)
    with pytest.raises(DistillationError, match="empty"):
        distill(trained_digits_cnn(), student, empty)
    with pytest.raises(DistillationError, match="unknown model 'resnet'"):
        make_student("digits-cnn", input_shape=INPUT_SHAPE, num_classes=10, student="resnet")
    with pytest.raises(DistillationError, match=r"in \(0, 1\)"):
        make_student("digits-cnn", input_shape=INPUT_SHAPE, num_classes=10, width=1.5)


def test_the_width_student_is_the_registry_model_at_that_width():
    student = make_student("mnist-small-cnn", input_shape=(1, 28, 28), num_classes=10, width=0.5, seed=1)
    built = build_model("mnist-small-cnn", input_shape=(1, 28, 28), num_classes=10, width=0.5, seed=1)
    ours, theirs = student.state_dict(), built.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_teacher_the_registry_cannot_narrow_is_a_distillation_error(monkeypatch):
    import dataclasses

    from shared_models import models

    fixed = dataclasses.replace(models.MODELS["digits-cnn"], scalable=False)
    monkeypatch.setitem(models.MODELS, "digits-cnn", fixed)
    with pytest.raises(DistillationError, match="cannot be built at a width multiplier.*name a student model"):
        make_student("digits-cnn", input_shape=INPUT_SHAPE, num_classes=10)
    assert count_parameters(make_student("digits-cnn", input_shape=INPUT_SHAPE, num_classes=10, student="digits-cnn"))
