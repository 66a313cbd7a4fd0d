"""The report as one self-contained HTML document: inline CSS, plots as PNG ``data:`` URIs, nothing
fetched (well-formed XML as well)."""

from __future__ import annotations

import base64
import html
from typing import Any, Collection, Iterable, Sequence

from .advice import FEW_EXAMPLES, LOW_RECALL
from .formatting import _bytes, _delta, _errors_phrase, _f, _ms, _num, _pairs, _pct, _secs, _summary_lines
from .other_components import _component_facts, _component_samples, _component_table
from .report import METRIC_DIGITS, OVERALL_KEYS, SECTIONS, Report
from .sections import DELTA_SHOWN, MAX_RIGHT_LOST

_CSS = """
*{box-sizing:border-box}
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 margin:0;background:#f5f6f8;color:#1d2330;line-height:1.45;font-size:15px}
header{background:#1d3557;color:#fff;padding:24px 40px 18px}
header h1{margin:0 0 6px;font-size:26px}
header p{margin:2px 0;color:#d6deea;font-size:14px}
nav{background:#fff;border-bottom:1px solid #dde1e7;padding:8px 40px;position:sticky;top:0;z-index:1}
nav a{margin-right:16px;color:#1d3557;text-decoration:none;font-size:14px;white-space:nowrap}
nav a:hover{text-decoration:underline}
main{max-width:1320px;margin:0 auto;padding:8px 40px 40px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:18px 24px;margin:20px 0}
h2{margin:0 0 12px;font-size:20px;color:#1d3557}
h3{font-size:16px;margin:18px 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-top:14px}
.card{background:rgba(255,255,255,.12);border-radius:6px;padding:8px 14px;min-width:130px}
.card .v{font-size:22px;font-weight:600;color:#fff}
.card .k{font-size:12px;color:#c5d0e0;text-transform:uppercase;letter-spacing:.04em}
table{border-collapse:collapse;width:100%;margin:8px 0 12px;font-size:13.5px}
th,td{border-bottom:1px solid #e6e9ee;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600;position:relative}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fafbfc}
table.kv{width:auto;min-width:420px}
table.compact{width:auto;min-width:480px}
details{margin:8px 0}
summary{cursor:pointer;color:#1d3557;font-weight:600;font-size:14px}
table.kv th{width:260px}
.bad{color:#b42318;font-weight:600}
.good{color:#067647}
.up{color:#067647;font-weight:600}
.down{color:#b42318;font-weight:600}
.muted{color:#667085}
.small{font-size:12.5px}
.ex{margin:0;padding-left:16px}
.ex li{margin:1px 0}
.note{background:#fff8e6;border-left:4px solid #f0b429;padding:8px 12px;margin:8px 0;font-size:14px}
.warn{background:#fef3f2;border-left:4px solid #d92d20;padding:8px 12px;margin:6px 0;font-size:14px}
figure{margin:10px 0;text-align:center}
figure img{max-width:100%;height:auto;border:1px solid #eef0f3}
figcaption{font-size:13px;color:#667085;margin-top:4px}
.sev{display:inline-block;min-width:64px;text-align:center;border-radius:10px;padding:1px 8px;font-size:12px;
 font-weight:600;margin-right:8px;text-transform:uppercase}
.sev-high{background:#fee4e2;color:#b42318}
.sev-medium{background:#fef0c7;color:#93370d}
.sev-low{background:#e0eaff;color:#2d31a6}
ul.recs{list-style:none;padding:0;margin:0}
ul.recs li{padding:8px 0;border-bottom:1px solid #eef0f3}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:20px}
@media (max-width:1000px){.grid2{grid-template-columns:1fr}}
footer{max-width:1320px;margin:0 auto;padding:0 40px 30px;color:#667085;font-size:13px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


class _Html:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def table(
        self,
        header: Sequence[str],
        rows: Iterable[Sequence[Any]],
        numeric: Collection[int] = (),
        row_ids: Sequence[str | None] | None = None,
        cls: str = "",
    ) -> None:
        numeric = set(numeric)
        cls_attr = f' class="{cls}"' if cls else ""
        out = [f"<table{cls_attr}><thead><tr>"]
        out += [f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>" for i, h in enumerate(header)]
        out.append("</tr></thead><tbody>")
        for r, row in enumerate(rows):
            rid = row_ids[r] if row_ids else None
            out.append(f'<tr id="{_e(rid)}">' if rid else "<tr>")
            for i, cell in enumerate(row):
                raw = cell if isinstance(cell, _Raw) else _e(cell)
                out.append(f'<td class="n">{raw}</td>' if i in numeric else f"<td>{raw}</td>")
            out.append("</tr>")
        out.append("</tbody></table>")
        self.add("".join(out))

    def kv(self, rows: Iterable[tuple[str, Any]]) -> None:
        self.add(
            '<table class="kv"><tbody>'
            + "".join(f"<tr><th>{_e(k)}</th><td>{v if isinstance(v, _Raw) else _e(v)}</td></tr>" for k, v in rows)
            + "</tbody></table>"
        )

    def figure(self, report: Report, name: str, caption: str) -> None:
        png = report.figures.get(name)
        if not png:
            return
        data = base64.b64encode(png).decode("ascii")
        self.add(
            f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}"/>'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )

    def note(self, text: str | None, cls: str = "note") -> None:
        if text:
            self.add(f'<div class="{cls}">{_e(text)}</div>')


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _cls_metric(value: Any, low: float = LOW_RECALL) -> _Raw:
    text = _e(_f(value))
    if isinstance(value, (int, float)) and value < low:
        return _Raw(f'<span class="bad">{text}</span>')
    return _Raw(text)


def _cls_delta(value: float | None) -> _Raw:
    if value is None:
        return _Raw("-")
    cls = "up" if value >= DELTA_SHOWN else "down" if value <= -DELTA_SHOWN else "muted"
    return _Raw(f'<span class="{cls}">{_e(_delta(value))}</span>')


def render_html(report: Report) -> str:
    """One self-contained HTML document (inline CSS, PNG data URIs; well-formed XML as well)."""
    h = report.headline
    doc = _Html()
    doc.add(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
        f"<title>hotelbot report {_e(report.version)}</title><style>{_CSS}</style></head><body>"
    )
    doc.add(f"<header><h1>hotelbot intent classifier: report for {_e(report.version)}</h1>")
    for line in _summary_lines(report):
        doc.add(f"<p>{_e(line)}</p>")
    doc.add('<div class="cards">')
    for key in ("overall_score", "accuracy", "macro_f1", "weighted_f1", "in_scope_accuracy", "out_of_scope_recall"):
        if h.get(key) is not None:
            label = f"overall ({h['metric']})" if key == "overall_score" else key.replace("_", " ")
            doc.add(
                f'<div class="card" id="card-{key}"><div class="k">{_e(label)}</div>'
                f'<div class="v">{_e(_f(h[key]))}</div></div>'
            )
    doc.add("</div></header><nav>")
    for sid, title in SECTIONS:
        doc.add(f'<a href="#{sid}">{_e(title)}</a>')
    doc.add("</nav><main>")
    for number, (sid, title) in enumerate(SECTIONS, 1):
        doc.add(f'<section id="{sid}"><h2>{number}. {_e(title)}</h2>')
        getattr(_HtmlSections, sid.replace("-", "_"))(doc, report)
        doc.add("</section>")
    if report.components:
        doc.add('<section id="components"><h2>Other components</h2>')
        for cname, c in report.components.items():
            doc.add(f"<h3>{_e(cname)}</h3>")
            doc.kv(_component_facts(c))
            header, rows, numeric = _component_table(c)
            if rows:
                doc.table(header, rows, numeric=numeric)
            title, header, samples = _component_samples(c)
            if samples:
                doc.add(f"<h4>{_e(title)}</h4>")
                doc.table(header, samples)
        doc.add("</section>")
    doc.add("</main><footer>")
    for note in report.notes:
        doc.add(f"<p>note: {_e(note)}</p>")
    doc.add(
        f"<p>Generated by hotelbot from {_e(report.source)} at {_e(report.generated_at)}. "
        f"Metrics are rendered with {METRIC_DIGITS} decimals from the version's metrics.json.</p>"
    )
    doc.add("</footer></body></html>\n")
    return "".join(doc.parts)


class _HtmlSections:
    @staticmethod
    def data(doc: _Html, r: Report) -> None:
        d = r.data
        doc.kv(
            [
                ("train texts", d["train_size"]),
                ("validation texts", d["validation_size"]),
                ("intents", d["num_labels"]),
                ("largest / smallest intent", f"{d['imbalance_ratio']:.1f}:1" if d["imbalance_ratio"] else "-"),
                ("source", d["source"] or "-"),
                ("fingerprint", (d["fingerprint"] or "-")[:16]),
            ]
        )
        if d["warnings"]:
            doc.add("<h3>Quality warnings from prepare</h3>")
            for w in d["warnings"]:
                doc.note(f"{w.get('code')}: {w.get('message')}", "warn")
        else:
            doc.add('<p class="muted">prepare reported no data-quality warnings.</p>')
        doc.figure(r, "examples_per_intent.png", "Examples per intent, train and validation split")
        rows = sorted(d["examples_per_intent"].items(), key=lambda kv: (kv[1]["total"], kv[0]))
        doc.add("<details><summary>Examples per intent as a table (smallest first)</summary>")
        doc.table(
            ["intent", "train", "validation", "total"],
            [
                (
                    k,
                    v["train"],
                    v["validation"],
                    _Raw(f'<span class="bad">{v["total"]}</span>') if v["total"] < FEW_EXAMPLES else v["total"],
                )
                for k, v in rows
            ],
            numeric=(1, 2, 3),
            cls="compact",
        )
        doc.add("</details>")

    @staticmethod
    def training(doc: _Html, r: Report) -> None:
        t = r.training
        doc.kv(
            [
                ("epochs run / configured", f"{_num(t['epochs_run'])} / {_num(t['configured_epochs'])}"),
                ("kept (best) epoch", _num(t["best_epoch"])),
                (
                    "early stopping",
                    ("stopped early" if t["early_stopped"] else "never triggered")
                    + (
                        f" (patience {t['early_stopping_patience']})" if t["early_stopping_patience"] else " (disabled)"
                    ),
                ),
                ("training time", _secs(t["duration_seconds"])),
                ("final training loss (last logs)", _f(t["final_train_loss"], 3)),
                (
                    "final / best validation loss",
                    f"{_f(t['final_validation_loss'], 3)} / {_f(t['best_validation_loss'], 3)}",
                ),
                (
                    "accuracy on a training sample",
                    f"{_f(t['train_sample_accuracy'])} ({t['train_sample_size'] or 0} texts)"
                    if t["train_sample_accuracy"] is not None
                    else "-",
                ),
                ("validation accuracy", _f(t["validation_accuracy"])),
                ("train - validation gap", _delta(t["train_validation_gap"])),
            ]
        )
        doc.figure(r, "training_curves.png", "Training loss per logging step, validation loss and metrics per epoch")
        if t["epochs"]:
            doc.table(
                ["epoch", "step", "validation loss", "accuracy", "macro-F1"],
                [
                    (
                        _num(e.get("epoch")),
                        e.get("step"),
                        _f(e.get("loss"), 3),
                        _f(e.get("accuracy")),
                        _f(e.get("macro_f1")),
                    )
                    for e in t["epochs"]
                ],
                numeric=(0, 1, 2, 3, 4),
            )
        else:
            doc.note("training_history.json holds no per-epoch evaluations")

    @staticmethod
    def confusion(doc: _Html, r: Report) -> None:
        c = r.confusion
        doc.add(
            f"<p>Rows are true intents, columns predictions, each row normalised to 100%; intents are ordered "
            f"so that those confused with each other sit together. {_errors_phrase(c['total_errors'])}.</p>"
        )
        doc.figure(r, "confusion_matrix.png", "Row-normalised confusion matrix (percent of each true intent)")
        if c["top_confusions"]:
            doc.add("<h3>Most frequent confusions</h3>")
            doc.table(
                ["true intent", "predicted as", "texts", "share of true intent"],
                [(p["true"], p["predicted"], p["count"], _pct(p["share_of_true"])) for p in c["top_confusions"]],
                numeric=(2, 3),
            )

    @staticmethod
    def per_intent(doc: _Html, r: Report) -> None:
        doc.add(
            f"<p>Worst F1 first. Values below {LOW_RECALL:.2f} are red. Examples are misclassified validation "
            "texts (highest confidence first).</p>"
        )
        rows, ids = [], []
        for row in r.per_intent:
            examples = "".join(
                f"<li>\u201c{_e(x['text'])}\u201d \u2192 {_e(x['predicted'])} "
                f'<span class="muted">({x["confidence"]:.2f})</span></li>'
                for x in row["misclassified_examples"]
            )
            rows.append(
                (
                    row["intent"],
                    _cls_metric(row["precision"]),
                    _cls_metric(row["recall"]),
                    _cls_metric(row["f1"]),
                    row["support"],
                    _num(row["train_examples"]),
                    _pairs(row["confused_with"]),
                    _pairs(row["mistaken_for_it"]),
                    _Raw(f'<ul class="ex small">{examples}</ul>' if examples else '<span class="muted">-</span>'),
                )
            )
            ids.append(f"intent-{row['intent']}")
        doc.table(
            [
                "intent",
                "precision",
                "recall",
                "F1",
                "support",
                "train ex.",
                "predicted as (recall errors)",
                "mistaken for it (precision errors)",
                "misclassified examples",
            ],
            rows,
            numeric=(1, 2, 3, 4, 5),
            row_ids=ids,
        )

    @staticmethod
    def confidence(doc: _Html, r: Report) -> None:
        c = r.confidence
        doc.kv(
            [
                (
                    "right predictions: median / 5th pct confidence",
                    f"{_f(c['correct']['median'], 3)} / {_f(c['correct']['p5'], 3)} ({c['correct']['count']} texts)",
                ),
                (
                    "wrong predictions: median / 95th pct confidence",
                    f"{_f(c['wrong']['median'], 3)} / {_f(c['wrong']['p95'], 3)} ({c['wrong']['count']} texts)",
                ),
                (
                    "out_of_scope threshold",
                    f"{c['threshold']:.2f}"
                    if c["threshold"] is not None
                    else "not applied: " + r.headline["out_of_scope_detector"]
                    if str(r.headline.get("out_of_scope_detector") or "").startswith("kNN")
                    else "not set (metadata key out_of_scope_threshold)",
                ),
            ]
        )
        at = c.get("at_threshold")
        if at:
            doc.add(
                f"<p>At the threshold {at['threshold']:.2f}: {at['wrong_rejected']} of {at['wrong_total']} wrong "
                f"answers become out_of_scope fallbacks, {at['correct_rejected']} of {at['correct_total']} right "
                f"answers are lost; {_pct(at['rejected_share'])} of texts are rejected; accuracy with the "
                f"threshold applied {_f(at['accuracy_with_threshold'])}.</p>"
            )
        s = c.get("suggested_threshold")
        if s:
            doc.add(
                f'<p class="muted">A threshold of {s["threshold"]:.2f} would turn {s["wrong_rejected"]} of '
                f"{s['wrong_total']} wrong answers into fallbacks while losing {s['correct_rejected']} of "
                f"{s['correct_total']} right ones (the best net gain on this validation split among thresholds losing at "
                f"most {MAX_RIGHT_LOST:.0%} of right answers).</p>"
            )
        doc.figure(r, "confidence.png", "Confidence of the predicted intent for right and wrong predictions")

    @staticmethod
    def resources(doc: _Html, r: Report) -> None:
        res = r.resources
        hw = res.get("hardware") or {}
        if hw:
            doc.kv(
                [
                    ("device", hw.get("device", "-")),
                    ("CPU cores / torch threads", f"{hw.get('cpu_count', '-')} / {hw.get('torch_threads', '-')}"),
                    ("RAM", f"{hw.get('ram_gb', '-')} GB"),
                    ("GPUs", ", ".join(hw.get("gpus") or []) or "none"),
                    ("platform", hw.get("platform", "-")),
                ]
            )
        if not res["available"]:
            doc.note(res["note"])
            return
        doc.table(
            ["series", "samples", "min", "mean", "max"],
            [
                (s["label"], s["points"], f"{s['min']:.1f}", f"{s['mean']:.1f}", f"{s['max']:.1f}")
                for s in res["series"].values()
            ],
            numeric=(1, 2, 3, 4),
        )
        doc.add(f'<p class="muted small">MLflow run {_e(res["run_id"])} in {_e(res["tracking_uri"])}</p>')
        doc.figure(r, "resources.png", "CPU, memory (and GPU) during training")

    @staticmethod
    def performance(doc: _Html, r: Report) -> None:
        p = r.performance
        lat = p["latency"]
        doc.kv(
            [
                ("training time", _secs(p["training_seconds"])),
                ("epochs / steps", f"{_num(p['epochs_run'])} / {_num(p['steps'])}"),
                ("time per epoch", _secs(p["seconds_per_epoch"])),
                (
                    "inference latency p50 / p95 (one text)",
                    f"{_ms(lat.get('p50_ms'))} / {_ms(lat.get('p95_ms'))} over {lat['texts']} texts"
                    if lat["measured"]
                    else "not measured",
                ),
                (
                    "batch throughput (validation split)",
                    f"{p['batch_texts_per_second']:.0f} texts/s" if p["batch_texts_per_second"] else "-",
                ),
                ("model/ size", _bytes(p["size_bytes"]["model_dir"])),
                *(
                    [("intent_classifier.pt size", _bytes(p["size_bytes"]["intent_classifier_pt"]))]
                    if p["size_bytes"]["intent_classifier_pt"]
                    else []
                ),
                (
                    "parameters trainable / frozen",
                    f"{_num(p['trainable_parameters'])} / {_num(p['frozen_parameters'])}",
                ),
            ]
        )

    @staticmethod
    def comparison(doc: _Html, r: Report) -> None:
        c = r.comparison
        if not c["references"]:
            doc.note(c["note"] or "nothing to compare with")
            return
        keys = [k for k in OVERALL_KEYS if any(k in ref["overall"] for ref in c["references"])]
        header = ["metric", r.version] + [f"{ref['version']} ({', '.join(ref['roles'])})" for ref in c["references"]]
        rows = []
        for key in keys:
            this = next((ref["overall"][key]["this"] for ref in c["references"] if key in ref["overall"]), None)
            cells: list[Any] = [key, _f(this)]
            for ref in c["references"]:
                d = ref["overall"].get(key)
                cells.append(_Raw(f"{_e(_f(d['other']))} ({_cls_delta(d['delta'])})") if d else "-")
            rows.append(cells)
        doc.add("<p>Each cell: the other version's value and (this version minus it).</p>")
        doc.table(header, rows, numeric=tuple(range(1, len(header))))
        for ref in c["references"]:
            doc.add(f"<h3>vs {_e(ref['version'])} ({_e(', '.join(ref['roles']))})</h3>")
            if not ref["same_data"]:
                doc.note("trained and validated on different data: deltas are indicative only")
            if not ref["per_intent_available"]:
                doc.note(f"{ref['version']} has no metrics.json: overall metrics only")
                continue
            improved = ", ".join(f"{d['intent']} {d['delta']:+.3f}" for d in ref["improved"]) or "none"
            regressed = ", ".join(f"{d['intent']} {d['delta']:+.3f}" for d in ref["regressed"]) or "none"
            doc.add(
                f'<p><span class="up">improved F1</span> (\u2265 {DELTA_SHOWN}): {_e(improved)}<br/>'
                f'<span class="down">regressed F1</span>: {_e(regressed)}</p>'
            )
            if ref["new_intents"] or ref["removed_intents"]:
                doc.add(
                    f"<p>new intents: {_e(', '.join(ref['new_intents']) or 'none')}; removed: "
                    f"{_e(', '.join(ref['removed_intents']) or 'none')}</p>"
                )
        doc.figure(r, "f1_deltas.png", "Per-intent F1 change against the first version listed above")

    @staticmethod
    def recommendations(doc: _Html, r: Report) -> None:
        doc.add('<ul class="recs">')
        for rec in r.recommendations:
            doc.add(
                f'<li><span class="sev sev-{_e(rec["severity"])}">{_e(rec["severity"])}</span>'
                f'{_e(rec["message"])} <span class="muted small">[{_e(rec["code"])}]</span></li>'
            )
        doc.add("</ul>")
