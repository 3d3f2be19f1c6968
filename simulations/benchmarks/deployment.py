"""Per-round wall time of the same federation on real processes (Deployment Engine) and in simulation, and where
a deployed round's time goes.

The federation: `simulations/configs/heart-disease.toml` (three hospital nodes with their own file, DP, tabular
MLP, the server evaluates on Cleveland), 3 rounds. Deployment: a SuperLink with TLS and node authentication and three
SuperNodes on loopback, the run submitted with ``flwr run``; simulation: ``fedge simulate`` (Flower's Ray engine).

Flower's Deployment Engine starts a fresh ``flwr-clientapp`` process for every message, so every node pays an
interpreter start and the imports of torch, Opacus and Flower in every round. The ClientApp reports how old its
process was when our handler started (``client-startup-seconds``) and how long the handler took
(``client-handler-seconds``); the rest of a round is Flower's transport, polling and the server's own work. Fresh-
process import costs are measured separately (median of ``--repeats`` alternating runs), as are the parts of the
handler that are ours to reduce: loading the node's table and calibrating the DP noise (done once per node, then
kept in the node's state file).

    python -m simulations.benchmarks.deployment            # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared_models.run_dir import RunDir
from simulations.benchmarks.common import Row, write_results

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
HOSPITALS = {
    "hungarian": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "va": "processed.va.data",
}
# heart-disease names no table of its own (no install ships one): the server's evaluation table, from the checkout
SERVER_TABLE = ["--set", f"data-path={DATA / 'processed.cleveland.data'}"]


def _fresh_import_seconds(modules: str, repeats: int) -> list[float]:
    code = f"import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
    times = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return times


def _rounds(run_dir: Path) -> list[dict]:
    return RunDir(run_dir).read_metrics()[1:]


def _env(home: Path) -> dict[str, str]:
    return dict(os.environ, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FLWR_HOME=str(home))


def run_simulation(tmp: Path, settings: list[str]) -> list[dict]:
    runs = tmp / "sim-runs"
    args = ["-m", "simulations.cli", "simulate", "-c", "heart-disease", "--runs-dir", str(runs), *SERVER_TABLE]
    args += ["--set", "node-data-paths=" + ",".join(str(DATA / f) for f in HOSPITALS.values())]
    subprocess.run(
        [sys.executable, *args, "--set", "run-id=sim", *settings],
        cwd=ROOT,
        env=_env(tmp / "sim-home"),
        check=True,
        capture_output=True,
    )
    return _rounds(runs / "sim")


def run_deployment(tmp: Path, settings: list[str]) -> list[dict]:
    from server.credentials import make_node_keys, make_test_certificates
    from server.deployment import SuperLinkSettings, register_nodes, start_superlink, wait_for_port
    from server.processes import stop_tree

    tls = make_test_certificates(tmp / "certs")
    keys = {k.name: k for k in make_node_keys(tmp / "keys", list(HOSPITALS))}
    import socket

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    link = SuperLinkSettings(
        state_dir=tmp / "server",
        port=free_port(),
        ca_certificate=tls.ca_certificate,
        server_certificate=tls.server_certificate,
        server_key=tls.server_key,
    )
    procs: list[subprocess.Popen] = []
    logs = tmp / "logs"
    logs.mkdir()
    try:
        procs.append(start_superlink(link, log_file=logs / "superlink.log"))
        register_nodes(link, [k.public for k in keys.values()])
        for name, file in HOSPITALS.items():
            args = ["node", "--superlink", link.address, "--data", str(DATA / file), "--name", name]
            args += ["--ca", str(tls.ca_certificate), "--auth-key", str(keys[name].private)]
            args += ["--state-dir", str(tmp / "nodes" / name), "--runtime-port", str(free_port()), "--device", "cpu"]
            args += ["--threads", "1"]  # as the simulation's Ray actors (one CPU each)
            with open(logs / f"{name}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "simulations.cli", *args],
                        cwd=ROOT,
                        env=_env(tmp / "node-home"),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + 300
        while not all("SuperNode ID" in (logs / f"{n}.log").read_text(errors="replace") for n in HOSPITALS):
            if time.monotonic() > deadline:
                raise RuntimeError("the nodes did not connect within 300 s")
            time.sleep(0.5)
        wait_for_port(link.address, timeout=5)
        runs = tmp / "dep-runs"
        args = [
            "run",
            "--superlink",
            link.address,
            "--ca",
            str(tls.ca_certificate),
            "-c",
            "heart-disease",
            *SERVER_TABLE,
        ]
        subprocess.run(
            [sys.executable, "-m", "simulations.cli", *args, "--runs-dir", str(runs), "--set", "run-id=dep", *settings],
            cwd=ROOT,
            env=_env(tmp / "run-home"),
            check=True,
            capture_output=True,
        )
        return _rounds(runs / "dep")
    finally:
        for proc in procs:
            stop_tree(proc, kill=True)


def in_process_costs() -> dict[str, float]:
    """The parts of a deployed train handler that are ours: load the node's table, calibrate noise, one DP round."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict
    from opacus.accountants.utils import get_noise_multiplier

    from client.client_app import train_locally
    from client.config import ClientConfig, PrivacyConfig
    from shared_models.federation import FederatedData
    from shared_models.models import build_model
    from simulations.experiment import load_experiment

    torch.set_num_threads(1)  # as on the nodes (--threads 1) and in Ray's actors
    cfg = load_experiment("heart-disease").run_config
    data = FederatedData.from_run_config(cfg)
    path = str(DATA / HOSPITALS["hungarian"])
    t = time.perf_counter()
    for _ in range(10):
        local = data.client_train_set(0, 1, node_data_path=path)
    load = (time.perf_counter() - t) / 10
    rate = int(cfg["batch-size"]) / len(local)
    steps = int(cfg["num-server-rounds"]) * int(cfg["local-epochs"]) * int(1 / rate)
    t = time.perf_counter()
    get_noise_multiplier(
        target_epsilon=float(cfg["target-epsilon"]), target_delta=1e-5, sample_rate=rate, steps=steps, accountant="rdp"
    )
    calibrate = time.perf_counter() - t
    config = ClientConfig(
        model=str(cfg["model"]),
        data=data,
        partition_id=0,
        num_partitions=1,
        node_data_path=path,
        local_epochs=int(cfg["local-epochs"]),
        batch_size=int(cfg["batch-size"]),
        learning_rate=float(cfg["learning-rate"]),
        momentum=0.0,
        privacy=PrivacyConfig(target_epsilon=float(cfg["target-epsilon"]), planned_rounds=3),
        device=torch.device("cpu"),
    )
    arrays = ArrayRecord(build_model(config.model, input_shape=local.input_shape, num_classes=2).state_dict())
    state = RecordDict()
    train_locally(config, arrays, ConfigRecord({"server-round": 1}), state)  # warm-up and calibration
    t = time.perf_counter()
    train_locally(config, arrays, ConfigRecord({"server-round": 2}), state)
    train = time.perf_counter() - t
    from client.privacy import load_accountant

    accountant = load_accountant(state)
    t = time.perf_counter()
    accountant.get_epsilon(1e-5)  # what each round paid twice before the plan's ε was reused
    return {"load": load, "calibrate": calibrate, "train": train, "epsilon": time.perf_counter() - t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process import timings per module set")
    args = parser.parse_args()
    settings = ["--set", "progress=false"]
    rows: list[Row] = []

    imports = {
        "python + flwr.clientapp": "flwr.clientapp",
        "torch": "torch",
        "opacus": "opacus",
        "client.client_app (Opacus deferred)": "client.client_app",
        "client.client_app + client.privacy (DP round; = before the deferral)": "client.client_app, client.privacy",
    }
    times: dict[str, list[float]] = {k: [] for k in imports}
    for _ in range(args.repeats):  # alternate, so that background load falls on every module set alike
        for label, modules in imports.items():
            times[label] += _fresh_import_seconds(modules, 1)
    median = {k: statistics.median(v) for k, v in times.items()}

    with tempfile.TemporaryDirectory(prefix="fedge-bench-deploy-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "sim").mkdir()
        (tmp / "dep").mkdir()
        t = time.perf_counter()
        sim = run_simulation(tmp / "sim", settings)
        sim_total = time.perf_counter() - t
        t = time.perf_counter()
        dep = run_deployment(tmp / "dep", settings)
        dep_total = time.perf_counter() - t
        shutil.rmtree(tmp / "sim", ignore_errors=True)
    costs = in_process_costs()

    sim_round = statistics.mean(r["seconds"] for r in sim)
    dep_round = statistics.mean(r["seconds"] for r in dep)
    startup = statistics.mean(r["client-startup-seconds"] for r in dep)
    handler = statistics.mean(r["client-handler-seconds"] for r in dep)
    rows.append(
        Row.compare(
            "deployment: wall seconds per round (mean, rounds 1-3)",
            dep_round,
            "s",
            "simulation (Ray), same federation",
            sim_round,
        )
    )
    rows.append(
        Row.compare(
            "deployment: wall seconds of the last round (the simulation's actors are warm by then)",
            dep[-1]["seconds"],
            "s",
            "simulation, last round",
            sim[-1]["seconds"],
        )
    )
    rows.append(
        Row.compare(
            "deployment: fresh ClientApp process age when our handler starts (mean per node-round)",
            startup,
            "s",
            "deployment round",
            dep_round,
        )
    )
    rows.append(
        Row.compare(
            "deployment: our train handler (load table, DP round, save state)",
            handler,
            "s",
            "deployment round",
            dep_round,
        )
    )
    rows.append(
        Row.compare(
            "deployment: rest of the round (Flower transport/polling, server)",
            max(0.0, dep_round - startup - handler),
            "s",
            "deployment round",
            dep_round,
        )
    )
    rows.append(
        Row.compare(
            "deployment: whole run incl. start-up of server and nodes",
            dep_total,
            "s",
            "simulation: whole run incl. Ray start",
            sim_total,
        )
    )
    base = median["python + flwr.clientapp"]
    for label in imports:
        if label != "python + flwr.clientapp":
            rows.append(
                Row.compare(
                    f"fresh process: import {label} (median)", median[label], "s", "import flwr.clientapp", base
                )
            )
    rows.append(Row("fresh process: import flwr.clientapp (median)", base, "s"))
    dp_path = median["client.client_app + client.privacy (DP round; = before the deferral)"]
    rows.append(
        Row.compare(
            "fresh process: evaluate/refusal path imports after deferring Opacus",
            median["client.client_app (Opacus deferred)"],
            "s",
            "before (Opacus imported eagerly)",
            dp_path,
        )
    )
    rows.append(Row("in-process: load this node's table (per message)", costs["load"] * 1000, "ms"))
    rows.append(
        Row.compare(
            "in-process: DP noise calibration (once per node, kept in the node's state)",
            costs["calibrate"],
            "s",
            "one local DP round (2 epochs)",
            costs["train"],
        )
    )
    rows.append(Row("in-process: one local DP round, warm (2 epochs)", costs["train"], "s"))
    rows.append(
        Row.compare(
            "in-process: ε of the accountant (RDP), saved once per round by reusing the plan's",
            costs["epsilon"],
            "s",
            "one local DP round (2 epochs)",
            costs["train"],
        )
    )
    write_results(
        "deployment",
        rows,
        out=args.out,
        settings={
            "federation": "simulations/configs/heart-disease.toml (3 hospital nodes, DP, tabular-mlp, 3 rounds)",
            "deployment": "SuperLink with TLS + node authentication, 3 SuperNodes on loopback, flwr run",
            "simulation": "fedge simulate (Flower Ray engine), node-data-paths = the same three files",
            "sim-rounds": sim,
            "deployment-rounds": dep,
            "import-seconds": times,
            "note": "other engineers' jobs shared the 2 cores; ratios are from the same run",
        },
    )


if __name__ == "__main__":
    main()
