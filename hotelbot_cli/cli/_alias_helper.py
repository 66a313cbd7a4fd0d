"""The helper process that moves the MLflow Model Registry aliases for a registry operation (see
``training.mlflow_hub.AliasSync``): ``python -m hotelbot_cli.cli._alias_helper TRACKING_URI``.

It imports MLflow and opens the store at once, then waits for one JSON line on stdin ({"registry": ROOT}: the
operation changed the deployed state), moves the aliases and writes {"warnings": [...]} as its last stdout
line. End of input without a line (the operation changed nothing, or its process died): it exits."""

from __future__ import annotations

import json
import sys

from ..training.mlflow_hub import preload, serve_alias_helper


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m hotelbot_cli.cli._alias_helper TRACKING_URI", file=sys.stderr)
        return 2
    result = sys.stdout
    sys.stdout = sys.stderr  # whatever MLflow prints stays off the answer line
    preload(argv[0])
    request = sys.stdin.readline()
    if not request.strip():
        return 0
    warnings = serve_alias_helper(argv[0], request)
    print(json.dumps({"warnings": warnings}), file=result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
