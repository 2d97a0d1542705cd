"""Composition root: the planner's tables, handler and transactional processor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from stepline_planner import profiles as profiles_module
from stepline_planner.config import Settings
from stepline_planner.handlers import PlannerHandler, PlannerTopics
from stepline_planner.tables import TopicTables
from stepline_pricebook import PriceBook
from stepline_runtime.catalog import Topics
from stepline_runtime.lifecycle import Running, ServiceContext, TaskPart
from stepline_runtime.processor import ProcessorConfig, TransactionalProcessor

__all__ = ["build"]


@asynccontextmanager
async def build(context: ServiceContext[Settings]) -> AsyncIterator[Running]:
    """The planner's parts: its topic tables and the transactional processor loop."""
    settings = context.settings
    prices = PriceBook.load()
    agents = profiles_module.load(prices, settings.agents_path)
    topics = PlannerTopics(
        goals=context.topic(Topics.GOALS),
        control=context.topic(Topics.CONTROL),
        model_requests=context.topic(Topics.MODEL_REQUESTS),
        model_results=context.topic(Topics.MODEL_RESULTS),
        tool_requests=context.topic(Topics.TOOL_REQUESTS),
        tool_results=context.topic(Topics.TOOL_RESULTS),
        runs=context.topic(Topics.RUNS),
        state=context.topic(Topics.PLANNER_STATE),
    )
    group = context.group
    tables = TopicTables(
        settings.kafka,
        context.topic(Topics.TOOLS),
        context.topic(Topics.BUDGETS),
        context.partitions,
        dead_letter_topic=context.topic(Topics.DLQ),
        consumer_name=f"{group}-tables",
    )
    handler = PlannerHandler(topics, agents, tables, prices.tools)
    processor = TransactionalProcessor(
        ProcessorConfig(
            app_id=group,
            inputs=tuple(context.topic(t) for t in context.spec.consumes),
            changelog=topics.state,
            dead_letter_topic=context.topic(Topics.DLQ),
            max_batch=settings.max_batch,
            tick_interval_s=settings.tick_interval_s,
            session_timeout_ms=settings.session_timeout_ms,
            trace_from_key=True,
        ),
        handler,
        settings.kafka,
    )
    yield Running(
        [
            _Tables(tables),
            TaskPart("processor", processor.run, stop=processor.stop),
        ],
        {"agents": ",".join(sorted(agents.agents))},
    )


class _Tables:
    """The tool and budget tables as a part: loaded before the processor starts."""

    name = "tables"

    def __init__(self, tables: TopicTables) -> None:
        self._tables = tables

    async def start(self) -> None:
        await self._tables.start()

    async def stop(self) -> None:
        await self._tables.stop()

    async def wait(self) -> None:
        await asyncio.Event().wait()
