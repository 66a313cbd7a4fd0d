"""Write docs/openapi.json: the HTTP API's OpenAPI schema as `hotelbot serve` publishes it with the default
settings (limits included). The docs' HTTP API page is rendered from it, and a test
(tests/docs/test_docs_site.py) fails when it differs from what the server publishes: rerun this script after
changing an endpoint or a limit.

    .venv/bin/python scripts/write_openapi.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "openapi.json"


def published_schema() -> dict:
    """The schema `hotelbot serve` publishes at /openapi.json with the default ServeSettings."""
    from hotelbot_cli.registry import ModelRegistry
    from hotelbot_cli.serving.app import create_app
    from hotelbot_cli.serving.settings import ServeSettings

    with tempfile.TemporaryDirectory() as tmp:  # an empty registry: the schema does not depend on a model
        return create_app(ModelRegistry(Path(tmp) / "registry"), ServeSettings()).openapi()


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=True) + "\n"


def main() -> int:
    text = render(published_schema())
    TARGET.write_text(text, "utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)} ({len(text)} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
