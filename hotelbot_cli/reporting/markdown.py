"""The report as Markdown: the same content as the HTML; plots are linked from ``<stem>_figures/``
(written next to the Markdown file by :func:`~hotelbot_cli.reporting.files.write_report`)."""

from __future__ import annotations

from typing import Any, Collection, Iterable, Sequence

from .formatting import (
    _bytes,
    _delta,
    _errors_phrase,
    _f,
    _ms,
    _num,
    _overall_rows,
    _pairs,
    _pct,
    _secs,
    _summary_lines,
)
from .other_components import _component_facts, _component_samples, _component_table
from .report import OVERALL_KEYS, SECTIONS, Report


def _md(value: Any) -> str:
    return str("-" if value is None else value).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Collection[int] = ()) -> list[str]:
    numeric = set(numeric)
    lines = [
        "| " + " | ".join(_md(h) for h in header) + " |",
        "|" + "|".join("---:" if i in numeric else "---" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return lines + [""]


def render_markdown(report: Report, figures_dir: str | None = None) -> str:
    """The same content as Markdown; images link to ``figures_dir/NAME`` (omitted when None)."""
    r = report
    out: list[str] = [f"# hotelbot intent classifier: report for {r.version}", ""]
    out += [f"- {line}" for line in _summary_lines(r)] + [""]
    out += _md_table(["metric", "value"], _overall_rows(r), numeric=(1,))
    out += ["Sections: " + " · ".join(f"[{title}](#{sid})" for sid, title in SECTIONS), ""]

    def fig(name: str, caption: str) -> None:
        if figures_dir is not None and name in r.figures:
            out.extend([f"![{caption}]({figures_dir}/{name})", ""])

    def section(number: int, sid: str, title: str) -> None:
        out.extend([f'<a id="{sid}"></a>', "", f"## {number}. {title}", ""])

    titles = dict(SECTIONS)
    d = r.data
    section(1, "data", titles["data"])
    ratio = f"{d['imbalance_ratio']:.1f}:1" if d["imbalance_ratio"] else "-"
    out += [
        f"- train texts: {d['train_size']}, validation texts: {d['validation_size']}, intents: {d['num_labels']}",
        f"- largest / smallest intent: {ratio}",
        f"- source: {d['source'] or '-'}",
        "",
    ]
    if d["warnings"]:
        out += (
            ["Quality warnings from prepare:", ""]
            + [f"- **{w.get('code')}**: {w.get('message')}" for w in d["warnings"]]
            + [""]
        )
    else:
        out += ["prepare reported no data-quality warnings.", ""]
    fig("examples_per_intent.png", "Examples per intent")
    rows = sorted(d["examples_per_intent"].items(), key=lambda kv: (kv[1]["total"], kv[0]))
    out += _md_table(
        ["intent", "train", "validation", "total"],
        [(k, v["train"], v["validation"], v["total"]) for k, v in rows],
        numeric=(1, 2, 3),
    )

    t = r.training
    section(2, "training", titles["training"])
    out += [
        f"- epochs run / configured: {_num(t['epochs_run'])} / {_num(t['configured_epochs'])}; kept epoch "
        f"{_num(t['best_epoch'])}; early stopping "
        f"{'stopped early' if t['early_stopped'] else 'never triggered'}",
        f"- training time: {_secs(t['duration_seconds'])}",
        f"- final training loss {_f(t['final_train_loss'], 3)}, final / best validation loss "
        f"{_f(t['final_validation_loss'], 3)} / {_f(t['best_validation_loss'], 3)}",
        f"- accuracy on {t['train_sample_size'] or 0} training texts {_f(t['train_sample_accuracy'])} vs validation "
        f"{_f(t['validation_accuracy'])} (gap {_delta(t['train_validation_gap'])})",
        "",
    ]
    fig("training_curves.png", "Training curves")
    if t["epochs"]:
        out += _md_table(
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

    c = r.confusion
    section(3, "confusion", titles["confusion"])
    out += [
        f"Rows are true intents, normalised to 100%, ordered so that confused intents sit together. "
        f"{_errors_phrase(c['total_errors'])}.",
        "",
    ]
    fig("confusion_matrix.png", "Confusion matrix")
    if c["top_confusions"]:
        out += _md_table(
            ["true intent", "predicted as", "texts", "share of true intent"],
            [(p["true"], p["predicted"], p["count"], _pct(p["share_of_true"])) for p in c["top_confusions"]],
            numeric=(2, 3),
        )

    section(4, "per-intent", titles["per-intent"])
    out += ["Worst F1 first.", ""]
    out += _md_table(
        [
            "intent",
            "precision",
            "recall",
            "F1",
            "support",
            "train ex.",
            "predicted as",
            "mistaken for it",
            "misclassified examples",
        ],
        [
            (
                row["intent"],
                _f(row["precision"]),
                _f(row["recall"]),
                _f(row["f1"]),
                row["support"],
                _num(row["train_examples"]),
                _pairs(row["confused_with"]),
                _pairs(row["mistaken_for_it"]),
                "; ".join(
                    f"\u201c{x['text']}\u201d \u2192 {x['predicted']} ({x['confidence']:.2f})"
                    for x in row["misclassified_examples"]
                )
                or "-",
            )
            for row in r.per_intent
        ],
        numeric=(1, 2, 3, 4, 5),
    )

    cf = r.confidence
    section(5, "confidence", titles["confidence"])
    out += [
        f"- right predictions: median confidence {_f(cf['correct']['median'], 3)}, 5th percentile "
        f"{_f(cf['correct']['p5'], 3)} ({cf['correct']['count']} texts)",
        f"- wrong predictions: median confidence {_f(cf['wrong']['median'], 3)}, 95th percentile "
        f"{_f(cf['wrong']['p95'], 3)} ({cf['wrong']['count']} texts)",
        "- out_of_scope threshold: "
        + (
            f"{cf['threshold']:.2f}"
            if cf["threshold"] is not None
            else "not applied: " + r.headline["out_of_scope_detector"]
            if str(r.headline.get("out_of_scope_detector") or "").startswith("kNN")
            else "not set"
        ),
    ]
    at = cf.get("at_threshold")
    if at:
        out.append(
            f"- at the threshold: {at['wrong_rejected']} of {at['wrong_total']} wrong answers become fallbacks, "
            f"{at['correct_rejected']} of {at['correct_total']} right answers are lost; accuracy with the "
            f"threshold {_f(at['accuracy_with_threshold'])}"
        )
    s = cf.get("suggested_threshold")
    if s:
        out.append(
            f"- suggested threshold {s['threshold']:.2f}: catches {s['wrong_rejected']} of {s['wrong_total']} "
            f"wrong answers, loses {s['correct_rejected']} of {s['correct_total']} right ones"
        )
    out.append("")
    fig("confidence.png", "Confidence histogram")

    res = r.resources
    section(6, "resources", titles["resources"])
    hw = res.get("hardware") or {}
    if hw:
        out += [
            f"- device {hw.get('device', '-')}, {hw.get('cpu_count', '-')} CPU cores, {hw.get('ram_gb', '-')} GB RAM, "
            f"GPUs: {', '.join(hw.get('gpus') or []) or 'none'}",
            "",
        ]
    if res["available"]:
        out += _md_table(
            ["series", "samples", "min", "mean", "max"],
            [
                (s["label"], s["points"], f"{s['min']:.1f}", f"{s['mean']:.1f}", f"{s['max']:.1f}")
                for s in res["series"].values()
            ],
            numeric=(1, 2, 3, 4),
        )
        fig("resources.png", "Resource usage")
    else:
        out += [f"> note: {res['note']}", ""]

    p = r.performance
    lat = p["latency"]
    section(7, "performance", titles["performance"])
    out += [
        f"- training time: {_secs(p['training_seconds'])} ({_num(p['epochs_run'])} epochs, {_num(p['steps'])} steps, "
        f"{_secs(p['seconds_per_epoch'])} per epoch)",
        (
            "- inference latency per text: p50 "
            + _ms(lat.get("p50_ms"))
            + ", p95 "
            + _ms(lat.get("p95_ms"))
            + f" over {lat['texts']} texts"
        )
        if lat["measured"]
        else "- inference latency: not measured",
        f"- batch throughput: {p['batch_texts_per_second']:.0f} texts/s"
        if p["batch_texts_per_second"]
        else "- batch throughput: -",
        f"- model size: model/ {_bytes(p['size_bytes']['model_dir'])}"
        + (
            f", intent_classifier.pt {_bytes(p['size_bytes']['intent_classifier_pt'])}"
            if p["size_bytes"]["intent_classifier_pt"]
            else ""
        ),
        f"- parameters trainable / frozen: {_num(p['trainable_parameters'])} / {_num(p['frozen_parameters'])}",
        "",
    ]

    cmp_ = r.comparison
    section(8, "comparison", titles["comparison"])
    if not cmp_["references"]:
        out += [f"> note: {cmp_['note'] or 'nothing to compare with'}", ""]
    else:
        keys = [k for k in OVERALL_KEYS if any(k in ref["overall"] for ref in cmp_["references"])]
        header = ["metric", r.version] + [f"{ref['version']} ({', '.join(ref['roles'])})" for ref in cmp_["references"]]
        rows = []
        for key in keys:
            this = next((ref["overall"][key]["this"] for ref in cmp_["references"] if key in ref["overall"]), None)
            cells = [key, _f(this)]
            for ref in cmp_["references"]:
                dd = ref["overall"].get(key)
                cells.append(f"{_f(dd['other'])} ({_delta(dd['delta'])})" if dd else "-")
            rows.append(cells)
        out += ["Each cell: the other version's value and (this version minus it).", ""]
        out += _md_table(header, rows, numeric=tuple(range(1, len(header))))
        for ref in cmp_["references"]:
            out.append(
                f"**vs {ref['version']} ({', '.join(ref['roles'])})**"
                + ("" if ref["same_data"] else " (different data: indicative only)")
            )
            out.append("")
            if ref["per_intent_available"]:
                out.append(
                    "- improved F1: "
                    + (", ".join(f"{d_['intent']} {d_['delta']:+.3f}" for d_ in ref["improved"]) or "none")
                )
                out.append(
                    "- regressed F1: "
                    + (", ".join(f"{d_['intent']} {d_['delta']:+.3f}" for d_ in ref["regressed"]) or "none")
                )
            else:
                out.append("- no metrics.json: overall metrics only")
            out.append("")
        fig("f1_deltas.png", "Per-intent F1 change")

    section(9, "recommendations", titles["recommendations"])
    out += [f"- **{rec['severity']}** {rec['message']} `[{rec['code']}]`" for rec in r.recommendations] + [""]
    if r.components:
        out += ['<a id="components"></a>', "", "## Other components", ""]
        for cname, c in r.components.items():
            out += [f"### {cname}", ""] + [f"- {key}: {value}" for key, value in _component_facts(c)] + [""]
            header, rows, numeric = _component_table(c)
            if rows:
                out += _md_table(header, rows, numeric=numeric)
            title, header, samples = _component_samples(c)
            if samples:
                out += [f"{title}:", ""] + _md_table(header, samples)
    if r.notes:
        out += ["---", ""] + [f"- note: {n}" for n in r.notes] + [""]
    out += [f"_Generated by hotelbot from {r.source} at {r.generated_at}._", ""]
    return "\n".join(out)
