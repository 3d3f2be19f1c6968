"""Per-round wall time of the same federation on real processes (Deployment Engine) and in simulation, and where
a deployed round's time goes.

The federation: `simulations/configs/heart-disease.toml` (three hospital nodes with their own file, DP, tabular
MLP, the server evaluates on Cleveland), 3 rounds. Deployment: a SuperLink with TLS and node authentication and three
SuperNodes on loopback, the run submitted with ``flwr run``; simulation: ``fedge simulate`` (Flower's Ray engine).

Flower's Deployment Engine (1.42, either isolation mode) runs every message in a new ``flwr-clientapp`` process, so a
node pays an interpreter start and the imports of torch, Opacus and Flower in every round. ``fedge node`` forks
that process from a warm one that imported them once (``--warm``, the default; ``client/warm_clientapp.py``); the
deployment runs here both ways, ``--warm`` and ``--cold`` (Flower's own start), alternating with the simulation,
``--repeats`` times, and the ratios are of the medians. The ClientApp reports how old its process was when our
handler started (``client-startup-seconds``) and how long the handler took (``client-handler-seconds``); the rest
of a round is Flower's transport, polling and the server's own work. Flower's SuperNode waits 3 s between empty
polls of the SuperLink (a constant in Flower); ``fedge node`` asks again 0.1 s after a message, 1.25x longer each
time none came, up to 3 s (``client/supernode.py``): ``warm, Flower's 3 s poll`` is the warm deployment with
``--idle-poll-start 3``, run alongside to show what that saves. Flower moves every part of a message (each record,
each array) as its own request to the SuperLink; fedge's ServerApp sends a message's arrays packed into one Array
on real nodes (``pack-arrays``, ``shared_models/packed_arrays.py``): ``warm, arrays unpacked`` is the warm deployment
with ``pack-arrays = false``. Fresh-process import costs are measured
separately (median of ``--repeats`` alternating runs), as are the parts of the handler that are ours to reduce:
loading the node's table and calibrating the DP noise (done once per node, then kept in the node's state file).

    python -m simulations.benchmarks.deployment               # 3 repeats: about 25 minutes on 2 cores
    python -m simulations.benchmarks.deployment --repeats 1
"""

from __future__ import annotations

import argparse
import os
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


def run_deployment(tmp: Path, settings: list[str], *, warm: bool = True, node_args: tuple[str, ...] = ()) -> list[dict]:
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
    logs.mkdir(parents=True)
    try:
        procs.append(start_superlink(link, log_file=logs / "superlink.log"))
        register_nodes(link, [k.public for k in keys.values()])
        for name, file in HOSPITALS.items():
            args = ["node", "--superlink", link.address, "--data", str(DATA / file), "--name", name]
            args += ["--ca", str(tls.ca_certificate), "--auth-key", str(keys[name].private)]
            args += ["--state-dir", str(tmp / "nodes" / name), "--runtime-port", str(free_port()), "--device", "cpu"]
            args += ["--threads", "1"]  # as the simulation's Ray actors (one CPU each)
            args += ["--warm" if warm else "--cold", *node_args]
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


def _deploy_with_one_retry(
    tmp: Path, settings: list[str], *, warm: bool, node_args: tuple[str, ...] = ()
) -> list[dict]:
    """One deployment run; if it fails to start (seen once: the SuperLink exiting at start, on a busy machine),
    show the end of its logs and try once more in a fresh directory."""
    from server.errors import ServerError

    (tmp / "first").mkdir()
    (tmp / "second").mkdir()
    try:
        return run_deployment(tmp / "first", settings, warm=warm, node_args=node_args)
    except (ServerError, RuntimeError, subprocess.CalledProcessError) as e:
        print(f"deployment run failed ({type(e).__name__}: {e}); its logs end with:", file=sys.stderr)
        for log in sorted((tmp / "first" / "logs").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-15:]
            print(f"--- {log.name}\n" + "\n".join(tail), file=sys.stderr)
        time.sleep(10)
        return run_deployment(tmp / "second", settings, warm=warm, node_args=node_args)


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
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternating runs of each variant (and fresh-process import timings)"
    )
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

    flower_poll = "warm, Flower's 3 s poll"
    unpacked = "warm, arrays unpacked"
    runs: dict[str, list[dict]] = {"simulation": [], "warm": [], flower_poll: [], unpacked: [], "cold": []}
    for rep in range(args.repeats):  # alternating, so that background load falls on every variant alike
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))
        for variant in order:
            with tempfile.TemporaryDirectory(prefix="fedge-bench-deploy-") as tmp_name:
                tmp = Path(tmp_name)
                t = time.perf_counter()
                if variant == "simulation":
                    rounds = run_simulation(tmp, settings)
                else:
                    node_args = ("--idle-poll-start", "3") if variant == flower_poll else ()
                    variant_settings = [*settings, "--set", "pack-arrays=false"] if variant == unpacked else settings
                    rounds = _deploy_with_one_retry(tmp, variant_settings, warm=variant != "cold", node_args=node_args)
                total = time.perf_counter() - t
            runs[variant].append({"rounds": rounds, "total-s": total})
            mean = statistics.mean(r["seconds"] for r in rounds)
            print(f"repeat {rep + 1}/{args.repeats}, {variant}: {mean:.2f} s per round, {total:.1f} s in all")
    costs = in_process_costs()

    def median_of(variant: str, value) -> float:
        return statistics.median(value(run) for run in runs[variant])

    def per_round(key: str):
        return lambda run: statistics.mean(r[key] for r in run["rounds"])

    sim_round = median_of("simulation", per_round("seconds"))
    sim_last = median_of("simulation", lambda run: run["rounds"][-1]["seconds"])
    for variant, how in (
        ("warm", "fedge node --warm"),
        (flower_poll, "fedge node --warm --idle-poll-start 3 (Flower's 3 s idle poll)"),
        (unpacked, "fedge node --warm, pack-arrays = false (a Flower object per array)"),
        ("cold", "fedge node --cold (Flower's fresh process)"),
    ):
        dep_round = median_of(variant, per_round("seconds"))
        startup = median_of(variant, per_round("client-startup-seconds"))
        handler = median_of(variant, per_round("client-handler-seconds"))
        tag = f"deployment, {how}"
        rows.append(
            Row.compare(
                f"{tag}: wall seconds per round (mean of rounds 1-3, median of runs)",
                dep_round,
                "s",
                "simulation (Ray), same federation",
                sim_round,
            )
        )
        rows.append(
            Row.compare(
                f"{tag}: wall seconds of the last round (the simulation's actors are warm by then)",
                median_of(variant, lambda run: run["rounds"][-1]["seconds"]),
                "s",
                "simulation, last round",
                sim_last,
            )
        )
        rows.append(
            Row.compare(
                f"{tag}: ClientApp process age when our handler starts (mean per node-round)",
                startup,
                "s",
                "deployment round",
                dep_round,
            )
        )
        rows.append(
            Row.compare(
                f"{tag}: our train handler (load table, DP round, save state)",
                handler,
                "s",
                "deployment round",
                dep_round,
            )
        )
        rows.append(
            Row.compare(
                f"{tag}: rest of the round (Flower transport/polling, server)",
                max(0.0, dep_round - startup - handler),
                "s",
                "deployment round",
                dep_round,
            )
        )
        rows.append(
            Row.compare(
                f"{tag}: whole run incl. start-up of server and nodes",
                median_of(variant, lambda run: run["total-s"]),
                "s",
                "simulation: whole run incl. Ray start",
                median_of("simulation", lambda run: run["total-s"]),
            )
        )
    warm_round = median_of("warm", per_round("seconds"))
    for measure, baseline, variant in (
        ("--warm (idle poll from 0.1 s)", "Flower's 3 s idle poll", flower_poll),
        ("--warm (arrays packed: pack-arrays = true)", "pack-arrays = false", unpacked),
        ("--warm", "--cold (Flower's fresh process per message)", "cold"),
    ):
        rows.append(
            Row.compare(
                f"deployment: wall seconds per round, {measure}",
                warm_round,
                "s",
                baseline,
                median_of(variant, per_round("seconds")),
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
            "repeats": args.repeats,
            "runs": runs,
            "import-seconds": times,
            "note": "other engineers' jobs shared the 2 cores; ratios are from the same run",
        },
    )


if __name__ == "__main__":
    main()
