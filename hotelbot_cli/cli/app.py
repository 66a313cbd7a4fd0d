"""The root Typer app. Command modules are imported here, but they import heavy libraries
(torch, transformers, mlflow, sklearn) only inside their functions, so `hotelbot --help` stays fast."""

from __future__ import annotations

import typer

from .. import __version__
from .config_cmd import config_cmd
from .deploy import deploy_cmd, history_cmd, rollback_cmd, verify_cmd
from .models import models_cmd
from .predict import predict_cmd
from .prepare import prepare_cmd
from .report import report_cmd
from .serve import serve_cmd
from .train import train_cmd
from .validate import validate_cmd
from .versions import versions_cmd

app = typer.Typer(
    name="hotelbot",
    help="Train, validate and ship the intent classifier of a Spanish-speaking hotel chatbot.\n\n"
         "Typical flow: hotelbot prepare datasets/hotel_intents_es.json && hotelbot train && "
         "hotelbot validate && hotelbot predict \"quiero ver las noticias\"",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"hotelbot {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """Train, validate and ship the intent classifier of a Spanish-speaking hotel chatbot."""


app.command("prepare")(prepare_cmd)
app.command("train")(train_cmd)
app.command("validate")(validate_cmd)
app.command("predict")(predict_cmd)
app.command("deploy")(deploy_cmd)
app.command("rollback")(rollback_cmd)
app.command("versions")(versions_cmd)
app.command("report")(report_cmd)
app.command("serve")(serve_cmd)
app.command("verify")(verify_cmd)
app.command("history")(history_cmd)
app.command("models")(models_cmd)
app.command("config")(config_cmd)


def main() -> None:
    app()
