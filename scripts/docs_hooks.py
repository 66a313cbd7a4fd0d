"""MkDocs hooks (mkdocs.yml `hooks:`).

* The HTTP API page's endpoint reference is rendered from docs/openapi.json, the schema `hotelbot serve`
  publishes (scripts/write_openapi.py writes it; a test keeps it equal to the server's), so the reference
  cannot drift from the code.
* `<!-- include: PATH -->` includes a file of the repository (CONTRIBUTING.md, datasets/README.md) instead
  of copying it; its links into docs/ (`docs/architecture.md`) become links between pages."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

MARKER = "<!-- openapi-reference -->"
INCLUDE = re.compile(r"<!-- include: (\S+) -->")
LONG_PATTERN = 60  # a longer regex is shown as a pointer to openapi.json, not inline


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    root = Path(config["config_file_path"]).parent
    markdown = INCLUDE.sub(lambda m: included(root, m.group(1)), markdown)
    if MARKER in markdown:
        schema = json.loads((Path(config["docs_dir"]) / "openapi.json").read_text("utf-8"))
        markdown = markdown.replace(MARKER, reference(schema))
    return markdown


def included(root: Path, relative: str) -> str:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise FileNotFoundError(f"<!-- include: {relative} -->: no such file in the repository")
    return re.sub(r"\]\(docs/", "](", path.read_text("utf-8"))


def reference(schema: dict[str, Any]) -> str:
    components = schema.get("components", {}).get("schemas", {})
    out: list[str] = []
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            out += [f"### `{method.upper()} {path}`", "", op.get("summary", "")]
            if op.get("description"):
                out += ["", op["description"].strip()]
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                name = ref_name(body)
                out += ["", f"Request body: [`{name}`](#{name.lower()})"]
            out += ["", "| status | meaning | body |", "|---|---|---|"]
            for status, response in op.get("responses", {}).items():
                content = response.get("content", {})
                kind = ", ".join(
                    f"[`{ref_name(c['schema'])}`](#{ref_name(c['schema']).lower()})"
                    if "$ref" in c.get("schema", {})
                    else f"`{media}`"
                    for media, c in content.items()
                )
                out.append(f"| {status} | {cell(response.get('description', ''))} | {kind} |")
            out.append("")
    out += ["## Schemas", ""]
    for name in sorted(components):
        out += schema_section(name, components[name])
    return "\n".join(out)


def schema_section(name: str, spec: dict[str, Any]) -> list[str]:
    out = [f"### {name}", ""]
    if spec.get("description"):
        out += [spec["description"].strip(), ""]
    properties = spec.get("properties", {})
    required = set(spec.get("required", []))
    if properties:
        out += ["| field | type | required | constraints | description |", "|---|---|---|---|---|"]
        for field, prop in properties.items():
            out.append(
                f"| `{field}` | {type_of(prop)} | {'yes' if field in required else ''} | "
                f"{cell(constraints(prop))} | {cell(prop.get('description', ''))} |"
            )
        out.append("")
    for example in spec.get("examples", [])[:1]:
        out += ["Example:", "", "```json", json.dumps(example, ensure_ascii=False), "```", ""]
    return out


def ref_name(schema: dict[str, Any]) -> str:
    return schema["$ref"].rsplit("/", 1)[-1]


def type_of(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        name = ref_name(prop)
        return f"[{name}](#{name.lower()})"
    if "anyOf" in prop:
        return " or ".join(type_of(p) for p in prop["anyOf"])
    if prop.get("type") == "array":
        return f"array of {type_of(prop.get('items', {}))}"
    if prop.get("type") == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"object of {type_of(prop['additionalProperties'])}"
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    return str(prop.get("type", "any"))


def constraints(prop: dict[str, Any]) -> str:
    parts = []
    for p in [prop, *prop.get("anyOf", [])]:
        for key in ("minLength", "maxLength", "minItems", "maxItems", "minimum", "maximum", "default"):
            if key in p:
                parts.append(f"{key} {json.dumps(p[key])}")
        if "pattern" in p:
            pattern = p["pattern"]
            parts.append(f"pattern `{pattern}`" if len(pattern) <= LONG_PATTERN else "pattern (see openapi.json)")
    return ", ".join(dict.fromkeys(parts))


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")
