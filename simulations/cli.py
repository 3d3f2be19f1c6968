"""The root ``fedge`` command. It only assembles: each package owns the commands that drive it, as a Typer ``app``
in its ``cli`` module, added here one way (:data:`COMMAND_MODULES`); the logic lives in the packages.

Every error fedge raises on purpose (:class:`FedgeError`) is shown as one clear message, exit code 2, with no
traceback; ``--verbose`` shows Flower's own logs.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# Third-party native logs, set before anything loads TensorFlow/XLA (litert-torch's converter), absl or glog: their
# C++ INFO/WARNING lines ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on") would
# bury fedge's output. Only defaults: a user who exports TF_CPP_MIN_LOG_LEVEL=0 sees them again. fedge's own
# warnings go through Python logging and are untouched (--verbose shows Flower's and Ray's too).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("GLOG_minloglevel", "2")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402

from shared_models.errors import FedgeError  # noqa: E402

app = typer.Typer(
    name="fedge",
    help=(
        "fedge: federated learning that ends on edge devices. Train a shared PyTorch model across many clients "
        "with Flower, with differential privacy (Opacus) on every client."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

# Which extra brings a module a command needs: everything but the CLI itself is optional (see pyproject.toml).
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "flwr", "opacus", "sklearn", "matplotlib", "ray"), "train"),
    **dict.fromkeys(("onnx", "onnxscript"), "export"),
    "litert_torch": "tflite",
    **dict.fromkeys(("paho", "cryptography", "onnxruntime", "ai_edge_litert"), "agent"),
    **dict.fromkeys(("dacite", "passlib", "yaml", "transitions", "websockets"), "broker"),
}


# Each package's commands, in the order ``fedge --help`` lists them. Their modules import only typer and rich at the
# top (the rest inside each command), so ``fedge --help`` is quick and works in an agent-only install.
COMMAND_MODULES = (
    "simulations.commands",  # simulate, experiments, demo
    "edge.export.cli",  # package
    "server.cli",  # server, run, certs, node-keys
    "client.cli",  # node
    "edge.delivery.cli",  # broker, keygen, publish, fleet
    "edge.agent.cli",  # agent
)


def _assemble() -> None:
    import importlib

    for module in COMMAND_MODULES:
        app.add_typer(importlib.import_module(module).app)


_assemble()


def missing_extra_message(error: ModuleNotFoundError) -> str | None:
    """For a module one of fedge's extras brings, the line that says which extra to install; else ``None``."""
    root = (error.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(root)
    if extra is None:
        return None
    return (
        f'this command needs {root}, which comes with the {extra!r} extra: pip install "fedge[{extra}]" '
        f'(from a checkout: pip install -e ".[{extra}]")'
    )


def main() -> None:
    """Console entry point: run the app, turning fedge's own errors into one clear line.

    SIGTERM and SIGHUP (``kill``, a closed terminal) act like Ctrl-C, so every command stops the processes it
    started (SuperLink, SuperNodes and their superexec children, brokers, agents) on its way out.
    """
    import signal

    def _interrupt(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        app()
    except FedgeError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}")
        sys.exit(2)
    except ModuleNotFoundError as e:  # an extra that is not installed (a device has only fedge[agent])
        message = missing_extra_message(e)
        if message is None:
            raise
        err.print(f"[bold red]error:[/] {escape(message)}")
        sys.exit(2)
    except OSError as e:  # a file or folder that cannot be read or written: say which, no traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        err.print(f"[bold red]error:[/] {escape(str(e.strerror or e) + where)}; check the path and its permissions")
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
