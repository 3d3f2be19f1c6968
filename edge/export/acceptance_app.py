"""The acceptance ServerApp: the exact artifact bytes tested on every node of a real federation, before a rollout.

``fedge accept RUN_DIR --superlink HOST:PORT`` submits it (:mod:`edge.export.federated_acceptance`). It checks each
artifact's bytes against its description, waits for the nodes, and sends every node one ``query.accept`` message:
the global model (ArrayRecord ``arrays``: each node measures it too, the fp32 reference), the files (ArrayRecord
``artifacts``, each file's bytes as a 1-D uint8 array, so multi-MB files travel in Flower's chunked object store)
and a ConfigRecord ``acceptance`` (each file's ``sha256.<file>``, ``max-samples``, ``seed``, ``num-classes``). Each
node's ClientApp (``client/client_app.py``: ``accept``) checks the bytes, runs them with the device runtimes on its
own data and replies with its accuracies. A node that replies with an Error, or not at all, is listed among the
failed sites with its reason. The report is built and written by :func:`edge.export.acceptance.accept_reported`, the
same rows and verdicts as the in-process acceptance, with each description's lineage; fewer sites than
``acceptance-min-sites`` fails the run after the report (every artifact refused) is written.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from edge.export.federated_acceptance import AcceptanceSettings
from shared_models.run_dir import RunDir

app = ServerApp()
ACCEPT_MESSAGE = "query.accept"  # the ClientApp's @app.query("accept")
#: how a node's Error names its site (client/client_app.py: ``accept``)
FAILED_SITE = re.compile(r"^\w+: site (.+?): ")
POLL_SECONDS = 1.0


def wait_for_nodes(grid: Grid, count: int, deadline: float) -> list[int]:
    """The connected nodes once at least ``count`` are (or whatever is connected at ``deadline``)."""
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count or time.monotonic() >= deadline:
            return nodes
        time.sleep(POLL_SECONDS)


def acceptance_content(
    arrays: ArrayRecord, files: dict[str, bytes], settings: AcceptanceSettings, num_classes: int
) -> RecordDict:
    return RecordDict(
        {
            "arrays": arrays,
            "artifacts": ArrayRecord({n: Array(np.frombuffer(b, dtype=np.uint8)) for n, b in files.items()}),
            "acceptance": ConfigRecord(
                {
                    **{f"sha256.{n}": hashlib.sha256(b).hexdigest() for n, b in files.items()},
                    "max-samples": settings.max_samples,
                    "seed": settings.seed,
                    "num-classes": int(num_classes),
                }
            ),
        }
    )


def sort_replies(nodes: Iterable[int], replies: Iterable[Message], timeout: float) -> tuple[list, list[dict]]:
    """Replies -> (site results by site name, failed sites): an Error names its site when the node could say it."""
    from edge.export.acceptance import SiteResult

    by_node = {r.metadata.src_node_id: r for r in replies}
    results, failed = [], []
    for node in nodes:
        reply = by_node.get(node)
        if reply is None:
            failed.append({"site": f"node-{node}", "reason": f"no reply within {timeout:g}s"})
        elif reply.has_error():
            named = FAILED_SITE.match(reply.error.reason)
            failed.append({"site": named.group(1) if named else f"node-{node}", "reason": reply.error.reason})
        else:
            metrics = reply.content.metric_records.get("metrics", {})
            client = reply.content.config_records.get("client", {})
            accuracy = {k.removeprefix("accuracy."): float(v) for k, v in metrics.items() if k.startswith("accuracy.")}
            site = str(client.get("site") or client.get("node-name") or f"node-{node}")
            results.append(SiteResult(site, int(metrics.get("num-examples", 0)), accuracy))
    return sorted(results, key=lambda r: r.name), failed


def run_acceptance(grid: Grid, settings: AcceptanceSettings, *, flower_run_id: int) -> dict[str, Any]:
    """Send the acceptance test to every node, collect the replies, write the report; return it."""
    import torch

    from edge.export.acceptance import (
        REPORT,
        AcceptanceError,
        accept_reported,
        artifact_descriptions,
        exact_bytes,
        runnable,
    )

    console = Console(stderr=True)
    run = RunDir(settings.run_dir)
    described = runnable(artifact_descriptions(settings.artifacts_dir))
    files = {str(d["file"]): exact_bytes(settings.artifacts_dir, d) for d in described}
    if not files:
        raise AcceptanceError(f"{settings.artifacts_dir} holds no .onnx or .tflite artifact: package the run first")
    try:
        state = torch.load(run.model, map_location="cpu", weights_only=True)
        num_classes = int(run.read_model_info()["num-classes"])
    except Exception as e:  # a missing or damaged file: torch and json raise their own types
        raise AcceptanceError(f"cannot read the global model of {run.path} (model.pt, model.json): {e}") from e
    privacy = run.read_privacy() if run.privacy.is_file() else {}
    min_sites = settings.min_sites or len(privacy.get("clients") or {})
    if min_sites < 1:
        raise AcceptanceError(
            f"{run.path} has no privacy ledger naming the sites that trained: pass --min-sites N (how many nodes "
            "must report)"
        )
    deadline = time.monotonic() + settings.timeout
    console.print(
        f"acceptance of {', '.join(files)} ({sum(map(len, files.values())) / 1024:.0f} KiB) on the federation's "
        f"nodes (Flower run {flower_run_id}); waiting for {min_sites} nodes",
        soft_wrap=True,
    )
    nodes = wait_for_nodes(grid, min_sites, deadline)
    content = acceptance_content(ArrayRecord(state), files, settings, num_classes)
    messages = [Message(content=content, dst_node_id=node, message_type=ACCEPT_MESSAGE) for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=max(1.0, deadline - time.monotonic()))) if nodes else []
    results, failed = sort_replies(nodes, replies, settings.timeout)
    for f in failed:
        console.print(f"  failed: {f['site']}: {f['reason']}", soft_wrap=True)
    report = accept_reported(
        settings.artifacts_dir,
        results,
        failed_sites=failed,
        min_sites=min_sites,
        max_site_drop=settings.max_site_drop,
        run_id=run.run_id,
        mode=(
            f"on the federation's nodes: each node's ClientApp checked the files' sha256 and ran them in the device "
            f"runtimes on its own data (Flower run {flower_run_id})"
        ),
        extra={"flower-run-id": flower_run_id},
    )
    refused = sum(row["verdict"] != "accepted" for row in report["artifacts"])
    path = settings.artifacts_dir / REPORT
    console.print(
        f"acceptance on {len(report['sites'])} sites ({', '.join(s['name'] for s in report['sites'])}): "
        f"{len(report['artifacts']) - refused} accepted, {refused} refused; acceptance report in {path}",
        soft_wrap=True,  # one line: `fedge accept --superlink` reads the path from it (federated_acceptance.py)
    )
    if report.get("incomplete"):
        raise AcceptanceError(
            f"{report['incomplete']}: every artifact is refused in {path}. Bring the missing nodes up (or lower "
            "--min-sites) and run fedge accept again"
        )
    return report


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_acceptance(grid, AcceptanceSettings.from_run_config(context.run_config), flower_run_id=context.run_id)
