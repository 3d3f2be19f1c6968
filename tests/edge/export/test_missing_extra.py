"""`fedge package` without the tflite extra: it says so at once, names the extra and the ONNX-only way out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

_WITHOUT_LITERT = """
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "litert_torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NotInstalled())
import importlib.util
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] == "litert_torch" else _find_spec(name, *a)
sys.argv = ["fedge", *sys.argv[1:]]
from simulations.cli import main
main()
"""


def test_package_without_the_tflite_extra_fails_before_loading_the_run(tmp_path):
    # The run directory does not even exist: the missing exporter is reported first, before any data is read.
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_LITERT, "package", str(tmp_path / "no-such-run")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    message = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr
    assert 'pip install "fedge[tflite]"' in message, message
    assert "-f onnx" in message, message
    assert "Traceback" not in result.stderr


def test_package_options_name_the_missing_exporter(monkeypatch):
    import importlib.util

    from edge.compress.errors import MissingExtraError
    from edge.export.package import PackageOptions

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxscript" else real(n, *a))
    PackageOptions(formats=("tflite",)).check_tools()  # ONNX's tools are not needed for TFLite only
    try:
        PackageOptions(formats=("onnx", "tflite")).check_tools()
    except MissingExtraError as e:
        assert "onnxscript" in str(e) and "fedge[export]" in str(e) and "-f tflite" in str(e)
    else:
        raise AssertionError("a missing onnxscript was not reported")
