import numpy as np
import pytest

from edge.compress import CalibrationError, CalibrationSet
from shared_models.data import ArrayDataset

SHAPE = (1, 8, 8)


def test_samples_of_a_data_set_become_a_calibration_set():
    data = ArrayDataset("d", np.random.default_rng(0).random((50, *SHAPE), dtype=np.float32), np.zeros(50, int), 10)
    calib = CalibrationSet.from_dataset(data, input_shape=SHAPE, limit=20)
    assert len(calib) == 20 and calib.input_shape == SHAPE
    assert [s.shape for s in calib.samples()][:2] == [(1, *SHAPE), (1, *SHAPE)]


def test_rejects_an_empty_calibration_set():
    with pytest.raises(CalibrationError, match="is empty"):
        CalibrationSet.from_array(np.zeros((0, *SHAPE), np.float32), input_shape=SHAPE)


def test_rejects_samples_of_the_wrong_shape():
    with pytest.raises(CalibrationError, match=r"shape \(1, 28, 28\) but the model takes \(1, 8, 8\)"):
        CalibrationSet.from_array(np.zeros((4, 1, 28, 28), np.float32), input_shape=SHAPE)


def test_rejects_non_finite_samples():
    x = np.zeros((4, *SHAPE), np.float32)
    x[2, 0, 0, 0] = np.nan
    with pytest.raises(CalibrationError, match="NaN"):
        CalibrationSet.from_array(x, input_shape=SHAPE)


def test_reads_npy_and_npz_files(tmp_path):
    x = np.ones((6, *SHAPE), np.float32)
    np.save(tmp_path / "c.npy", x)
    np.savez(tmp_path / "c.npz", x=x, y=np.zeros(6))
    assert len(CalibrationSet.from_file(tmp_path / "c.npy", input_shape=SHAPE)) == 6
    assert len(CalibrationSet.from_file(tmp_path / "c.npz", input_shape=SHAPE, limit=3)) == 3


def test_rejects_missing_unreadable_and_ambiguous_files(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        CalibrationSet.from_file(tmp_path / "none.npy", input_shape=SHAPE)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(CalibrationError, match="cannot read"):
        CalibrationSet.from_file(tmp_path / "bad.npy", input_shape=SHAPE)
    np.savez(tmp_path / "two.npz", a=np.zeros((2, *SHAPE)), b=np.zeros((2, *SHAPE)))
    with pytest.raises(CalibrationError, match="name the samples 'x'"):
        CalibrationSet.from_file(tmp_path / "two.npz", input_shape=SHAPE)
