"""The routes file: validation, secrets refused, hot reload keeping the last good version."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stepline_router.reload import ConfigFile
from stepline_router.routes import RoutesConfig, RoutesError, Strategy, parse_routes
from tests.router.support import PROVIDERS

GOOD = """
[deployments.a]
provider = "openai"
model = "gpt-4o-mini"
base_url = "http://127.0.0.1:9/v1/"
credential_env = "OPENAI_API_KEY"
capabilities = { tools = true, context_window = 1000 }
rate_limits = { rpm = 10 }
timeouts = { connect_s = 2, first_byte_s = 3, total_s = 4 }
[routes.default]
strategy = "lowest_cost"
deployments = ["a"]
max_fallback_price_ratio = "2"
retries_per_deployment = 0
"""


def _parse(text: str) -> RoutesConfig:
    return parse_routes(text, known_providers=PROVIDERS)


def test_parses_deployments_and_routes() -> None:
    config = _parse(GOOD)
    route = config.routes["default"]
    [deployment] = route.deployments
    assert route.strategy is Strategy.LOWEST_COST
    assert route.retry.retries_per_deployment == 0
    assert deployment.base_url == "http://127.0.0.1:9/v1"
    assert deployment.credential_env == "OPENAI_API_KEY"
    assert deployment.capabilities.context_window == 1000
    assert deployment.rate_limits.rpm == 10
    assert deployment.timeouts.total_s == 4
    # A deployment serves chat unless it says otherwise, embeddings only when it says so.
    assert (deployment.capabilities.chat, deployment.capabilities.embeddings) == (True, False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('credential_env = "OPENAI_API_KEY"', 'api_key = "sk-live-123"'), "would put a secret"),
        (
            ('model = "gpt-4o-mini"', 'model = "gpt-4o-mini"\nheaders = { Authorization = "x" }'),
            "credentials go in `credential_env`",
        ),
        (('provider = "openai"', 'provider = "nope"'), "unknown provider 'nope'"),
        (('deployments = ["a"]', 'deployments = ["a", "b"]'), "unknown deployments ['b']"),
        (('strategy = "lowest_cost"', 'strategy = "cheapest"'), "`strategy` must be one of"),
        (('max_fallback_price_ratio = "2"', 'max_fallback_price_ratio = "0.5"'), "at least 1"),
        (("[routes.default]", "[routes.default\n"), "not valid TOML"),
        (("tools = true,", "chat = false, embeddings = false,"), "neither chat nor embeddings"),
        (("tools = true,", "embeddings = 1,"), "`embeddings` must be true or false"),
    ],
)
def test_bad_files_are_refused_with_a_clear_error(change: tuple[str, str], message: str) -> None:
    with pytest.raises(RoutesError) as refused:
        _parse(GOOD.replace(*change))
    assert message in str(refused.value)
    assert "sk-live-123" not in str(refused.value)


def test_the_shipped_routes_file_is_valid() -> None:
    from stepline_router.app import PROVIDER_NAMES

    shipped = Path(__file__).resolve().parents[3] / "deploy" / "config" / "routes.toml"
    config = parse_routes(shipped.read_text(encoding="utf-8"), known_providers=PROVIDER_NAMES)
    # Production routes never fall through to the offline stand-in; only the dev route uses it.
    for name, route in config.routes.items():
        providers = {d.provider for d in route.deployments}
        assert providers == {"local"} if name == "local" else "local" not in providers, name


def test_hot_reload_swaps_good_versions_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(GOOD, encoding="utf-8")
    watched = ConfigFile(path, lambda text, origin: _parse(text), "routes")
    assert watched.current().routes["default"].strategy is Strategy.LOWEST_COST

    def write(text: str, bump: int) -> None:
        path.write_text(text, encoding="utf-8")
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump))

    assert not watched.check()  # unchanged
    write(GOOD.replace('"lowest_cost"', '"priority"'), 1_000_000)
    assert watched.check()
    assert watched.current().routes["default"].strategy is Strategy.PRIORITY
    write(GOOD.replace('provider = "openai"', 'provider = "bogus"'), 2_000_000)
    assert not watched.check()
    assert watched.last_error is not None
    assert "unknown provider 'bogus'" in watched.last_error
    assert watched.current().routes["default"].strategy is Strategy.PRIORITY
    write(GOOD, 3_000_000)
    assert watched.check()
    assert watched.last_error is None
    assert watched.current().routes["default"].strategy is Strategy.LOWEST_COST
