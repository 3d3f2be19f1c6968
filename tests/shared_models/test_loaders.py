"""The built-in loaders (shared_models/loaders): every bad input gets a clear DatasetError that says the fix."""

from pathlib import Path

import numpy as np
import pytest

from shared_models.data import load_csv
from shared_models.errors import DatasetError, SchemaMismatchError
from shared_models.loaders import (
    load_csv_data,
    load_image_folder,
    load_npz,
    load_ts,
    load_windows,
    read_ts,
    sliding_windows,
)

EXAMPLES = Path(__file__).parents[2] / "simulations" / "examples"
BASIC_MOTIONS = EXAMPLES / "iot-sensors" / "data" / "BasicMotions_TRAIN.ts"


# --- CSV --------------------------------------------------------------------------------------------------------


def test_csv_saved_with_a_utf8_bom_reads_its_first_column_name(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("age,chol,label\r\n61,230,1\r\n47,199,0\r\n".encode("utf-8-sig"))
    data = load_csv(path)
    assert data.x.tolist() == [[61.0, 230.0], [47.0, 199.0]]
    assert data.y.tolist() == [1, 0]
    x, y = load_csv_data(str(path), label_column="age")  # the first column is found by its name, BOM and all
    assert y.tolist() == [61, 47]


def test_non_utf8_csv_names_the_file_the_offset_and_the_encoding_option(tmp_path):
    path = tmp_path / "zurich.csv"
    path.write_bytes(b"name,label\n" + "Müller".encode("latin-1") + b",1\n")
    with pytest.raises(DatasetError) as e:
        load_csv(path, label_column="label")
    message = str(e.value)
    assert str(path) in message and "offset 12" in message and "line 2" in message
    assert "data-options.encoding=latin-1" in message
    with pytest.raises(DatasetError, match="'Müller' is not a number"):  # named, it reads (and then parses)
        load_csv(path, encoding="latin-1")
    with pytest.raises(DatasetError, match="unknown text encoding 'latin-9000'"):
        load_csv(path, encoding="latin-9000")


def test_header_row_read_as_data_points_at_csv_header(tmp_path):
    path = tmp_path / "node.csv"
    path.write_text("age,sex,label\n63,1,0\n41,0,1\n")
    with pytest.raises(DatasetError, match="line 1 looks like a header .*set csv-header = true") as e:
        load_csv(path, header=False, label_column="2")
    assert "is not a number" not in str(e.value)
    assert load_csv(path, header=True).x.shape == (2, 2)


def test_data_row_read_as_header_points_at_csv_header_false(tmp_path):
    path = tmp_path / "node.csv"
    path.write_text("63,1,0\n41,0,1\n")
    with pytest.raises(DatasetError, match="looks like data, not names: set csv-header = false"):
        load_csv(path, header=True)
    with pytest.raises(SchemaMismatchError, match="set csv-header = false"):
        load_csv(path, header=True, columns=["age", "sex", "label"])


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_delimiter_is_detected(tmp_path, delimiter):
    path = tmp_path / "node.csv"
    path.write_text(delimiter.join(["a", "b", "label"]) + "\n" + delimiter.join(["1.5", "2", "1"]) + "\n")
    assert load_csv(path).x.tolist() == [[1.5, 2.0]]


def test_delimiter_can_be_named(tmp_path):
    path = tmp_path / "node.csv"
    path.write_text("a|b|label\n1|2|0\n3|4|1\n")
    x, y = load_csv_data(str(path), delimiter="|")
    assert x.tolist() == [[1.0, 2.0], [3.0, 4.0]] and y.tolist() == [0, 1]
    with pytest.raises(DatasetError, match=r"its columns are \['a\|b\|label'\]"):  # the named one is used
        load_csv_data(str(path), delimiter="tab")
    with pytest.raises(DatasetError, match="one character"):
        load_csv_data(str(path), delimiter=";;")


def test_node_with_a_subset_of_the_labels_numbers_them_as_the_federation(tmp_path):
    path = tmp_path / "small-hospital.csv"
    path.write_text("a,label\n1,0\n2,1\n3,0\n")
    assert load_csv(path).num_classes == 2  # on its own it would see 2 classes
    assert load_csv(path, num_classes=5).num_classes == 5  # the federation's 5
    assert load_csv(path).with_classes(5).num_classes == 5
    path.write_text("a,label\n1,0\n2,7\n")
    with pytest.raises(DatasetError, match=r"line 3: label 7 .* outside the federation's 5 classes"):
        load_csv(path, num_classes=5)
    with pytest.raises(DatasetError, match="label 7 .* outside the federation's 5 classes"):
        load_csv(path).with_classes(5)


def test_unknown_loader_option_suggests_the_right_one(tmp_path):
    with pytest.raises(DatasetError, match="no option 'delimeter'; did you mean data-options.delimiter"):
        load_csv_data(str(tmp_path / "x.csv"), delimeter=";")
    path = tmp_path / "node.csv"
    path.write_text("a,y\n1,0\n")
    assert load_csv_data(str(path), **{"label-column": "y"})[1].tolist() == [0]  # run-config spelling


# --- image folder -----------------------------------------------------------------------------------------------


def _png(path: Path, size=(6, 4), value=0, mode="RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=value if mode == "L" else (value, value, value)).save(path)


def test_image_folder_with_two_classes(tmp_path):
    for i in range(3):
        _png(tmp_path / "dog" / f"{i}.png", value=255)
        _png(tmp_path / "cat" / f"{i}.png", value=0)
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_image_folder(str(tmp_path))
    x, y = data
    assert x.shape == (6, 3, 4, 6) and x.dtype == np.float32
    assert data.classes == ("cat", "dog")  # sorted by folder name, recorded
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    assert x[y == 1].min() == 1.0 and x[y == 0].max() == 0.0
    gray, _ = load_image_folder(str(tmp_path), channels=1, size="8x5")
    assert gray.shape == (6, 1, 5, 8)


def test_image_folder_missing_a_class_keeps_the_federations_numbering(tmp_path):
    _png(tmp_path / "dog" / "0.png")
    data = load_image_folder(str(tmp_path), classes="cat,dog,horse")
    assert data.y.tolist() == [1] and data.classes == ("cat", "dog", "horse")
    _png(tmp_path / "zebra" / "0.png")
    with pytest.raises(DatasetError, match="class 'zebra' is not one of the federation's classes"):
        load_image_folder(str(tmp_path), classes="cat,dog,horse")


def test_image_folder_errors_say_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="has no subfolders"):
        load_image_folder(str(tmp_path))
    _png(tmp_path / "a" / "0.png", size=(4, 4))
    _png(tmp_path / "b" / "0.png", size=(8, 8))
    with pytest.raises(DatasetError, match="set data-options.size"):
        load_image_folder(str(tmp_path))
    assert load_image_folder(str(tmp_path), size=4)[0].shape == (2, 3, 4, 4)
    (tmp_path / "b" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*1\.png"):
        load_image_folder(str(tmp_path), size=4)
    with pytest.raises(DatasetError, match="channels must be 1"):
        load_image_folder(str(tmp_path), channels=2)


# --- npz --------------------------------------------------------------------------------------------------------


def test_npz_arrays_with_default_and_named_keys(tmp_path):
    path = tmp_path / "node.npz"
    np.savez(path, x=np.ones((4, 3), np.float64), y=np.array([0, 1, 1, 0]))
    x, y = load_npz(str(path))
    assert x.dtype == np.float32 and x.shape == (4, 3) and y.dtype == np.int64
    np.savez(path, features=np.zeros((2, 5)), target=np.array(["sick", "well"]))
    data = load_npz(str(path), x_key="features", y_key="target", classes="well,sick")
    assert data.y.tolist() == [1, 0] and data.classes == ("well", "sick")
    with pytest.raises(DatasetError, match=r"no array 'x'; it holds \['features', 'target'\]"):
        load_npz(str(path))


def test_npz_refuses_mismatched_lengths_and_pickles(tmp_path):
    path = tmp_path / "node.npz"
    np.savez(path, x=np.ones((4, 3)), y=np.array([0, 1]))
    with pytest.raises(DatasetError, match="4 samples but 'y' 2 labels"):
        load_npz(str(path))
    np.savez(path, x=np.ones((2, 3)), y=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DatasetError, match="without pickling"):
        load_npz(str(path))
    np.savez(path, x=np.ones((2, 3)), y=np.array([0.5, 1.0]))
    with pytest.raises(DatasetError, match="whole numbers"):
        load_npz(str(path))


# --- sensor series ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("steps", "window", "stride"), [(10, 4, 2), (10, 4, 4), (100, 50, 10), (3, 4, 1)])
def test_window_count(steps, window, stride):
    x, y = sliding_windows(np.zeros((steps, 2)), np.zeros(steps, np.int64), window=window, stride=stride)
    expected = max(0, (steps - window) // stride + 1)
    assert x.shape == (expected, 2, window) and len(y) == expected


def test_window_labels_majority_and_last():
    labels = np.array([0, 0, 0, 1, 1, 2])
    values = np.arange(12.0).reshape(6, 2)
    x, majority = sliding_windows(values, labels, window=3, stride=1)
    _, last = sliding_windows(values, labels, window=3, stride=1, label="last")
    assert majority.tolist() == [0, 0, 1, 1]
    assert last.tolist() == [0, 1, 1, 2]
    assert x[1].tolist() == [[2.0, 4.0, 6.0], [3.0, 5.0, 7.0]]  # channels first: (channels, steps)


def test_windows_over_a_sensor_csv_stay_within_a_recording(tmp_path):
    path = tmp_path / "watch.csv"
    rows = [f"{'a' if t < 6 else 'b'},{t},{-t},{'walk' if t % 6 < 4 else 'run'}" for t in range(12)]
    path.write_text("session,ax,ay,activity\n" + "\n".join(rows) + "\n")
    data = load_windows(str(path), window=4, stride=2, label_column="activity", group_column="session")
    assert data.x.shape == (4, 2, 4)  # 2 windows per 6-step session; none crosses from a to b
    assert data.x[:, 0, 0].tolist() == [0.0, 2.0, 6.0, 8.0]
    assert data.classes == ("run", "walk")
    assert data.y.tolist() == [1, 0, 1, 0]  # [0..3] all walk; [2..5] walk, walk, run, run -> tie -> run (id 0)
    pinned = load_windows(
        str(path), window=4, stride=2, label_column="activity", columns="ax,ay", classes="walk,run,sit"
    )
    assert pinned.classes == ("walk", "run", "sit")
    with pytest.raises(DatasetError, match="needs data-options.window"):
        load_windows(str(path), label_column="activity")
    with pytest.raises(DatasetError, match="no column 'label'"):
        load_windows(str(path), window=4)


def test_ts_reader_on_basic_motions():
    x, labels, names = read_ts(BASIC_MOTIONS)
    assert x.shape == (40, 6, 100) and x.dtype == np.float32
    assert names == ("Standing", "Running", "Walking", "Badminton")
    data = load_ts(str(BASIC_MOTIONS))
    assert data.classes == names and sorted(set(data.y.tolist())) == [0, 1, 2, 3]
    assert [names[i] for i in data.y[:3]] == labels[:3]
    windows = load_ts(str(BASIC_MOTIONS), window=50, stride=25)
    assert windows.x.shape == (40 * 3, 6, 50)
    assert windows.y.tolist() == np.repeat(data.y, 3).tolist()


def test_ts_missing_values_unequal_lengths_and_bad_files(tmp_path):
    path = tmp_path / "small.ts"
    path.write_text("# a comment\n@problemName small\n@classLabel true up down\n@data\n1,2,?:4,5,6:up\n1,2:3,4:down\n")
    with pytest.raises(DatasetError, match="set data-options.length"):
        read_ts(path)
    x, labels, names = read_ts(path, length=3)
    assert x[0, 0].tolist() == [1.0, 2.0, 1.5]  # ? -> the case's mean
    assert x[1, 1].tolist() == [3.0, 4.0, 4.0]  # padded with its last value
    assert labels == ["up", "down"] and names == ("up", "down")
    path.write_text("@problemName small\n@classLabel false\n@data\n1,2:3\n")
    with pytest.raises(DatasetError, match="needs the labels"):
        read_ts(path)
    path.write_text("@problemName small\n@classLabel true a\n")
    with pytest.raises(DatasetError, match="no @data line"):
        read_ts(path)


# --- through the registry, as a run config names them -----------------------------------------------------------


def test_builtin_loaders_resolve_by_short_name_with_run_config_options(tmp_path):
    from shared_models.registry import resolve_loader

    data = resolve_loader("ts").load(str(BASIC_MOTIONS), {"window": 50, "stride": 50})
    assert data.input_shape == (6, 50) and len(data) == 80 and data.num_classes == 4
    for i in range(2):
        _png(tmp_path / "imgs" / "cat" / f"{i}.png")
    _png(tmp_path / "imgs" / "dog" / "0.png")
    images = resolve_loader("image-folder").load(str(tmp_path / "imgs"), {"channels": 1}, num_classes=3)
    assert images.input_shape == (1, 4, 6) and images.num_classes == 3 and images.y.tolist() == [0, 0, 1]
    path = tmp_path / "watch.csv"
    path.write_text("ax,label\n" + "\n".join(f"{t},{t // 4}" for t in range(8)) + "\n")
    windows = resolve_loader("windows").load(str(path), {"window": 4, "label": "last"})
    assert windows.y.tolist() == [0, 1] and windows.num_classes == 2
