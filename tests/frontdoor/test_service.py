"""The front door as the lifecycle runs it, in process, on the real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from stepline.v1 import goals_pb2
from stepline_frontdoor.app import HttpServerPart, build
from stepline_frontdoor.config import Settings
from stepline_frontdoor.keyfile import StaticAuthenticator
from stepline_frontdoor.spec import SPEC
from stepline_keys import Principal, Scope
from stepline_runtime import lifecycle
from stepline_runtime.codec import decode, encode
from stepline_runtime.processor import inbound
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.topics import Topics
from tests.frontdoor.factories import RunScript
from tests.kafkatools import read_all

pytestmark = pytest.mark.kafka

KEY = "sk-test-frontdoor"
KEYS = StaticAuthenticator.of(
    [(KEY, Principal("k1", "acme", frozenset({Scope.ADMIN}), label="ann"))]
)


async def test_serves_submits_streams_and_stops_with_a_stream_open(
    kafka: KafkaSettings,
    producer: AIOKafkaProducer,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    settings = Settings(
        kafka=kafka,
        topic_namespace=unique("fds").replace(".", "-"),
        partitions=2,
        metrics_port=0,
        frontdoor_port=0,
        frontdoor_data_dir=tmp_path,
    )
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def ready(running: lifecycle.Running) -> None:
        [http] = [p for p in running.parts if isinstance(p, HttpServerPart)]
        started.set_result(http.url)

    stop = asyncio.Event()
    service = asyncio.create_task(
        lifecycle.serve(SPEC, settings, stop, ready=ready, build=partial(build, authenticator=KEYS))
    )
    url = await asyncio.wait_for(started, 60)
    auth = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=10) as http:
        for _ in range(100):
            if (await http.get("/healthz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        submitted = await http.post("/api/runs", json={"goal": "refund", "agent": "support"})
        assert submitted.status_code == 202
        [record] = await read_all(kafka, settings.topic(Topics.GOALS), expect=1)
        goal = decode(inbound(record), [goals_pb2.GoalSubmitted]).message
        assert (goal.run_id, goal.tenant_id, goal.submitted_by) == (
            submitted.json()["run_id"], "acme", "ann",
        )  # fmt: skip

        topic = settings.topic(Topics.RUNS)
        for event in RunScript("live").started().events:
            out = encode(topic, "live", event, event_id=event.event_id, source="test")
            await producer.send_and_wait(topic, out.value, key=out.key, headers=list(out.headers))
        for _ in range(100):
            if (await http.get("/api/runs/live")).status_code == 200:
                break
            await asyncio.sleep(0.1)

        first_event = asyncio.Event()

        async def follow() -> None:
            async with http.stream("GET", "/api/runs/live/events", timeout=None) as stream:
                async for line in stream.aiter_lines():
                    if line == "event: run-event":
                        first_event.set()

        following = asyncio.create_task(follow())
        await asyncio.wait_for(first_event.wait(), 20)
        # A console tab keeps its stream open: the service still stops in bounded time.
        began = time.monotonic()
        stop.set()
        await asyncio.wait_for(service, 20)
        assert time.monotonic() - began < 10
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
