"""Concrete, number-backed advice from a built report: one rule per problem, each firing at a documented
threshold (the numbers a rule fires at are part of the message it writes)."""

from __future__ import annotations

from typing import Any

from ..data import OUT_OF_SCOPE
from .formatting import _f
from .report import Report

LOW_RECALL = 0.8
LOW_PRECISION = 0.8
FEW_EXAMPLES = 10
FEW_VALIDATION_TEXTS = 5
IMBALANCE_RATIO = 3.0
TRAIN_VAL_GAP = 0.10
UNDERFIT_TRAIN_ACCURACY = 0.90
STILL_IMPROVING = 0.005
REGRESSION_OVERALL = 0.01
REGRESSION_INTENT = 0.05
LOW_OOS_RECALL = 0.7
SLOW_P95_MS = 100.0
MAX_INTENT_RECOMMENDATIONS = 8
SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2}


def _rec(severity: str, code: str, message: str, intent: str | None = None) -> dict[str, Any]:
    return {"severity": severity, "code": code, "message": message, "intent": intent}


def recommendations(report: Report, *, min_score: float = 0.8) -> list[dict[str, Any]]:
    """Concrete, number-backed advice from a built report (rules documented by their thresholds)."""
    recs: list[dict[str, Any]] = []
    h = report.headline
    metric, score = h.get("metric", "macro_f1"), h.get("overall_score")
    if isinstance(score, (int, float)) and score < min_score:
        recs.append(
            _rec(
                "high",
                "below_gate",
                f"{metric} {_f(score)} is below the deployment gate {min_score:.2f}: "
                "this version would fail `hotelbot validate`",
            )
        )

    # Regressions against the deployed version.
    for ref in report.comparison.get("references", []):
        if "deployed" not in ref["roles"]:
            continue
        d = ref["overall"].get("overall_score")
        caveat = "" if ref["same_data"] else " (measured on different validation data)"
        if d and d["delta"] < -REGRESSION_OVERALL:
            recs.append(
                _rec(
                    "high",
                    "regression_vs_deployed",
                    f"{metric} {_f(d['this'])} is {_f(-d['delta'])} below the deployed {ref['version']} "
                    f"({_f(d['other'])}){caveat}: do not deploy this version as is",
                )
            )
        bad = [r for r in ref["regressed"] if r["delta"] <= -REGRESSION_INTENT]
        if bad:
            detail = ", ".join(f"{r['intent']} {r['delta']:+.2f}" for r in bad[:5])
            recs.append(
                _rec(
                    "medium",
                    "intent_regression_vs_deployed",
                    f"F1 dropped vs deployed {ref['version']}{caveat}: {detail}; look at what changed in "
                    "their examples",
                )
            )

    # Per-intent problems, worst first.
    counts = report.data.get("examples_per_intent") or {}
    intent_recs: list[tuple[float, dict[str, Any]]] = []
    for row in report.per_intent:
        label, recall, precision = row["intent"], row["recall"], row["precision"]
        if recall is not None and recall < LOW_RECALL and row["support"]:
            top = row["confused_with"][0] if row["confused_with"] else None
            with_ = f", confused with {top['intent']} ({top['count']} of {row['support']})" if top else ""
            example = row["misclassified_examples"][0]["text"] if row["misclassified_examples"] else None
            eg = f"; e.g. \u201c{example}\u201d" if example else ""
            intent_recs.append(
                (
                    recall,
                    _rec(
                        "high" if recall < 0.5 else "medium",
                        "low_recall",
                        f"add examples to {label}: recall {recall:.2f}{with_}{eg}",
                        label,
                    ),
                )
            )
        if precision is not None and precision < LOW_PRECISION and row["mistaken_for_it"]:
            who = ", ".join(f"{m['intent']} ({m['count']})" for m in row["mistaken_for_it"][:3])
            intent_recs.append(
                (
                    precision,
                    _rec(
                        "high" if precision < 0.5 else "medium",
                        "low_precision",
                        f"{label} absorbs other intents: precision {precision:.2f}, texts of "
                        f"{who} were predicted as {label}; make its examples more distinctive "
                        "or add contrasting examples to those intents",
                        label,
                    ),
                )
            )
    intent_recs.sort(key=lambda t: (SEVERITY_ORDER[t[1]["severity"]], t[0], t[1]["intent"] or ""))
    recs.extend(r for _, r in intent_recs[:MAX_INTENT_RECOMMENDATIONS])
    if len(intent_recs) > MAX_INTENT_RECOMMENDATIONS:
        recs.append(
            _rec(
                "low",
                "more_intents",
                f"{len(intent_recs) - MAX_INTENT_RECOMMENDATIONS} more weak intent(s) "
                "are listed in the per-intent table",
            )
        )

    # Pairs confused both ways.
    pairs = {(p["true"], p["predicted"]): p["count"] for p in report.confusion.get("top_confusions", [])}
    seen = set()
    for (a, b), n in pairs.items():
        back = pairs.get((b, a))
        if back and (b, a) not in seen and n + back >= 3:
            seen.add((a, b))
            recs.append(
                _rec(
                    "medium",
                    "confused_pair",
                    f"{a} and {b} are confused both ways ({n} + {back} validation texts): rewrite their "
                    "examples so they differ, or merge them if the bot answers both the same way",
                    a,
                )
            )

    # Data.
    few = sorted((label, c["total"]) for label, c in counts.items() if c["total"] < FEW_EXAMPLES)
    if few:
        recs.append(
            _rec(
                "medium",
                "few_examples",
                "add examples to intents with fewer than "
                f"{FEW_EXAMPLES}: " + ", ".join(f"{label} ({n})" for label, n in few),
            )
        )
    thin = sorted(label for label, c in counts.items() if 0 < c["validation"] < FEW_VALIDATION_TEXTS)
    if thin:
        recs.append(
            _rec(
                "low",
                "small_validation",
                f"{len(thin)} intent(s) have fewer than {FEW_VALIDATION_TEXTS} validation texts "
                f"({', '.join(thin[:6])}{'...' if len(thin) > 6 else ''}): their scores move a lot with one "
                "text; add data",
            )
        )
    ratio = report.data.get("imbalance_ratio")
    codes = {w.get("code") for w in report.data.get("warnings", [])}
    if (ratio and ratio > IMBALANCE_RATIO) or "class_imbalance" in codes:
        largest = max(counts.items(), key=lambda kv: kv[1]["total"])[0] if counts else "?"
        smallest = min(counts.items(), key=lambda kv: kv[1]["total"])[0] if counts else "?"
        recs.append(
            _rec(
                "medium",
                "class_imbalance",
                f"class imbalance {ratio:.1f}:1 ({largest} vs {smallest}): add examples to the small intents"
                if ratio
                else "class imbalance reported by prepare: add examples to the small intents",
            )
        )
    if "near_duplicates_across_split" in codes:
        recs.append(
            _rec(
                "low",
                "near_duplicates",
                "some validation texts nearly equal training texts: the validation "
                "scores are optimistic; remove the near duplicates",
            )
        )

    # Training dynamics.
    t = report.training
    gap = t.get("train_validation_gap")
    if gap is not None and gap > TRAIN_VAL_GAP:
        recs.append(
            _rec(
                "medium",
                "overfitting",
                f"large train/validation gap: accuracy {t['train_sample_accuracy']:.2f} on "
                f"{t['train_sample_size']} training texts vs {t['validation_accuracy']:.2f} on validation; "
                "add more varied examples, raise dropout/weight decay, or train fewer epochs",
            )
        )
    train_acc = t.get("train_sample_accuracy")
    if train_acc is not None and train_acc < UNDERFIT_TRAIN_ACCURACY:
        fix = (
            "raise the learning rate or --patience (early stopping ended the run), or use a larger base model"
            if t.get("early_stopped")
            else "train more epochs, raise the learning rate, or use a larger base model"
        )
        recs.append(
            _rec("medium", "underfitting", f"the model fits only {train_acc:.2f} of its own training texts: {fix}")
        )
    gain = t.get("last_epoch_macro_f1_gain")
    if (
        not t.get("early_stopped")
        and gain is not None
        and gain > STILL_IMPROVING
        and t.get("best_epoch") is not None
        and t.get("epochs")
        and t["best_epoch"] == t["epochs"][-1].get("epoch")
    ):
        more = int((t.get("configured_epochs") or len(t["epochs"])) * 1.5 + 0.5)
        recs.append(
            _rec(
                "medium",
                "more_epochs",
                f"early stopping never triggered and validation macro-F1 still rose {gain:+.3f} in the last "
                f"epoch: train longer (e.g. --epochs {more})",
            )
        )
    if (
        t.get("best_validation_loss") is not None
        and t.get("final_validation_loss") is not None
        and t["final_validation_loss"] > 1.25 * t["best_validation_loss"] + 0.02
    ):
        recs.append(
            _rec(
                "low",
                "validation_loss_rising",
                f"validation loss rose from {t['best_validation_loss']:.3f} to {t['final_validation_loss']:.3f}"
                ": the model grows over-confident; fewer epochs or more regularisation",
            )
        )

    # Out of scope and confidence.
    oos = h.get("out_of_scope_recall")
    c = report.confidence
    suggestion = c.get("suggested_threshold")
    if isinstance(oos, (int, float)) and oos < LOW_OOS_RECALL:
        tip = ""
        knn = str(h.get("out_of_scope_detector") or "").startswith("kNN")  # no softmax threshold to suggest
        if suggestion and c.get("threshold") is None and not knn:
            tip = (
                f", or set out_of_scope_threshold {suggestion['threshold']:.2f} (it turns "
                f"{suggestion['wrong_rejected']} of {suggestion['wrong_total']} wrong answers into fallbacks and "
                f"loses {suggestion['correct_rejected']} of {suggestion['correct_total']} right ones)"
            )
        recs.append(
            _rec(
                "high" if oos < 0.5 else "medium",
                "out_of_scope_recall",
                f"out_of_scope recall {oos:.2f}: add more varied out-of-scope examples{tip}",
                OUT_OF_SCOPE,
            )
        )
    at = c.get("at_threshold")
    if at and at["correct_total"] and at["correct_rejected"] / at["correct_total"] > 0.10:
        recs.append(
            _rec(
                "medium",
                "threshold_too_high",
                f"out_of_scope_threshold {at['threshold']:.2f} rejects {at['correct_rejected']} of "
                f"{at['correct_total']} right answers: lower it",
            )
        )
    elif (
        at
        and at["wrong_total"]
        and at["wrong_rejected"] / at["wrong_total"] < 0.25
        and suggestion
        and suggestion["threshold"] > at["threshold"]
    ):
        recs.append(
            _rec(
                "low",
                "threshold_too_low",
                f"out_of_scope_threshold {at['threshold']:.2f} catches only {at['wrong_rejected']} of "
                f"{at['wrong_total']} wrong answers; {suggestion['threshold']:.2f} would catch "
                f"{suggestion['wrong_rejected']}",
            )
        )

    p95 = (report.performance.get("latency") or {}).get("p95_ms")
    if p95 is not None and p95 > SLOW_P95_MS:
        recs.append(
            _rec(
                "low",
                "slow_inference",
                f"p95 latency {p95:.0f} ms per text: consider a smaller base model or a shorter max_length",
            )
        )
    if not recs:
        recs.append(
            _rec(
                "low",
                "nothing_stands_out",
                "no rule fired: the metrics, data and training curves look healthy for this data set",
            )
        )
    recs.sort(key=lambda r: SEVERITY_ORDER[r["severity"]])
    return recs
