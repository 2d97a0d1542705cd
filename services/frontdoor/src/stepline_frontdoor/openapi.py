"""The OpenAPI 3.1 document of the HTTP API, generated from `ENDPOINTS` and the wire models.

`python -m stepline_frontdoor.openapi generate|check` writes or drift-checks the committed copy
(`services/frontdoor/openapi.json`), like `scripts/asyncapi.py` does for the topics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from stepline_frontdoor.http_api import ENDPOINTS
from stepline_frontdoor.schemas import ErrorBody

__all__ = ["COMMITTED", "document", "main", "render"]

COMMITTED = Path(__file__).resolve().parents[2] / "openapi.json"
_REF = "#/components/schemas/{model}"


def _models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [ErrorBody]
    for e in ENDPOINTS:
        for model in (e.response, e.body):
            if model is not None and model not in found:
                found.append(model)
    return found


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref(ErrorBody)}},
    }


def document() -> dict[str, Any]:
    """The OpenAPI document as a dict."""
    models = _models()
    bodies = _bodies()
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (m, "validation" if m in bodies else "serialization") for m in models
    ]
    _, schemas = models_json_schema(pairs, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for e in ENDPOINTS:
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_names(e.path)
        ] + [
            {"name": p.name, "in": "query", "required": False, "description": p.description,
             "schema": p.schema}
            for p in e.params
        ]  # fmt: skip
        if e.stream:
            ok: dict[str, Any] = {
                "description": "`run-event` events (data: Event JSON, id: sequence), `changed` "
                "when the run's attempts changed, `end` when the run is over",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            }
        elif e.response is not None:
            ok = {
                "description": "OK",
                "content": {"application/json": {"schema": _ref(e.response)}},
            }
        else:
            ok = {"description": "Accepted: the command was published"}
        operation: dict[str, Any] = {
            "operationId": e.operation_id,
            "summary": e.summary,
            "description": f"Needs a key with the `{e.scope.value}` scope.",
            "security": [{"bearer": []}],
            "parameters": parameters,
            "responses": {
                str(e.status): ok,
                "400": _error("Invalid argument"),
                "401": _error("Missing or unknown key"),
                "403": _error("The key lacks the scope, or asks for another tenant"),
                "404": _error("No such run (or it belongs to another tenant)"),
            },
        }
        if e.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(e.body)}},
            }
            operation["responses"]["409"] = _error("The run or approval is no longer pending")
        paths.setdefault(e.path, {})[e.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Stepline front door",
            "version": "1",
            "description": "Runs, live timelines, goals, cancellation and approvals over the "
            "read model of `stepline.runs.v1` and `stepline.usage.v1`. The tenant is always the "
            "key's.",
        },
        "servers": [{"url": "http://127.0.0.1:8470"}],
        "paths": paths,
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _bodies() -> set[type[BaseModel]]:
    return {e.body for e in ENDPOINTS if e.body is not None}


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def render() -> str:
    """The document as committed: sorted, indented JSON with a final newline."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`generate` writes the committed copy; `check` fails when it drifted."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["generate"]:
        COMMITTED.write_text(render())
        return 0
    if args == ["check"]:
        if not COMMITTED.exists() or COMMITTED.read_text() != render():
            print(f"{COMMITTED} is out of date: run `make openapi` and commit it", file=sys.stderr)
            return 1
        return 0
    print("usage: python -m stepline_frontdoor.openapi generate|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
