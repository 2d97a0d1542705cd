"""An unhandled event type is a type error, and every Stepline exception shares one root."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from mypy import api as mypy_api

from stepline_billing.config import ConfigError
from stepline_billing.ledger import PricingError
from stepline_client.cli import CliError
from stepline_client.client import BrokerUnavailableError, RunTimeoutError
from stepline_executor.config import ToolsConfigError
from stepline_executor.model import ArgumentsError, ToolError
from stepline_keys import AuthError
from stepline_localkafka.errors import LocalKafkaError
from stepline_planner.convert import ConversionError
from stepline_planner.decide import RejectedError
from stepline_planner.profiles import ProfilesError
from stepline_pricebook import PriceBookError
from stepline_router.convert import InvalidRequestError
from stepline_router.errors import ProviderError as RouterProviderError
from stepline_routes import RoutesError
from stepline_runtime.codec import InvalidRecordError
from stepline_runtime.topics import TopicMismatchError
from stepline_vocab import (
    BadInputError,
    ConfigurationError,
    MoneyError,
    ProviderError,
    SteplineError,
)

ROOT = Path(__file__).resolve().parents[2]

# A planner-style dispatch over the real `Input` union, with one event type left out.
LADDER = """
from typing import assert_never

from stepline_planner.inputs import (
    ApprovalDecided, CancelRequested, ChildEnded, GoalReceived, Input, ModelCompleted,
    ModelFailed, SessionGranted, SessionRejected, Tick, ToolCompleted, ToolFailed,
)


def route(event: Input) -> str:
    if isinstance(event, GoalReceived):
        return "goal"
    elif isinstance(event, Tick):
        return "tick"
    elif isinstance(event, ModelCompleted | ModelFailed):
        return "model"
    elif isinstance(event, ToolCompleted | ToolFailed):
        return "tool"
    elif isinstance(event, ApprovalDecided):
        return "approval"
    elif isinstance(event, CancelRequested):
        return "cancel"
    elif isinstance(event, SessionGranted | SessionRejected):
        return "session"
    {child}
    else:
        assert_never(event)
"""


def _mypy(source: str, tmp_path: Path) -> tuple[str, int]:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(textwrap.dedent(source), encoding="utf-8")
    out, err, status = mypy_api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--no-error-summary",
            str(snippet),
        ]
    )
    return out + err, status


@pytest.mark.timeout(240)
def test_a_dispatch_that_forgets_an_event_type_does_not_type_check(tmp_path: Path) -> None:
    handled = LADDER.replace(
        "{child}", 'elif isinstance(event, ChildEnded):\n        return "child"'
    )
    out, status = _mypy(handled, tmp_path)
    assert status == 0, out
    forgotten = LADDER.replace("{child}", "")
    out, status = _mypy(forgotten, tmp_path)
    assert status == 1
    assert 'Argument 1 to "assert_never" has incompatible type "ChildEnded"' in out


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ConfigError, ConfigurationError),
        (ToolsConfigError, ConfigurationError),
        (ProfilesError, ConfigurationError),
        (PriceBookError, ConfigurationError),
        (RoutesError, ConfigurationError),
        (TopicMismatchError, ConfigurationError),
        (PricingError, BadInputError),
        (InvalidRequestError, BadInputError),
        (InvalidRecordError, BadInputError),
        (ConversionError, BadInputError),
        (RejectedError, BadInputError),
        (ArgumentsError, BadInputError),
        (MoneyError, BadInputError),
        (RouterProviderError, ProviderError),
        (ToolError, ProviderError),
        (AuthError, SteplineError),
        (CliError, SteplineError),
        (BrokerUnavailableError, SteplineError),
        (RunTimeoutError, SteplineError),
        (LocalKafkaError, SteplineError),
    ],
    ids=lambda x: x.__name__,
)
def test_every_exception_has_the_one_root(error: type[Exception], kind: type[Exception]) -> None:
    assert issubclass(error, kind)
    assert issubclass(error, SteplineError)
