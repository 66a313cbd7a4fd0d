"""The helper process that moves the MLflow Model Registry aliases for a registry operation (see
``training.mlflow_hub.AliasSync``): ``HOTELBOT_ALIAS_HELPER_URI=URI python -P -m hotelbot_cli.cli._alias_helper``
(the URI in the environment, not on the command line, where other users could read its credentials).

It imports MLflow and opens the store at once, then waits for one JSON line on stdin ({"registry": ROOT}: the
operation changed the deployed state), moves the aliases and writes {"warnings": [...]} as its last stdout
line. End of input without a line (the operation changed nothing, or its process died): it exits."""

from __future__ import annotations

import json
import os
import sys

from ..training.mlflow_hub import HELPER_URI_ENV, preload, serve_alias_helper


def main(argv: list[str]) -> int:
    uri = os.environ.get(HELPER_URI_ENV, "")
    if argv or not uri:
        print(f"usage: {HELPER_URI_ENV}=TRACKING_URI python -P -m hotelbot_cli.cli._alias_helper", file=sys.stderr)
        return 2
    result = sys.stdout
    sys.stdout = sys.stderr  # whatever MLflow prints stays off the answer line
    preload(uri)
    request = sys.stdin.readline()
    if not request.strip():
        return 0
    warnings = serve_alias_helper(uri, request)
    print(json.dumps({"warnings": warnings}), file=result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
