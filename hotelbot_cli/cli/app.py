"""The root Typer app. Command modules are imported here, but they import heavy libraries
(torch, transformers, mlflow, sklearn) only inside their functions, so `hotelbot --help` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import __version__
from . import _options
from .config_cmd import config_cmd
from .deploy import canary_app, deploy_cmd, history_cmd, rollback_cmd, verify_cmd
from .export import export_cmd
from .inbox import inbox_app
from .maintenance import gc_cmd, migrate_cmd, prune_cmd
from .models import models_cmd
from .predict import predict_cmd
from .prepare import prepare_cmd
from .search import search_cmd
from .reply import reply_cmd
from .report import report_cmd
from .serve import serve_cmd
from .train import train_cmd
from .validate import validate_cmd
from .versions import versions_cmd

app = typer.Typer(
    name="hotelbot",
    help="Train, validate and ship the intent classifier of a Spanish-speaking hotel chatbot.\n\n"
    "Typical flow: hotelbot prepare datasets/hotel_intents_es.json && hotelbot train && "
    'hotelbot validate && hotelbot predict "quiero ver las noticias"',
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=True,  # hotelbot --install-completion (bash, zsh, fish, PowerShell)
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"hotelbot {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
    home: Optional[Path] = typer.Option(
        None,
        "--home",
        help="Project home: MLflow store, model cache [env: HOTELBOT_HOME; default: .hotelbot].",
        show_default=False,
    ),
    reports: Optional[Path] = typer.Option(
        None, "--reports", help="Reports directory [env: HOTELBOT_REPORTS; default: reports].", show_default=False
    ),
    logs: Optional[Path] = typer.Option(
        None, "--logs", help="Logs directory [env: HOTELBOT_LOGS; default: logs].", show_default=False
    ),
    mlflow_uri: Optional[str] = typer.Option(
        None,
        "--mlflow-uri",
        help="MLflow tracking URI [env: MLFLOW_TRACKING_URI; default: sqlite in the home].",
        show_default=False,
    ),
) -> None:
    """Train, validate and ship the intent classifier of a Spanish-speaking hotel chatbot."""
    _options.ROOT_PATHS.clear()
    _options.ROOT_PATHS.update(
        {
            k: v
            for k, v in {"home": home, "reports": reports, "logs": logs, "mlflow_tracking_uri": mlflow_uri}.items()
            if v is not None
        }
    )


app.command("prepare")(prepare_cmd)
app.command("train")(train_cmd)
app.command("validate")(validate_cmd)
app.command("predict")(predict_cmd)
app.command("search")(search_cmd)
app.command("deploy")(deploy_cmd)
app.command("rollback")(rollback_cmd)
app.add_typer(canary_app, name="canary")
app.command("versions")(versions_cmd)
app.command("report")(report_cmd)
app.command("reply")(reply_cmd)
app.command("serve")(serve_cmd)
app.command("verify")(verify_cmd)
app.command("history")(history_cmd)
app.command("export")(export_cmd)
app.command("gc")(gc_cmd)
app.command("prune")(prune_cmd)
app.command("migrate")(migrate_cmd)
app.command("models")(models_cmd)
app.command("config")(config_cmd)
app.add_typer(inbox_app, name="inbox")


def main() -> None:
    app()
