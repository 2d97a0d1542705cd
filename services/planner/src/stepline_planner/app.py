"""Composition root: settings, topics, tables, handler and the transactional processor."""

from __future__ import annotations

import asyncio
import logging
import signal

from stepline_planner import profiles as profiles_module
from stepline_planner.config import Settings
from stepline_planner.handlers import PlannerHandler, PlannerTopics
from stepline_planner.tables import TopicTables
from stepline_pricebook import PriceBook
from stepline_runtime.logs import configure_logging
from stepline_runtime.observe import start_observability
from stepline_runtime.processor import ProcessorConfig, TransactionalProcessor
from stepline_runtime.topics import (
    Topics,
    ensure_service_topics,
)

__all__ = ["main", "run"]

log = logging.getLogger(__name__)

_USED = {
    Topics.GOALS,
    Topics.CONTROL,
    Topics.MODEL_REQUESTS,
    Topics.MODEL_RESULTS,
    Topics.TOOL_REQUESTS,
    Topics.TOOL_RESULTS,
    Topics.TOOLS,
    Topics.RUNS,
    Topics.BUDGETS,
    Topics.PLANNER_STATE,
    Topics.DLQ,
}


async def run(settings: Settings) -> None:
    """Run the planner until SIGTERM/SIGINT."""
    prices = PriceBook.load()
    agents = profiles_module.load(prices, settings.agents_path)
    counts = await ensure_service_topics(settings, _USED, "planner-admin")
    topics = PlannerTopics(
        goals=settings.topic(Topics.GOALS),
        control=settings.topic(Topics.CONTROL),
        model_requests=settings.topic(Topics.MODEL_REQUESTS),
        model_results=settings.topic(Topics.MODEL_RESULTS),
        tool_requests=settings.topic(Topics.TOOL_REQUESTS),
        tool_results=settings.topic(Topics.TOOL_RESULTS),
        runs=settings.topic(Topics.RUNS),
        state=settings.topic(Topics.PLANNER_STATE),
    )
    group = settings.group("stepline-planner")
    tables = TopicTables(
        settings.kafka,
        settings.topic(Topics.TOOLS),
        settings.topic(Topics.BUDGETS),
        counts,
        dead_letter_topic=settings.topic(Topics.DLQ),
        consumer_name=f"{group}-tables",
    )
    await tables.start()
    handler = PlannerHandler(topics, agents, tables, prices.tools)
    processor = TransactionalProcessor(
        ProcessorConfig(
            app_id=group,
            inputs=(topics.goals, topics.control, topics.model_results, topics.tool_results),
            changelog=topics.state,
            dead_letter_topic=settings.topic(Topics.DLQ),
            max_batch=settings.max_batch,
            tick_interval_s=settings.tick_interval_s,
            session_timeout_ms=settings.session_timeout_ms,
            trace_from_key=True,
        ),
        handler,
        settings.kafka,
    )
    observability = await start_observability(
        settings.service_name,
        settings.kafka,
        metrics_host=settings.metrics_host,
        metrics_port=settings.metrics_port,
        group=group,
        topics=(topics.goals, topics.control, topics.model_results, topics.tool_results),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, processor.stop)
    log.info(
        "planner started",
        extra={"agents": sorted(agents.agents), "namespace": settings.topic_namespace},
    )
    try:
        await processor.run()
    finally:
        await tables.stop()
        await observability.stop()


def main() -> None:
    """Entry point of `python -m stepline_planner`."""
    settings = Settings()
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    asyncio.run(run(settings))
