"""Composition root: the only place that builds settings, clients, tools and the consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

from stepline_executor.cancel_watch import CancelWatch
from stepline_executor.config import Settings, ToolsConfig
from stepline_executor.executor import Executor
from stepline_executor.handlers import Pricing, ToolRequests
from stepline_executor.model import Tool, ToolSpec
from stepline_executor.outcomes import SqliteOutcomeStore
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
from stepline_runtime.atleastonce import AtLeastOnce, BrokerPublisher, broker_for, subscribe
from stepline_runtime.logs import configure_logging
from stepline_runtime.observe import start_observability
from stepline_runtime.topics import Topics, ensure_service_topics

__all__ = ["Toolbox", "build_toolbox", "main", "run"]

log = logging.getLogger(__name__)

_TOPICS = {Topics.TOOL_REQUESTS, Topics.TOOL_RESULTS, Topics.TOOLS, Topics.USAGE, Topics.DLQ}
CONSUMER = "stepline-tool-executor"


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
        hooks = httpx.AsyncClient(trust_env=False, follow_redirects=False)
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
        registry.remove_source(f"mcp:{server}")
        for tool in mounted:
            registry.add(tool)

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


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Run the executor until `stop` is set."""
    config = ToolsConfig.load(settings.tools_config)
    book = PriceBook.load()
    pricing = Pricing(book.version, book.currency, book.tool_cost)
    await ensure_service_topics(settings, _TOPICS, "tool-executor-admin")

    toolbox = build_toolbox(config, settings)
    store = SqliteOutcomeStore(settings.executor_data_dir / "outcomes.sqlite")
    for link in toolbox.links:
        link.start()
    # Give MCP servers a moment so the first announcement includes their tools.
    await asyncio.gather(*(link.wait_ready(15) for link in toolbox.links))

    executor = Executor(
        toolbox.registry, toolbox.access, store, clock=_now, monotonic=time.monotonic
    )
    handler = ToolRequests(
        executor,
        results_topic=settings.topic(Topics.TOOL_RESULTS),
        usage_topic=settings.topic(Topics.USAGE),
        pricing=pricing,
        clock=_now,
    )
    broker = broker_for(settings.kafka, "tool-executor")
    publisher = BrokerPublisher(broker)
    requests_topic = settings.topic(Topics.TOOL_REQUESTS)
    processor = AtLeastOnce(
        settings.group(CONSUMER),
        handler,
        publisher,
        dead_letter_topic=settings.topic(Topics.DLQ),
    )
    # One consumer per worker in the group: partitions run in parallel, each partition in order
    # (so the offset commit after each record's outputs stays exact).
    subscribe(
        broker,
        requests_topic,
        group_id=settings.group(CONSUMER),
        processor=processor,
        max_workers=settings.executor_workers,
    )
    background: list[asyncio.Task[None]] = []
    observability = await start_observability(
        settings.service_name,
        settings.kafka,
        metrics_host=settings.metrics_host,
        metrics_port=settings.metrics_port,
        group=settings.group(CONSUMER),
        topics=[requests_topic],
    )
    try:
        async with broker:
            await broker.start()
            tools_topic = settings.topic(Topics.TOOLS)
            announcer = RegistryAnnouncer(
                toolbox.registry,
                publisher,
                tools_topic,
                pricing,
                _now,
                await read_registered_names(settings.kafka, tools_topic),
            )
            await announcer.announce()
            background.append(asyncio.create_task(announcer.run()))
            if settings.executor_cancel_listener:
                watch = CancelWatch(
                    settings.kafka, requests_topic, handler.on_tool_calls_cancel_requested
                )
                background.append(asyncio.create_task(watch.run()))
            log.info(
                "tool executor started",
                extra={"tools": len(toolbox.registry.names()), "topic": requests_topic},
            )
            await stop.wait()
            log.info("tool executor stopping")
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await toolbox.close()
        store.close()
        await observability.stop()


def main() -> None:
    """Entry point: run until SIGTERM/SIGINT."""
    import signal

    settings = Settings()
    configure_logging(settings.service_name, settings.log_level, settings.log_format)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop)

    asyncio.run(serve())
