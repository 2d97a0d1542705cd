"""Structured logs carry the bound run and tenant and never carry secrets."""

from __future__ import annotations

import json
import logging

from stepline_runtime.logs import JsonFormatter, bind, redact


def _render(record: logging.LogRecord) -> dict[str, object]:
    return json.loads(JsonFormatter("planner").format(record))  # type: ignore[no-any-return]


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("stepline.test", logging.INFO, __file__, 1, message, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_bound_fields_and_extras_appear_in_the_json_line() -> None:
    with bind(run_id="run-1", tenant_id="acme"):
        line = _render(_record("step done", step=3))
    assert line["message"] == "step done"
    assert line["run_id"] == "run-1"
    assert line["tenant_id"] == "acme"
    assert line["step"] == 3
    assert line["service"] == "planner"
    assert line["level"] == "info"


def test_binding_ends_with_the_block() -> None:
    with bind(run_id="run-1"):
        pass
    assert "run_id" not in _render(_record("later"))


def test_secrets_are_redacted_from_messages_and_extras() -> None:
    line = _render(
        _record("calling with Authorization: Bearer abc.def", header="api_key=sk-live12345678")
    )
    assert "abc.def" not in json.dumps(line)
    assert "sk-live12345678" not in json.dumps(line)
    assert redact("password=hunter2 user=bob") == "password=*** user=bob"
