"""Structured logs carry the bound run and tenant and never carry secrets."""

from __future__ import annotations

import json
import logging
import sys

from stepline_runtime.logs import JsonFormatter, RepeatFilter, adopt_library_loggers, bind, redact


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


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _limited(clock: _Clock) -> tuple[logging.Logger, list[logging.LogRecord]]:
    """A logger whose handler keeps what passed the repeat filter."""
    kept: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record)

    handler = Keep()
    RepeatFilter(burst=3, window_s=10.0, clock=clock).attach(handler)
    logger = logging.getLogger(f"stepline.test.repeats.{id(kept)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, kept


def test_repeated_errors_pass_a_few_times_then_one_summary_counts_the_rest() -> None:
    clock = _Clock()
    logger, kept = _limited(clock)
    for _ in range(1000):
        logger.error("Unable connect to node with id %d", 1)
        clock.now += 0.005  # 1000 lines in 5 s
    logger.error("Unable to update metadata from [1]")
    assert [r.getMessage() for r in kept] == [
        *["Unable connect to node with id 1"] * 3,
        "Unable to update metadata from [1]",
    ]
    clock.now = 10.5
    logger.info("broker back")
    summary = kept[-2]
    assert summary.getMessage() == (
        "Unable connect to node with id 1 (repeated 997 more times in 10 s, not shown)"
    )
    assert summary.levelno == logging.ERROR
    assert getattr(summary, "repeated", None) == 997
    assert kept[-1].getMessage() == "broker back"
    # The next window starts afresh.
    logger.error("Unable connect to node with id %d", 1)
    assert kept[-1].getMessage() == "Unable connect to node with id 1"


def test_info_lines_are_never_limited_and_a_flush_writes_pending_summaries() -> None:
    clock = _Clock()
    logger, kept = _limited(clock)
    for _ in range(50):
        logger.info("record handled")
    for _ in range(5):
        logger.warning("consumer lag not measured")
    assert len(kept) == 50 + 3
    handler = logger.handlers[0]
    (limiter,) = [f for f in handler.filters if isinstance(f, RepeatFilter)]
    limiter.flush(everything=True)
    assert kept[-1].getMessage().endswith("(repeated 2 more times in 0 s, not shown)")


def test_library_console_handlers_are_replaced_by_propagation_to_the_json_root() -> None:
    library = logging.getLogger("stepline.test.colourful")
    library.addHandler(logging.StreamHandler(sys.stdout))
    library.propagate = False
    adopt_library_loggers()
    assert library.handlers == []
    assert library.propagate is True


def test_lines_that_differ_in_their_fields_are_not_repeats() -> None:
    clock = _Clock()
    logger, kept = _limited(clock)
    for offset in range(10):
        logger.warning("record dead-lettered", extra={"offset": offset})
    assert [r.offset for r in kept] == list(range(10))  # type: ignore[attr-defined]
