"""Per-site evaluation: the global model's accuracy on every site's own data, and who it serves worst.

A good mean accuracy can hide a site where the model is poor (a hospital with another prevalence, a table mostly
missing). Each evaluate reply names its site (``site`` in its ``client`` record: the node's name, its data file, or
its partition); :func:`site_metrics` collects them per site and :func:`fairness` names the worst site, the spread
(max - min) and the sites below the run's ``site-accuracy-threshold``.

>>> f = fairness({"a": {"accuracy": 0.9}, "b": {"accuracy": 0.6}, "c": {"accuracy": 0.8}}, threshold=0.7)
>>> f["worst-site"], round(f["site-accuracy-spread"], 3), f["sites-below-threshold"]
('b', 0.3, ['b'])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Message


def site_of(msg: Message) -> str:
    """The site an evaluate reply speaks for (``site``, else ``node-name`` / ``partition-id``, else the node id)."""
    record = msg.content.config_records.get("client")
    if record is not None:
        for key in ("site", "node-name", "partition-id"):
            if key in record:
                return str(record[key])
    return f"node-{msg.metadata.src_node_id}"


def site_metrics(replies: Iterable[Message]) -> dict[str, dict[str, float | int]]:
    """Site -> accuracy, loss and examples, from evaluate replies (errors and replies without metrics skipped)."""
    sites: dict[str, dict[str, float | int]] = {}
    for reply in replies:
        if reply.has_error():
            continue
        metrics = reply.content.metric_records.get("metrics")
        if metrics is None or "eval-accuracy" not in metrics:
            continue
        sites[site_of(reply)] = {
            "accuracy": float(metrics["eval-accuracy"]),
            "loss": float(metrics.get("eval-loss", float("nan"))),
            "examples": int(metrics.get("num-examples", 0)),
        }
    return dict(sorted(sites.items()))


def fairness(sites: Mapping[str, Mapping[str, Any]], *, threshold: float) -> dict[str, Any]:
    """The worst site and its accuracy, the spread (max - min accuracy) and the sites below ``threshold``."""
    if not sites:
        return {}
    accuracy = {name: float(s["accuracy"]) for name, s in sites.items()}
    worst = min(accuracy, key=lambda name: (accuracy[name], name))
    return {
        "worst-site": worst,
        "worst-site-accuracy": accuracy[worst],
        "site-accuracy-spread": max(accuracy.values()) - accuracy[worst],
        "sites-below-threshold": sorted(name for name, a in accuracy.items() if a < threshold),
    }
