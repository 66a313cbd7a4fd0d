"""hotelbot report: the report builds for a tiny model, renders as HTML / Markdown / JSON with every section,
shows exactly the numbers of the version's metrics.json, and degrades gracefully without MLflow."""

from __future__ import annotations

import copy
import json
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hotelbot_cli.cli.report import report_cmd
from hotelbot_cli.registry import ModelRegistry
from hotelbot_cli.reporting import (
    METRIC_DIGITS,
    SECTION_KEYS,
    SECTIONS,
    build_report,
    build_report_from_dir,
    confusion_order,
    recommendations,
    render_html,
    render_json,
    render_markdown,
    write_report_files,
    write_training_report,
)

runner = CliRunner()
WORSE_INTENT = "greeting"
THRESHOLD = 0.42


def fmt(value: float) -> str:
    return f"{value:.{METRIC_DIGITS}f}"


def publish_variant(registry: ModelRegistry, source: str, mutate=None, extra_metadata=None):
    """Publish a copy of ``source`` (like conftest.clone_version) with changed files and metadata."""
    info = registry.get(source)
    with registry.staging() as staged:
        shutil.rmtree(staged)
        shutil.copytree(info.path, staged)
        (staged / "metadata.json").unlink()
        if mutate:
            mutate(staged)
        meta = {k: v for k, v in info.metadata.items() if k not in ("version", "files", "created_at")}
        meta.update(extra_metadata or {})
        return registry.publish(staged, meta)


def record_worse_metrics(staged: Path) -> None:
    """v0002's metrics.json says it is worse than v0001 (the numbers the report must show are these)."""
    path = staged / "metrics.json"
    metrics = json.loads(path.read_text("utf-8"))
    metrics["per_intent"][WORSE_INTENT].update(precision=0.6123456, recall=0.3333333, f1=0.4210526)
    metrics["macro_f1"] = metrics["overall_score"] = round(metrics["macro_f1"] - 0.1234567, 7)
    path.write_text(json.dumps(metrics), "utf-8")


@pytest.fixture(scope="module")
def built(trained_template, tmp_path_factory):
    """Registry copy: v0001 (deployed) and v0002 (worse metrics.json, an out-of-scope threshold); the
    report of v0002, built once for the module."""
    root = tmp_path_factory.mktemp("report") / "registry"
    shutil.copytree(trained_template, root, symlinks=True)
    registry = ModelRegistry(root)
    publish_variant(registry, "v0001", record_worse_metrics, {"out_of_scope_threshold": THRESHOLD})
    registry.write_current_state({"version": "v0001", "previous": []})
    report = build_report(registry, "v0002", previous_n=3, measure_latency=True)
    metrics = json.loads((root / "versions" / "v0002" / "metrics.json").read_text("utf-8"))
    return registry, report, metrics


class PageParser(HTMLParser):
    """Element ids, <img> sources, links, and the cell texts of every <tr id=...>."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.rows: dict[str, list[str]] = {}
        self._row: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.append(attrs["id"])
        if tag == "img":
            self.srcs.append(attrs.get("src") or "")
        if tag in ("a", "link", "script"):
            self.hrefs.append(attrs.get("href") or attrs.get("src") or "")
        if tag == "tr" and attrs.get("id"):
            self._row = attrs["id"]
            self.rows[self._row] = []
        if tag == "td" and self._row:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None and self._cell is not None:
            self.rows[self._row].append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


def test_every_section_is_in_html_markdown_and_json(built):
    _, report, _ = built
    page = render_html(report)
    ET.fromstring(page)  # well-formed (XHTML-style): every tag closed, every entity escaped
    parsed = parse(page)
    section_ids = [sid for sid, _ in SECTIONS]
    assert [i for i in parsed.ids if i in section_ids] == section_ids
    assert len(parsed.ids) == len(set(parsed.ids)), "duplicate ids"
    # self-contained: every plot embedded, nothing fetched from anywhere
    assert parsed.srcs and all(src.startswith("data:image/png;base64,") for src in parsed.srcs)
    assert len(parsed.srcs) == len(report.figures) >= 5
    assert all(h.startswith("#") for h in parsed.hrefs)
    assert "http://" not in page and "https://" not in page

    markdown = render_markdown(report, "figs")
    for number, (sid, title) in enumerate(SECTIONS, 1):
        assert f'<a id="{sid}"></a>' in markdown and f"## {number}. {title}" in markdown
    assert "(figs/confusion_matrix.png)" in markdown

    doc = json.loads(render_json(report))
    assert set(SECTION_KEYS) <= set(doc)
    assert doc["version"] == "v0002" and sorted(doc["figures"]) == sorted(report.figures)


def test_numbers_equal_the_versions_metrics_json(built):
    _, report, metrics = built
    page, markdown, doc = render_html(report), render_markdown(report), json.loads(render_json(report))
    parsed = parse(page)

    assert doc["headline"]["macro_f1"] == metrics["macro_f1"]
    assert doc["headline"]["accuracy"] == metrics["accuracy"]
    assert f'<div class="v">{fmt(metrics["macro_f1"])}</div>' in page
    assert f"| macro_f1 | {fmt(metrics['macro_f1'])} |" in markdown

    by_intent = {row["intent"]: row for row in doc["per_intent"]}
    assert set(by_intent) == set(metrics["per_intent"])
    for label, stats in metrics["per_intent"].items():
        row = by_intent[label]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == (
            stats["precision"], stats["recall"], stats["f1"], stats["support"])
        cells = parsed.rows[f"intent-{label}"]
        assert cells[:5] == [label, fmt(stats["precision"]), fmt(stats["recall"]), fmt(stats["f1"]),
                             str(stats["support"])]
        assert (f"| {label} | {fmt(stats['precision'])} | {fmt(stats['recall'])} | {fmt(stats['f1'])} | "
                f"{stats['support']} |") in markdown
    # worst intent first, in every format
    assert doc["per_intent"][0]["intent"] == WORSE_INTENT
    assert parsed.rows and next(iter(parsed.rows)) == f"intent-{WORSE_INTENT}"
    assert doc["confusion"]["matrix"] == metrics["confusion_matrix"]["matrix"]


def test_comparison_recommendations_threshold_and_latency(built):
    _, report, metrics = built
    doc = report.to_dict()
    refs = doc["comparison"]["references"]
    assert [r["version"] for r in refs] == ["v0001"] and refs[0]["roles"] == ["deployed", "previous"]
    v1 = json.loads((Path(report.source).parent / "v0001" / "metrics.json").read_text("utf-8"))
    assert refs[0]["per_intent_f1_deltas"][WORSE_INTENT] == metrics["per_intent"][WORSE_INTENT]["f1"] - \
        v1["per_intent"][WORSE_INTENT]["f1"]
    assert refs[0]["overall"]["macro_f1"]["delta"] == metrics["macro_f1"] - v1["macro_f1"]
    assert WORSE_INTENT in [r["intent"] for r in refs[0]["regressed"]]

    codes = [r["code"] for r in doc["recommendations"]]
    assert "regression_vs_deployed" in codes
    low = [r for r in doc["recommendations"] if r["code"] == "low_recall" and r["intent"] == WORSE_INTENT]
    assert low and "recall 0.33" in low[0]["message"] and low[0]["severity"] == "high"

    assert doc["confidence"]["threshold"] == THRESHOLD and doc["headline"]["out_of_scope_threshold"] == THRESHOLD
    at = doc["confidence"]["at_threshold"]
    assert at["correct_total"] + at["wrong_total"] == metrics["num_examples"]
    assert f"<th>out_of_scope threshold</th><td>{THRESHOLD:.2f}</td>" in render_html(report)

    latency = doc["performance"]["latency"]
    assert latency["measured"] and latency["texts"] == min(50, metrics["num_examples"])
    assert 0 < latency["p50_ms"] <= latency["p95_ms"]
    sizes = doc["performance"]["size_bytes"]
    # versions no longer hold intent_classifier.pt (`hotelbot export --format pt` writes it): 0 bytes
    model_dir = Path(report.source) / "model"
    assert not (Path(report.source) / "intent_classifier.pt").exists() and sizes["intent_classifier_pt"] == 0
    assert sizes["model_dir"] == sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file()) > 0
    assert sizes["total"] == sizes["model_dir"]
    # the template was trained with MLflow: its system metrics are in the report
    assert doc["resources"]["available"], doc["resources"]["note"]
    assert "system/cpu_percent" in doc["resources"]["series"]


def test_rules_for_data_and_training_dynamics(built):
    _, report, _ = built
    r = copy.deepcopy(report)
    r.training.update(early_stopped=False, configured_epochs=2, best_epoch=2.0, last_epoch_macro_f1_gain=0.1,
                      epochs=[{"epoch": 1.0, "macro_f1": 0.7}, {"epoch": 2.0, "macro_f1": 0.8}],
                      train_sample_accuracy=0.99, validation_accuracy=0.8, train_validation_gap=0.19,
                      train_sample_size=40)
    r.data["examples_per_intent"]["greeting"] = {"train": 4, "validation": 1, "total": 5}
    messages = {rec["code"]: rec["message"] for rec in recommendations(r)}
    assert "--epochs 3" in messages["more_epochs"]
    assert "accuracy 0.99 on 40 training texts vs 0.80" in messages["overfitting"]
    assert "greeting (5)" in messages["few_examples"]
    r.training["early_stopped"] = True
    assert "more_epochs" not in {rec["code"] for rec in recommendations(r)}


def test_missing_mlflow_store_is_a_note_not_an_error(built, tmp_path):
    registry, _, _ = built
    info = registry.get("v0001")
    metadata = {**info.metadata, "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'gone.db'}"}
    report = build_report_from_dir(info.path, metadata, registry, version_name="v0001", measure_latency=False,
                                   figures=False)
    assert not report.resources["available"] and "not available" in report.resources["note"]
    assert not (tmp_path / "gone.db").exists()  # reading must not create a store
    assert report.performance["latency"] == {"measured": False}
    assert report.comparison["note"] == "no deployed or earlier version to compare with"
    page = render_html(report)
    assert "not available" in page and "not measured" in page
    ET.fromstring(page)


def test_staged_report_becomes_part_of_the_immutable_version(built):
    """What training does: report into the staging dir, then publish; the checksums cover the report."""
    registry, _, _ = built
    source = registry.get("v0001")
    with registry.staging() as staged:
        shutil.rmtree(staged)
        shutil.copytree(source.path, staged)
        (staged / "metadata.json").unlink()
        metadata = {k: v for k, v in source.metadata.items() if k not in ("version", "files", "created_at")}
        report = build_report_from_dir(staged, metadata, registry, measure_latency=False, figures=False)
        assert report.version == "staged"
        assert [r["version"] for r in report.comparison["references"]] == ["v0001", "v0002"]
        paths = write_report_files(report, staged / "report")
        info = registry.publish(staged, metadata)
    assert {"report/report.html", "report/report.md", "report/report.json"} <= set(info.metadata["files"])
    assert registry.verify(info.name) == []
    assert set(paths) == {"html", "md", "json"}


def test_training_report_files_and_mlflow_artifact(built, tmp_path, mlflow_uri):
    registry, report, _ = built
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment(f"report-test-{tmp_path.name}", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(experiment).info.run_id
    mine = copy.deepcopy(report)
    mine.mlflow = {"tracking_uri": mlflow_uri, "run_id": run_id}
    paths = write_training_report(registry, "v0002", tmp_path / "reports", report=mine)
    folder = tmp_path / "reports" / "training_reports" / "v0002"
    assert paths["html"] == folder / "report.html" and paths["json"] == folder / "report.json"
    markdown = paths["md"].read_text("utf-8")
    for name in report.figures:
        assert f"(report_figures/{name})" in markdown and (folder / "report_figures" / name).is_file()
    assert json.loads(paths["json"].read_text("utf-8"))["version"] == "v0002"
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, "report")}
    assert {"report.html", "report.md", "report.json", "report_figures"} <= logged
    assert not any("MLflow" in n for n in mine.notes)

    broken = copy.deepcopy(report)
    broken.mlflow = {"tracking_uri": mlflow_uri, "run_id": "0" * 32}
    paths = write_training_report(registry, "v0002", tmp_path / "again", report=broken)
    assert paths["html"].is_file()
    assert any("could not log the report to MLflow" in n for n in broken.notes)


def _cli():
    from hotelbot_cli.cli.app import app

    if any(c.name == "report" for c in app.registered_commands):
        return app
    local = typer.Typer()
    local.callback()(lambda: None)
    local.command("report")(report_cmd)
    return local


def test_cli_json_to_stdout_html_to_default_path_and_errors(registry_copy):
    cli = _cli()
    result = runner.invoke(cli, ["report", "--format", "json", "--no-latency"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["version"] == "v0002" and set(SECTION_KEYS) <= set(doc) and doc["figures"] == []
    assert "stdout" in result.stderr

    result = runner.invoke(cli, ["report", "v0001", "--no-latency", "--previous", "0"])
    assert result.exit_code == 0, result.output
    target = Path("reports/training_reports/v0001/report.html")
    assert target.is_file() and str(target) in result.stderr and result.stdout == ""
    assert 'id="recommendations"' in target.read_text("utf-8")

    result = runner.invoke(cli, ["report", "v0099"])
    assert result.exit_code == 1 and "v0099 not found" in result.stderr
    result = runner.invoke(cli, ["report", "--format", "pdf"])
    assert result.exit_code == 2


def test_confusion_order_puts_confused_intents_together():
    labels = ["a", "b", "c", "d", "e"]
    matrix = [[8, 0, 0, 0, 2],
              [0, 10, 0, 0, 0],
              [0, 0, 7, 3, 0],
              [0, 0, 4, 6, 0],
              [3, 0, 0, 0, 7]]
    order = [labels[i] for i in confusion_order(labels, matrix)]
    assert sorted(order) == labels
    assert abs(order.index("a") - order.index("e")) == 1
    assert abs(order.index("c") - order.index("d")) == 1
    assert confusion_order(["b", "a"], [[1, 0], [0, 1]]) == [1, 0]
