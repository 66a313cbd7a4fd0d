"""hotelbot config"""

from __future__ import annotations

from ._errors import handle_errors
from ._options import ConfigOpt, JsonOpt, ProfileOpt, RegistryOpt, settings_from
from ._render import out, print_json


@handle_errors
def config_cmd(
    config: ConfigOpt = None, profile: ProfileOpt = None, registry: RegistryOpt = None, json_out: JsonOpt = False
) -> None:
    """Show the effective settings (defaults < profile < config file < environment < flags).

    Examples:

        hotelbot config --profile prod

        TRAINING_EPOCHS=2 hotelbot config --config my.json --json
    """
    settings = settings_from(config, profile, registry)
    data = settings.to_dict()
    if json_out:
        print_json(data)
        return
    for section in ("training_config", "data_config", "validation_config", "paths"):
        out.print(f"[bold]{section}[/bold]")
        for key, value in data[section].items():
            out.print(f"  {key} = {value}")
    out.print(f"model_version = {data['model_version']}")
    out.print(f"sources: {' < '.join(data['sources'])}")
