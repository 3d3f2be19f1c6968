"""``report.md`` (one table row per artifact) and ``accuracy-size.png`` (accuracy against file size)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return ""
    return f"{value / base:.3f}x"


def _baselines(artifacts: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["format"]: a for a in artifacts if a["variant"] == "fp32"}


def markdown_report(
    artifacts: Sequence[dict[str, Any]], *, title: str, notes: Sequence[str] = (), summary: dict[str, Any] | None = None
) -> str:
    base = _baselines(artifacts)
    lines = [
        f"# {title}",
        "",
        "Sizes and latencies are relative to the fp32 artifact of the same format. Latency: median per sample, "
        "batch 1, one thread, timed around set-input/invoke/read-output, all artifacts interleaved.",
        "Agreement: top-1 agreement with the float PyTorch model the artifact was made from (parity) and with the "
        "original trained model (fidelity of the compression).",
        "",
        "| variant | format | dtype | size KiB | size ratio | gzip KiB | params | nonzero | accuracy | "
        "agree (own float) | agree (original) | max abs diff | latency ms | latency ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in artifacts:
        m = a["metrics"]
        b = base.get(a["format"])
        latency = m.get("latency-ms")
        lines.append(
            f"| {a['variant']} | {a['format']} | {a['dtype']} | {a['size-bytes'] / 1024:.1f} | "
            f"{_ratio(a['size-bytes'], b['size-bytes'] if b else None)} | {a['gzip-size-bytes'] / 1024:.1f} | "
            f"{a['parameters']:,} | {a['nonzero-parameters']:,} | {m['accuracy']:.4f} | {m['top1-agreement']:.4f} | "
            f"{m['agreement-with-original']:.4f} | {m['max-abs-diff']:.3g} | "
            f"{'' if latency is None else f'{latency:.4f}'} | "
            f"{_ratio(latency, b['metrics'].get('latency-ms') if b else None)} |"
        )
    if summary:
        lines += ["", "## Compression", ""]
        for kind, facts in summary.items():
            shown = {k: v for k, v in facts.items() if not k.startswith("shapes")}
            lines.append(f"- **{kind}**: " + ", ".join(f"{k} {_fmt(v)}" for k, v in shown.items()))
            if "shapes-after" in facts and facts["shapes-after"] != facts.get("shapes-before"):
                changed = [
                    f"{name} {facts['shapes-before'][name]} -> {shape}"
                    for name, shape in facts["shapes-after"].items()
                    if facts["shapes-before"].get(name) != shape
                ]
                lines.append(f"  - layer shapes: {'; '.join(changed)}")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot_accuracy_size(artifacts: Sequence[dict[str, Any]], path: str | Path, *, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"onnx": "o", "tflite": "s"}
    for fmt in sorted({a["format"] for a in artifacts}):
        rows = [a for a in artifacts if a["format"] == fmt]
        xs = [a["size-bytes"] / 1024 for a in rows]
        ys = [a["metrics"]["accuracy"] for a in rows]
        ax.scatter(xs, ys, marker=markers.get(fmt, "^"), s=50, label=fmt, alpha=0.8)
        for a, x, y in zip(rows, xs, ys, strict=True):
            ax.annotate(a["variant"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("file size (KiB, log scale)")
    ax.set_ylabel("accuracy (test split)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
