"""Composition root: the only place that builds settings, clients, tools and the consumer."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

from stepline_executor.cancel_watch import CancelWatch
from stepline_executor.changelog_kafka import KafkaChangelog, RestoreOnAssignment
from stepline_executor.config import Settings, ToolsConfig
from stepline_executor.executor import Executor
from stepline_executor.handlers import Pricing, ToolRequests
from stepline_executor.model import Tool, ToolSpec
from stepline_executor.outcomes import ChangelogOutcomeStore
from stepline_executor.registry import Access, Registry
from stepline_executor.registry_topic import RegistryAnnouncer, read_registered_names
from stepline_executor.tools.base import SchemaArguments
from stepline_executor.tools.calculator import Calculator
from stepline_executor.tools.http import HttpRequest, HttpSettings
from stepline_executor.tools.mcp import McpLink, McpServerConfig, McpTool
from stepline_executor.tools.netguard import NetworkPolicy, SystemResolver
from stepline_executor.tools.search import SearchDocuments
from stepline_executor.tools.sql import SavedQuery, SqlQuery, build_database
from stepline_executor.tools.webhook import Webhook
from stepline_pricebook import PriceBook
from stepline_runtime.atleastonce import AtLeastOnce, BrokerPublisher, broker_for
from stepline_runtime.catalog import Topics, retention
from stepline_runtime.keyed import KeyedConsumer
from stepline_runtime.lifecycle import BrokerPart, Part, Running, ServiceContext, TaskPart

__all__ = ["Toolbox", "build", "build_toolbox"]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Toolbox:
    """Built tools plus what must be closed at shutdown."""

    registry: Registry
    access: Access
    links: list[McpLink] = field(default_factory=list)
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    async def close(self) -> None:
        """Stop MCP sessions and HTTP clients."""
        for link in self.links:
            await link.stop()
        for client in self.clients:
            await client.aclose()


def build_toolbox(config: ToolsConfig, settings: Settings) -> Toolbox:
    """Every configured tool, the allowlists, and (not yet started) MCP links."""
    defaults = config.defaults
    tools: list[Tool] = []
    clients: list[httpx.AsyncClient] = []
    if config.calculator.enabled:
        tools.append(Calculator.build(**config.calculator.resolved(defaults)))
    search = config.search_documents
    if search.enabled:
        tools.append(SearchDocuments.build(config.path(search.folder), **search.resolved(defaults)))
    sql = config.sql_query
    crm = sql.database if sql.database.is_absolute() else settings.executor_data_dir / sql.database
    if sql.init_script is not None and (sql.enabled or config.sql_queries):
        build_database(config.path(sql.init_script), crm)
    if sql.enabled:
        tools.append(
            SqlQuery.build(
                crm,
                description_suffix=sql.description,
                row_limit=sql.row_limit,
                **sql.resolved(defaults),
            )
        )
    for saved in config.sql_queries:
        database = saved.database or crm
        if not database.is_absolute():
            database = settings.executor_data_dir / database
        tools.append(
            SavedQuery.build(
                saved.name,
                saved.description,
                saved.sql,
                saved.parameters,
                database,
                row_limit=saved.row_limit,
                timeout_s=saved.timeout_s or defaults.timeout_s or 30.0,
                max_concurrency=saved.max_concurrency or defaults.max_concurrency or 8,
                max_output_bytes=saved.max_output_bytes or defaults.max_output_bytes or 16_384,
            )
        )
    http = config.http_request
    if http.enabled:
        # No redirects, no proxies from the environment: each hop is vetted by the tool itself.
        client = httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=30.0)
        clients.append(client)
        limits = http.resolved(defaults)
        client.timeout = httpx.Timeout(limits["timeout_s"])
        http_settings = HttpSettings(
            policy=NetworkPolicy.from_strings(http.allow_networks),
            allowed_hosts={t: tuple(c.http_hosts) for t, c in config.tenants.items()},
            max_response_bytes=http.max_response_bytes,
            max_redirects=http.max_redirects,
        )
        tools.append(HttpRequest.build(http_settings, SystemResolver(), client, **limits))
    if config.webhooks:
        # The call's own time limit bounds the answer; connecting gets its own short limit,
        # so an unreachable receiver is reported as not sent.
        hooks = httpx.AsyncClient(
            trust_env=False, follow_redirects=False, timeout=httpx.Timeout(None, connect=5.0)
        )
        clients.append(hooks)
        for hook in config.webhooks:
            limits = {
                "timeout_s": hook.timeout_s or defaults.timeout_s or 30.0,
                "max_concurrency": hook.max_concurrency or defaults.max_concurrency or 8,
                "max_output_bytes": hook.max_output_bytes or defaults.max_output_bytes or 16_384,
            }
            arguments = SchemaArguments(hook.parameters)
            spec = ToolSpec(
                name=hook.name,
                description=hook.description,
                parameters=arguments.schema,
                source="webhook",
                idempotent=hook.idempotent,
                requires_approval=hook.requires_approval,
                **limits,
            )
            headers = {h: os.environ.get(var, "") for h, var in hook.headers_from_env.items()}
            tools.append(
                Webhook(spec, hook.url, hooks, arguments, {k: v for k, v in headers.items() if v})
            )
    registry = Registry(tools)

    def on_tools(server: str, mounted: Sequence[McpTool]) -> None:
        registry.replace_source(f"mcp:{server}", mounted)

    links = [
        McpLink(
            McpServerConfig(
                name=m.name,
                transport=m.transport,
                command=m.command,
                args=tuple(m.args),
                env=m.env,
                cwd=config.path(m.cwd) if m.cwd else None,
                url=m.url,
                idempotent=m.idempotent,
                requires_approval=m.requires_approval,
                timeout_s=m.timeout_s,
                max_concurrency=m.max_concurrency,
                max_output_bytes=m.max_output_bytes,
                tools=tuple(m.tools),
            ),
            on_tools,
        )
        for m in config.mcp_servers
    ]
    access = Access(
        tenants={t: tuple(c.tools) for t, c in config.tenants.items()},
        agents={a: tuple(c.tools) for a, c in config.agents.items()},
    )
    return Toolbox(registry, access, links, clients)


@asynccontextmanager
async def build(context: ServiceContext[Settings]) -> AsyncIterator[Running]:
    """The executor's parts: the request consumer, the registry announcer, the cancel watch."""
    settings = context.settings
    config = ToolsConfig.load(settings.tools_config)
    book = PriceBook.load()
    pricing = Pricing(book.version, book.currency, book.tool_cost)
    toolbox = build_toolbox(config, settings)
    requests_topic = context.topic(Topics.TOOL_REQUESTS)
    outcomes_topic = context.topic(Topics.TOOL_OUTCOMES)
    changelog = KafkaChangelog(settings.kafka, outcomes_topic, client_id=context.spec.name)
    store = ChangelogOutcomeStore(
        changelog,
        outcomes_topic,
        source=context.spec.name,
        clock=_now,
        dead_letter_topic=context.topic(Topics.DLQ),
        keep_for=retention(Topics.TOOL_OUTCOMES),
    )
    try:
        for link in toolbox.links:
            link.start()
        # Give MCP servers a moment so the first announcement includes their tools.
        await asyncio.gather(*(link.wait_ready(15) for link in toolbox.links))
        executor = Executor(
            toolbox.registry,
            toolbox.access,
            store,
            clock=_now,
            monotonic=time.monotonic,
            start_floor_s=settings.executor_start_floor_s,
        )
        handler = ToolRequests(
            executor,
            results_topic=context.topic(Topics.TOOL_RESULTS),
            usage_topic=context.topic(Topics.USAGE),
            pricing=pricing,
            clock=_now,
        )
        broker = broker_for(settings.kafka, context.spec.name)
        publisher = BrokerPublisher(broker)
        processor = AtLeastOnce(
            context.group, handler, publisher, dead_letter_topic=context.topic(Topics.DLQ)
        )
        # Key-ordered lanes: a slow tool holds back only its own run; per-tool limits still hold.
        consumer = KeyedConsumer(
            settings.kafka,
            [requests_topic],
            group_id=context.group,
            processor=processor,
            max_in_flight=settings.max_in_flight,
            # A partition's outcomes are read to their end before its first request is handled.
            listener=RestoreOnAssignment(store, requests_topic),
        )
        tools_topic = context.topic(Topics.TOOLS)
        announcer = RegistryAnnouncer(
            toolbox.registry,
            publisher,
            tools_topic,
            pricing,
            _now,
            await read_registered_names(settings.kafka, tools_topic),
        )
        parts: list[Part] = [
            # Before the consumer: its first assignment restores through the changelog.
            BrokerPart(changelog, name="outcomes"),
            BrokerPart(broker),
            consumer,
            _Announce(announcer),
        ]
        if settings.executor_cancel_listener:
            watch = CancelWatch(
                settings.kafka, requests_topic, handler.on_tool_calls_cancel_requested
            )
            parts.append(TaskPart("cancel-watch", watch.run, critical=False))
        yield Running(parts, {"tools": len(toolbox.registry.names()), "topic": requests_topic})
    finally:
        await toolbox.close()


class _Announce:
    """Publishes the registry once the broker is up, then keeps it announced."""

    name = "announcer"

    def __init__(self, announcer: RegistryAnnouncer) -> None:
        self._announcer = announcer
        self._loop = TaskPart("announcer-loop", announcer.run, critical=False)

    async def start(self) -> None:
        await self._announcer.announce()
        await self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def wait(self) -> None:
        await self._loop.wait()
