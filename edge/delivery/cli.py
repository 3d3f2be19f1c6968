"""The delivery commands of ``fedge``: ``broker``, ``keygen``, ``publish`` and ``fleet status|collect``.

A thin layer over :mod:`edge.delivery`. Its :data:`app` is added to the root ``fedge`` command by
:mod:`simulations.cli`, which also turns SIGTERM into Ctrl-C for every command. Heavy imports happen inside the
commands, so ``fedge --help`` stays quick.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edge.delivery.feedback import FeedbackConfig

app = typer.Typer()
_FEEDBACK = FeedbackConfig()  # the defaults of fedge fleet collect's --feedback-* options
fleet_app = typer.Typer(
    help="The fleet as the collector sees it: a table of devices, or a collector that keeps listening.",
    no_args_is_help=True,
)


def _split(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def _wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


# ------------------------------------------------------------------------------------------------------- broker


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 1883,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
    mosquitto: Annotated[
        Path | None,
        typer.Option(
            help=(
                "Run Eclipse Mosquitto instead, from a config written to this directory: a device listener on --port "
                "(client id = user name = device id) and a server listener on the next free port, password files "
                "(random passwords, in DIR/credentials.json and DIR/passwords/USER, mode 0600), ACLs (a device "
                "writes only its own topics), persistence. Give the devices with --devices."
            )
        ),
    ] = None,
    devices: Annotated[
        list[str] | None, typer.Option(help="Device ids that may log in to Mosquitto (comma-separated, repeatable).")
    ] = None,
) -> None:
    """Start an MQTT broker on loopback and keep it running until Ctrl-C.

    By default the embedded pure-Python broker (amqtt, anonymous, about 1,000 msg/s: for demos); with --mosquitto
    DIR a real Mosquitto with password file and ACL (for a fleet).
    """
    from edge.delivery.brokers import EmbeddedBrokerProcess
    from edge.delivery.errors import BrokerError
    from edge.delivery.mosquitto import SERVER_USER, MosquittoProcess, write_mosquitto_files

    console = Console()
    if mosquitto is not None:
        if host != "127.0.0.1":
            raise BrokerError("the generated Mosquitto config listens on loopback only; edit its listener line")
        ids = _split(devices)
        if not ids:
            raise BrokerError("--mosquitto needs the device ids that may log in: --devices dev-1,dev-2")
        setup = write_mosquitto_files(mosquitto, port=port, devices=ids)
        credentials = setup.write_credentials()
        process = MosquittoProcess(setup).start()
        console.print(
            f"Mosquitto: devices on mqtt://127.0.0.1:{port}, the server on mqtt://127.0.0.1:{setup.server_port} "
            f"(config {setup.config_file})"
        )
        console.print(f"broker URLs with passwords, per user ({SERVER_USER} for the server): {credentials}")
    else:
        process = EmbeddedBrokerProcess(port, host=host).start(timeout=30)
        console.print(f"embedded broker (amqtt) on mqtt://{host}:{port}")
    console.print("Ctrl-C stops it")
    try:
        _wait_forever()
    finally:
        process.stop()


# ------------------------------------------------------------------------------------------------------- keygen


@app.command()
def keygen(
    path: Annotated[Path, typer.Argument(help="Where to write the key pair: PATH.key (private) and PATH.pub.")] = Path(
        "keys/server"
    ),
    force: Annotated[
        bool, typer.Option(help="Replace an existing key (devices that trust the old one stop updating).")
    ] = False,
    root: Annotated[
        bool,
        typer.Option(
            "--root", help="Make a root key: it signs only key sets (`fedge keys rotate`); devices --trust-root it."
        ),
    ] = False,
) -> None:
    """Make an Ed25519 key pair: the server's signing key, or (--root) the root key that signs key sets.

    Writes PATH.key (PKCS#8 PEM, mode 0600; encrypted when FEDGE_KEY_PASSPHRASE is set) and PATH.pub, the public
    key devices trust (`fedge agent --trust PATH.pub`, or `--trust-root PATH.pub` for a root key).
    """
    from edge.delivery.keys import SigningKey, write_keypair

    key = SigningKey.generate()
    private, public = write_keypair(key, path, overwrite=force)
    kind = "root key: keep it offline; it signs key sets" if root else "keep it secret"
    Console().print(f"private key: {private} ({kind})\npublic key:  {public} (key id {key.keyid[:16]})")


keys_app = typer.Typer(help="Key rotation: the root-signed set of signing keys devices trust.", no_args_is_help=True)


@keys_app.command("rotate")
def keys_rotate(
    root: Annotated[Path, typer.Option(help="The root key (PATH.key from `fedge keygen --root`).")],
    key: Annotated[
        list[Path], typer.Option(help="Public key of a signing key devices should trust (PATH.pub; repeatable).")
    ],
    revoke: Annotated[
        list[str] | None,
        typer.Option(help="Signing key never to trust again: PATH.pub or its key id (repeatable)."),
    ] = None,
    broker_url: Annotated[
        str | None, typer.Option("--broker", help="Publish the key set (retained) on this broker (the server's URL).")
    ] = None,
    version: Annotated[int | None, typer.Option(help="Key set version (default: the current Unix time).")] = None,
    expires_days: Annotated[float, typer.Option(help="Days a device still takes this key set.")] = 365.0,
    out: Annotated[Path | None, typer.Option(help="Also write the signed key set to this file.")] = None,
    ca: Annotated[Path | None, typer.Option(help="CA certificate for mqtts://.")] = None,
) -> None:
    """Sign a new key set with the root key and publish it: devices that trust the root take it if its version is
    higher than theirs, then trust exactly its signing keys and refuse every revoked one.
    """
    from edge.delivery.client import ServerClient
    from edge.delivery.errors import DeliveryError
    from edge.delivery.keys import build_keyset, load_signing_key
    from edge.delivery.publisher import ModelPublisher

    if broker_url is None and out is None:
        raise DeliveryError("say where the key set goes: --broker URL (publish it) and/or --out FILE")
    root_key = load_signing_key(root)
    envelope = build_keyset(root_key, key, revoked=revoke or (), version=version, expires_in_s=expires_days * 86400)
    if out is not None:
        out.write_bytes(envelope)
    if broker_url is not None:
        client = ServerClient(f"fedge-keys-{os.getpid()}", _broker(broker_url), ca_file=ca, clean_session=True)
        with client.connect():
            ModelPublisher(client, root_key).publish_keyset(envelope)
    version_out = json.loads(envelope)["signed"]["version"]
    Console().print(f"key set v{version_out}: {len(key)} signing keys, {len(revoke or [])} revoked")


def _broker(url: str):
    """The broker address of a server command; the password from the URL or from $FEDGE_BROKER_PASSWORD."""
    import dataclasses

    from edge.agent.cli import PASSWORD_ENV
    from edge.agent.protocol import BrokerAddress
    from edge.delivery.errors import as_delivery_error

    with as_delivery_error():
        address = BrokerAddress.parse(url)
    if address.password is None and os.environ.get(PASSWORD_ENV):
        address = dataclasses.replace(address, password=os.environ[PASSWORD_ENV])
    return address


# ------------------------------------------------------------------------------------------------------- publish


@app.command()
def publish(
    artifacts: Annotated[
        list[Path],
        typer.Argument(help="Model files, one per format (int8.onnx int8.tflite): each device gets its runtime's."),
    ],
    broker_url: Annotated[
        str, typer.Option("--broker", help="mqtt://USER@HOST:PORT of the broker (password: $FEDGE_BROKER_PASSWORD).")
    ],
    key: Annotated[Path, typer.Option(help="The server's signing key (PATH.key from `fedge keygen`).")],
    devices: Annotated[
        list[str] | None,
        typer.Option(
            help="Devices to update (comma-separated, repeatable). Default: every device whose state is online."
        ),
    ] = None,
    canary: Annotated[
        float,
        typer.Option(
            help=(
                "Share of the devices updated first; the rest follow when the canaries report healthy, or the "
                "canaries get a rollback command. 0: everyone at once."
            )
        ),
    ] = 0.1,
    model_id: Annotated[str | None, typer.Option(help="Model id (default: from the artifact's JSON or name).")] = None,
    version: Annotated[
        int | None, typer.Option(help="Version (default: from the artifact's JSON, else the current Unix time).")
    ] = None,
    db: Annotated[Path, typer.Option(help="The fleet database the collector writes (SQLite).")] = Path("fleet.db"),
    chunk_kb: Annotated[int, typer.Option(help="Chunk size in KiB.")] = 128,
    expires_days: Annotated[float, typer.Option(help="Days the signed manifest stays valid.")] = 7.0,
    health_reports: Annotated[int, typer.Option(help="Telemetry messages each canary sends before it is judged.")] = 2,
    max_accuracy_drop: Annotated[
        float, typer.Option(help="How far the canaries' accuracy may fall below the previous version's.")
    ] = 0.02,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the devices' outcomes and reports.")] = 120.0,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Publish and assign to --devices, then return (no staged rollout).")
    ] = False,
    group: Annotated[
        str | None,
        typer.Option(
            help="Address the manifest to this device group (signed once per format) instead of to each device: "
            "the devices must run with --group NAME."
        ),
    ] = None,
    accept_no_baseline: Annotated[
        bool,
        typer.Option(
            "--accept-no-baseline",
            help="Judge the canaries on their own error rate when the previous version has too few reports "
            "(else the rollout is held); recorded in the report.",
        ),
    ] = False,
    max_site_drop: Annotated[
        float,
        typer.Option(
            help="Refuse an artifact whose acceptance report (fedge accept RUN_DIR) shows a site losing more "
            "accuracy than this against its reference on that site (the fp32 artifact; for fp32, the global model)."
        ),
    ] = 0.05,
    accept_site_drop: Annotated[
        bool,
        typer.Option(
            "--accept-site-drop",
            help="Roll out even an artifact the acceptance gate refuses (worse on a site, or never tested); "
            "recorded in the rollout report.",
        ),
    ] = False,
    ca: Annotated[Path | None, typer.Option(help="CA certificate for mqtts://.")] = None,
) -> None:
    """Sign a model and roll it out to the devices, canaries first.

    Sends the chunks (retained, on the model's topics), then the signed manifest on each device's topic: a canary
    share first, the rest when the canaries report healthy (else a signed rollback command to them). Prints what
    each device did (applied, rejected and why, rolled back); exit code 1 unless the rollout completed.
    An artifact goes out only if `fedge accept RUN_DIR` tested its exact bytes on every site and no site lost more
    than --max-site-drop (else nothing is published, unless --accept-site-drop).
    """
    from edge.delivery.acceptance_gate import AcceptanceGate
    from edge.delivery.keys import load_signing_key
    from edge.delivery.rollout import RolloutPolicy, publish_rollout, sign_models

    console = Console()
    signing = load_signing_key(key)
    address = _broker(broker_url)
    models = sign_models(
        artifacts,
        signing,
        model_id=model_id,
        version=version,
        chunk_size=chunk_kb * 1024,
        expires_in_s=expires_days * 86400,
    )
    first = next(iter(models.values())).manifest
    console.print(
        f"{first.model_id} v{first.version}: " + ", ".join(f"{f} {m.manifest.length} bytes" for f, m in models.items())
    )
    policy = RolloutPolicy(
        canary_fraction=canary,
        health_reports=health_reports,
        max_accuracy_drop=max_accuracy_drop,
        apply_timeout_s=timeout,
        health_timeout_s=timeout,
        accept_no_baseline=accept_no_baseline,
    )
    report = publish_rollout(
        models,
        broker=address,
        key=signing,
        db=db,
        devices=_split(devices),
        group=group or "",
        policy=policy,
        no_wait=no_wait,
        ca_file=ca,
        progress=console.print,
        gate=AcceptanceGate(max_site_drop=max_site_drop, override=accept_site_drop),
    )
    if report.status == "assigned":
        console.print(f"assigned to {len(report.devices)} devices")
        return
    _print_rollout(console, report.to_dict())
    console.print_json(json.dumps({"status": report.status, "verdict": report.verdict, "overrides": report.overrides}))
    if report.status != "completed":
        raise typer.Exit(1)


def _print_rollout(console: Console, report: dict[str, Any]) -> None:
    table = Table(title=f"rollout of {report['model_id']} v{report['version']}: {report['status']}")
    table.add_column("device")
    table.add_column("canary")
    table.add_column("outcome")
    for d in report["devices"]:
        if d in report["rolled_back"]:
            outcome = "rolled back"
        elif d in report["applied"]:
            outcome = "applied"
        elif d in report["rejected"]:
            outcome = f"rejected: {report['rejected'][d]}"
        elif d in report["missing"]:
            outcome = "no answer"
        else:
            outcome = "not updated"
        table.add_row(d, "yes" if d in report["canaries"] else "", outcome)
    console.print(table)
    if report.get("verdict"):
        console.print(f"canary verdict: {report['verdict']}")


# ------------------------------------------------------------------------------------------------------- fleet


def fleet_table(rows: list[dict[str, Any]], *, now: float | None = None, title: str = "fleet") -> Table:
    """A table of devices: state, runtime, model version, last seen, latency p50/p95, accuracy, last update.

    Compact enough for 80 columns (a log, a CI console); the model ids go in the caption.
    """
    from rich import box

    now = time.time() if now is None else now
    models = sorted({r["model_id"] for r in rows if r.get("model_id")})
    table = Table(title=title, box=box.SIMPLE_HEAD, caption=f"model: {', '.join(models)}" if models else None)
    right = {"ver", "seen", "p50 ms", "p95 ms", "acc", "ε"}
    for column in ("device", "state", "runtime", "ver", "seen", "p50 ms", "p95 ms", "acc", "ε", "last update"):
        table.add_column(column, justify="right" if column in right else "left", no_wrap=column != "last update")

    def num(v: Any, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    for r in rows:
        seen = r.get("last_seen")
        update = r.get("last_update") or {}
        outcome = f"{update.get('outcome', '')} v{update.get('version')}" if update else ""
        if update and update.get("outcome") != "applied":
            outcome += f" ({update.get('reason', '')})"
        table.add_row(
            r["device_id"],
            r.get("state") or "",
            r.get("runtime") or "",
            num(r.get("version"), "d"),
            "" if seen is None else f"{max(0.0, now - seen):.0f}s",
            num(r.get("latency_ms_p50"), ".3f"),
            num(r.get("latency_ms_p95"), ".3f"),
            num(r.get("accuracy"), ".3f"),
            num(r.get("epsilon"), ".2f"),
            outcome,
        )
    return table


def _with_lineage(store: Any) -> list[dict[str, Any]]:
    """The fleet's rows with each device's model ε (from the lineage its retained state carried)."""
    from edge.delivery.feedback import device_lineage

    lineage = device_lineage(store)
    rows = store.devices()
    for r in rows:
        known = lineage.get(r["device_id"]) or {}
        r["epsilon"] = known.get("epsilon") if known.get("version") == r.get("version") else None
    return rows


@fleet_app.command("status")
def fleet_status(
    db: Annotated[
        str, typer.Option(help="The fleet database a collector writes: a SQLite file or a postgresql:// URL.")
    ] = "fleet.db",
    broker_url: Annotated[
        str | None,
        typer.Option("--broker", help="Listen to this broker for --listen seconds first (the server user's URL)."),
    ] = None,
    listen: Annotated[float, typer.Option(help="Seconds to listen when --broker is given.")] = 3.0,
    ca: Annotated[Path | None, typer.Option(help="CA certificate for mqtts://.")] = None,
) -> None:
    """Print the fleet: one row per device, then how much telemetry was received and lost.

    Columns: state, runtime, model and version, last seen, latency p50/p95, accuracy, the last update's outcome.
    Lost telemetry is counted from gaps in each device session's sequence numbers.
    """
    import os

    from edge.delivery.collector import FleetCollector, open_fleet_store
    from edge.delivery.errors import DeliveryError
    from edge.delivery.fleet_db import is_postgres_url

    if broker_url is None and not is_postgres_url(db) and not Path(db).exists():
        raise DeliveryError(f"{db} does not exist: run `fedge fleet collect` (or pass --broker to listen now)")
    store = open_fleet_store(db)
    if broker_url is not None:
        address = _broker(broker_url)
        collector = FleetCollector(
            address, store, client_id=f"fedge-status-{os.getpid()}", ca_file=ca, clean_session=True
        ).start()
        try:
            time.sleep(listen)
        finally:
            collector.stop()
    from edge.delivery.feedback import degraded_events

    console = Console()
    console.print(fleet_table(_with_lineage(store), title=f"fleet ({store.path})"))
    for event in degraded_events(store):
        action = f"; {event['action']}" if event.get("action") else ""
        console.print(
            f"[bold red]degraded[/] {event['model_id']} v{event['version']} on {len(event['devices'])} devices: "
            f"{event['reason']}{action}"
        )
    seq = store.sequence_report()
    console.print(
        f"telemetry: {seq['received']} received, {seq['lost']} lost (gaps in sequence numbers), "
        f"{seq['duplicates']} duplicates dropped; {len(store.malformed())} malformed messages"
    )
    store.close()


@fleet_app.command("collect")
def fleet_collect(
    broker_url: Annotated[str, typer.Option("--broker", help="The broker (the server user's URL for Mosquitto).")],
    db: Annotated[
        str,
        typer.Option(
            help="The fleet database to write: a SQLite file (one collector), or a postgresql://USER:PASSWORD@HOST/DB "
            "URL that every collector of a --group writes."
        ),
    ] = "fleet.db",
    client_id: Annotated[
        str | None,
        typer.Option(
            help="MQTT client id: a persistent session keeps what arrives while it is away. In a --group, one per "
            "collector, the same across its restarts. \\[default: fedge-collector, or fedge-collector-GROUP-HOST]"
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            help="Collect as one member of this group: telemetry and events are shared among the members (an MQTT "
            "shared subscription), every member gets the states. Needs a postgresql:// --db."
        ),
    ] = None,
    ca: Annotated[Path | None, typer.Option(help="CA certificate for mqtts://.")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics of the fleet on this port (http://HOST:PORT/metrics)."),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address the metrics endpoint listens on.")] = "127.0.0.1",
    rollback_on_degraded: Annotated[
        bool,
        typer.Option(
            "--rollback-on-degraded",
            help="When a device group's telemetry degrades against its acceptance report, send it a signed rollback "
            "to its previous version (needs --key).",
        ),
    ] = False,
    key: Annotated[
        Path | None, typer.Option(help="The signing key for --rollback-on-degraded (PATH.key from fedge keygen).")
    ] = None,
    feedback_max_accuracy_drop: Annotated[
        float,
        typer.Option(
            help="A group is degraded when its labelled accuracy in the field falls more than this (0..1) below "
            "the worst site's at acceptance (beyond sampling noise, --feedback-noise-z).",
            rich_help_panel="Field feedback",
        ),
    ] = _FEEDBACK.max_accuracy_drop,
    feedback_max_confidence_drop: Annotated[
        float,
        typer.Option(
            help="Without labels: degraded when the mean confidence falls more than this (0..1) below the "
            "group's first reports on its version.",
            rich_help_panel="Field feedback",
        ),
    ] = _FEEDBACK.max_confidence_drop,
    feedback_max_histogram_distance: Annotated[
        float,
        typer.Option(
            help="Without labels: degraded when the prediction histogram drifts further than this (total "
            "variation distance, 0..1) from the group's first reports on its version.",
            rich_help_panel="Field feedback",
        ),
    ] = _FEEDBACK.max_histogram_distance,
    feedback_min_reports: Annotated[
        int,
        typer.Option(
            help="Telemetry reports a group must send on a version before it is judged (and, without labels, "
            "for its baseline); at least 1.",
            rich_help_panel="Field feedback",
        ),
    ] = _FEEDBACK.min_reports,
    feedback_window_reports: Annotated[
        int,
        typer.Option(
            help="The group's last this many reports are judged; at least 1.", rich_help_panel="Field feedback"
        ),
    ] = _FEEDBACK.window_reports,
    feedback_noise_z: Annotated[
        float,
        typer.Option(
            help="An accuracy drop counts only beyond this many standard errors (sampling noise); at least 0.",
            rich_help_panel="Field feedback",
        ),
    ] = _FEEDBACK.noise_z,
    feedback_interval: Annotated[
        float,
        typer.Option(
            help="Seconds between two checks of the fleet's groups (above 0).", rich_help_panel="Field feedback"
        ),
    ] = _FEEDBACK.interval_s,
) -> None:
    """Keep every state, telemetry and update message of the fleet in SQLite (or PostgreSQL) until Ctrl-C.

    QoS 1 with a persistent session: what the devices send while the collector is down arrives when it is back.
    With --group and a postgresql:// --db, several collectors share the fleet's messages, each stored once.
    With --metrics-port, Prometheus metrics (devices by state and version, telemetry received/lost, update
    outcomes, latency) computed from the database at each scrape.
    Every --feedback-interval seconds each device group (model id and version) is judged against its acceptance
    report; a degraded one is reported (and with --rollback-on-degraded, rolled back).
    """
    from edge.delivery.collector import collector_for
    from edge.delivery.errors import DeliveryError
    from edge.delivery.feedback import FeedbackLoop, FeedbackMonitor
    from edge.delivery.keys import load_signing_key
    from edge.delivery.metrics import FleetMetrics, MetricsServer
    from edge.delivery.publisher import ModelPublisher

    if rollback_on_degraded and key is None:
        raise DeliveryError("--rollback-on-degraded signs its rollback commands: pass --key PATH.key")
    feedback_config = FeedbackConfig(
        max_accuracy_drop=feedback_max_accuracy_drop,
        max_confidence_drop=feedback_max_confidence_drop,
        max_histogram_distance=feedback_max_histogram_distance,
        min_reports=feedback_min_reports,
        window_reports=feedback_window_reports,
        noise_z=feedback_noise_z,
        interval_s=feedback_interval,
    )  # checked before anything connects: a bad value is one line, exit code 2
    signing = load_signing_key(key) if rollback_on_degraded and key is not None else None
    collector = collector_for(_broker(broker_url), db, group=group or "", client_id=client_id, ca_file=ca).start()
    store = collector.store
    metrics = None
    rollback = ModelPublisher(collector.client, signing).rollback if signing is not None else None
    feedback = FeedbackLoop(
        FeedbackMonitor(store, feedback_config),
        rollback=rollback,
        on_event=lambda e: Console().print(f"[bold red]degraded[/] {e.model_id} v{e.version}: {e.reason}"),
    ).start()
    try:
        member = f" as {collector.client_id}, one of group {group}" if group else ""
        Console().print(f"collecting into {store.path}{member}; Ctrl-C stops")
        if metrics_port is not None:
            metrics = MetricsServer(FleetMetrics(store), port=metrics_port, host=metrics_host)
            Console().print(f"Prometheus metrics: {metrics.url}")
        _wait_forever()
    finally:
        feedback.stop()
        collector.stop()
        if metrics is not None:
            metrics.stop()
        Console().print(f"{collector.received} messages received")


app.add_typer(fleet_app, name="fleet")
app.add_typer(keys_app, name="keys")


# ------------------------------------------------------------------------------------------------------- inspect


@app.command()
def inspect(
    target: Annotated[str, typer.Argument(help="An artifact file (NAME.onnx with NAME.onnx.json) or a device id.")],
    db: Annotated[
        str,
        typer.Option(
            help="The fleet database that holds the devices' retained states: a SQLite file or a postgresql:// URL."
        ),
    ] = "fleet.db",
    broker_url: Annotated[
        str | None,
        typer.Option(
            "--broker",
            help="Read the device's retained state from this broker instead of --db (the server user's URL, "
            "mqtt://USER@HOST:PORT; password: $FEDGE_BROKER_PASSWORD).",
        ),
    ] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the retained state with --broker.")] = 5.0,
    ca: Annotated[Path | None, typer.Option(help="CA certificate for mqtts://.")] = None,
) -> None:
    """Print the lineage and privacy statement of an artifact, or of the model a device runs.

    ARTIFACT: what fedge publish would sign into its manifest (run, hashes, recipe, acceptance, privacy statement,
    device preprocessing). DEVICE: what the device reported in its retained state, as the fleet database kept it,
    or (--broker) as the broker holds it now; exit code 1 if the broker holds no state of that device.
    """
    from edge.delivery.device_state import NoDeviceStateError, device_lineage_in_db, device_lineage_on_broker
    from edge.delivery.publisher import load_artifact

    console = Console()
    if Path(target).is_file():
        artifact = load_artifact(Path(target))
        out = {
            "file": str(artifact.path),
            "model_id": artifact.model_id,
            "format": artifact.format,
            "lineage": artifact.lineage or None,
            "preprocessing": artifact.preprocessing or None,
        }
    elif broker_url is not None:
        try:
            out = device_lineage_on_broker(_broker(broker_url), target, wait_s=wait, ca_file=ca)
        except NoDeviceStateError as e:
            Console(stderr=True).print(f"[bold]{escape(str(e))}[/]")
            raise typer.Exit(1) from e
    else:
        out = device_lineage_in_db(db, target)
    console.print_json(json.dumps(out))
