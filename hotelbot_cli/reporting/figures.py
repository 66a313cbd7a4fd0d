"""The report's plots as PNG bytes (matplotlib, Agg backend). matplotlib and numpy are imported only
when a figure is drawn, so importing this module stays cheap."""

from __future__ import annotations

import contextlib
import io
import logging

from .advice import FEW_EXAMPLES
from .report import SYSTEM_SERIES, Report

log = logging.getLogger("hotelbot.reporting")


def _plt():
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()


def make_figures(report: Report, series: dict[str, list[tuple[float, float]]] | None = None) -> dict[str, bytes]:
    """PNG bytes by file name; a figure that fails is skipped with a note (a report without it is fine)."""
    builders = [
        ("examples_per_intent.png", _fig_examples),
        ("training_curves.png", _fig_training),
        ("confusion_matrix.png", _fig_confusion),
        ("confidence.png", _fig_confidence),
        ("resources.png", lambda r: _fig_resources(r, series or {})),
        ("f1_deltas.png", _fig_deltas),
    ]
    out = {}
    with _quiet_matplotlib():
        for name, builder in builders:
            try:
                png = builder(report)
            except Exception as exc:  # noqa: BLE001 - one broken plot must not lose the whole report
                log.warning("figure %s failed: %s", name, exc)
                report.notes.append(f"figure {name} could not be drawn: {exc}")
                continue
            if png:
                out[name] = png
    return out


@contextlib.contextmanager
def _quiet_matplotlib():
    level = logging.getLogger("matplotlib").level
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        yield
    finally:
        logging.getLogger("matplotlib").setLevel(level)


def _fig_examples(report: Report) -> bytes | None:
    counts = report.data.get("examples_per_intent") or {}
    if not counts:
        return None
    plt = _plt()
    items = sorted(counts.items(), key=lambda kv: (kv[1]["total"], kv[0]), reverse=True)
    names = [k for k, _ in items]
    train = [v["train"] for _, v in items]
    val = [v["validation"] for _, v in items]
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.26 * len(names) + 1.0)))
    y = list(range(len(names)))
    ax.barh(y, train, color="#4c78a8", label="train")
    ax.barh(y, val, left=train, color="#f58518", label="validation")
    ax.set_yticks(y, names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("examples")
    ax.axvline(FEW_EXAMPLES, color="#999", ls=":", lw=1)
    for i, (a, b) in enumerate(zip(train, val)):
        ax.text(a + b, i, f" {a + b}", va="center", fontsize=8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    ax.set_title("Examples per intent (largest first)")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def _fig_training(report: Report) -> bytes | None:
    t = report.training
    if not t["epochs"] and not t["train_loss"]:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    if t["train_loss"]:
        ax1.plot(
            [r["epoch"] for r in t["train_loss"]],
            [r["loss"] for r in t["train_loss"]],
            color="#4c78a8",
            lw=1.2,
            label="training loss (per logging step)",
        )
    ep = [e for e in t["epochs"] if e.get("loss") is not None]
    if ep:
        ax1.plot([e["epoch"] for e in ep], [e["loss"] for e in ep], "o-", color="#e45756", label="validation loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_title("Loss")
    ax1.legend(fontsize=9)
    ax1.grid(alpha=0.3)
    for key, style, color in (("macro_f1", "o-", "#54a24b"), ("accuracy", "s--", "#b279a2")):
        pts = [e for e in t["epochs"] if e.get(key) is not None]
        if pts:
            ax2.plot(
                [e["epoch"] for e in pts],
                [e[key] for e in pts],
                style,
                color=color,
                label=f"validation {key.replace('_', '-')}",
            )
    if t.get("best_epoch") is not None:
        ax2.axvline(t["best_epoch"], color="#999", ls=":", lw=1, label=f"kept epoch {t['best_epoch']:g}")
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator  # heavy: only when a figure is drawn

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_title("Validation metrics per epoch")
    ax2.legend(fontsize=9, loc="lower right")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _fig_confusion(report: Report) -> bytes | None:
    labels, matrix = report.confusion["labels"], report.confusion["matrix"]
    if not labels:
        return None
    import numpy as np  # heavy: only when a figure is drawn

    plt = _plt()
    index = {label: i for i, label in enumerate(labels)}
    order = [index[label] for label in report.confusion["order"]]
    m = np.asarray(matrix, dtype=float)[np.ix_(order, order)]
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    names = [labels[i] for i in order]
    n = len(names)
    side = min(max(5.0, 0.42 * n + 2.5), 24.0)
    fig, ax = plt.subplots(figsize=(side, side))
    eye = np.eye(n, dtype=bool)
    diag = np.ma.masked_where(~eye, norm)
    off = np.ma.masked_where(eye | (norm == 0), norm)
    ax.imshow(diag, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    off_max = float(off.max()) if off.count() else 1.0
    ax.imshow(off, cmap="Reds", vmin=0, vmax=max(off_max, 0.05), interpolation="nearest")
    font = 9 if n > 20 else 10
    for i in range(n):
        for j in range(n):
            v = norm[i, j]
            if v > 0:
                dark = (v > 0.55) if i == j else (v > 0.6 * max(off_max, 0.05))
                ax.text(
                    j,
                    i,
                    f"{100 * v:.0f}",
                    ha="center",
                    va="center",
                    fontsize=font,
                    color="white" if dark else "#222",
                    fontweight="bold" if i != j else "normal",
                )
    ax.set_xticks(range(n), names, rotation=60, ha="right", rotation_mode="anchor", fontsize=font + 1)
    ax.set_yticks(range(n), names, fontsize=font + 1)
    ax.set_xlabel("predicted intent", fontsize=11)
    ax.set_ylabel("true intent", fontsize=11)
    ax.set_xticks(np.arange(-0.5, n), minor=True)
    ax.set_yticks(np.arange(-0.5, n), minor=True)
    ax.grid(which="minor", color="#eee", lw=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_title("Confusion matrix: % of each true intent's texts (blue: right, red: errors)", fontsize=13)
    fig.tight_layout()
    return _png(fig)


def _fig_confidence(report: Report) -> bytes | None:
    values = report.confidence.get("values") or {}
    right, wrong = values.get("correct") or [], values.get("wrong") or []
    if not right and not wrong:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    bins = [i / 20 for i in range(21)]
    ax1.hist(right, bins=bins, color="#54a24b", edgecolor="white")
    ax1.set_ylabel("right")
    ax1.set_title(f"Top-1 confidence: {len(right)} right vs {len(wrong)} wrong predictions")
    ax2.hist(wrong, bins=bins, color="#e45756", edgecolor="white")
    ax2.set_ylabel("wrong")
    ax2.set_xlabel("confidence of the predicted intent")
    ax2.set_xlim(0, 1)
    threshold = report.confidence.get("threshold")
    suggestion = report.confidence.get("suggested_threshold")
    for ax in (ax1, ax2):
        ax.spines[["top", "right"]].set_visible(False)
        if threshold is not None:
            ax.axvline(threshold, color="#333", ls="--", lw=1.2, label=f"out_of_scope threshold {threshold:.2f}")
        if suggestion and (threshold is None or abs(suggestion["threshold"] - threshold) > 1e-9):
            ax.axvline(
                suggestion["threshold"],
                color="#888",
                ls=":",
                lw=1.4,
                label=f"suggested threshold {suggestion['threshold']:.2f}",
            )
    if threshold is not None or suggestion:
        ax1.legend(loc="upper left", fontsize=9, frameon=False)
    fig.tight_layout()
    return _png(fig)


def _fig_resources(report: Report, series: dict[str, list[tuple[float, float]]]) -> bytes | None:
    if not series:
        return None
    plt = _plt()
    groups: list[tuple[str, list[str]]] = [
        ("CPU (%)", [k for k in ("system/cpu_percent",) if k in series]),
        ("memory (MB)", [k for k in ("system/ram_used_mb", "system/process_rss_mb") if k in series]),
        ("GPU utilisation (%)", sorted(k for k in series if k.endswith("_utilization_percent"))),
        ("GPU memory (MB)", sorted(k for k in series if k.startswith("system/gpu") and k.endswith("_memory_used_mb"))),
    ]
    groups = [(title, keys) for title, keys in groups if keys]
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 2.3 * len(groups) + 0.6), sharex=True, squeeze=False)
    for ax, (title, keys) in zip(axes[:, 0], groups):
        for key in keys:
            xs, ys = zip(*series[key])
            ax.plot(xs, ys, lw=1.3, label=SYSTEM_SERIES.get(key, key.split("/", 1)[-1]))
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8, loc="best")
        if "%" in title:
            ax.set_ylim(0, 105)  # a line at 100% must not hide under the frame
    axes[-1, 0].set_xlabel("seconds since the first sample")
    axes[0, 0].set_title("Resource usage during training (from the MLflow run)")
    fig.tight_layout()
    return _png(fig)


def _fig_deltas(report: Report) -> bytes | None:
    refs = [r for r in report.comparison.get("references", []) if r["per_intent_f1_deltas"]]
    if not refs:
        return None
    ref = refs[0]
    items = sorted(ref["per_intent_f1_deltas"].items(), key=lambda kv: (kv[1], kv[0]))
    if not any(abs(v) > 1e-12 for _, v in items):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.24 * len(items) + 1.0)))
    ax.barh(range(len(items)), [v for _, v in items], color=["#e45756" if v < 0 else "#54a24b" for _, v in items])
    ax.set_yticks(range(len(items)), [k for k, _ in items], fontsize=9)
    ax.axvline(0, color="#333", lw=0.8)
    ax.set_xlabel(f"F1 of {report.version} minus F1 of {ref['version']}")
    ax.set_title(f"Per-intent F1 change vs {ref['version']} ({', '.join(ref['roles'])})")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)
