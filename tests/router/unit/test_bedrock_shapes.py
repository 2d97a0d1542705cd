"""Bedrock bodies and the test server's frames, checked with botocore's model and parsers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import botocore.session
import pytest
from botocore.eventstream import EventStream, EventStreamBuffer
from botocore.exceptions import EventStreamError
from botocore.model import OperationModel, Shape, StructureShape
from botocore.parsers import EventStreamJSONParser, RestJSONParser
from botocore.validate import ParamValidator

from stepline_router.errors import Outcome
from stepline_router.providers.bedrock import bedrock_error, converse_body, converse_path
from stepline_router.routes import Deployment
from stepline_router.types import (
    Params,
    ResponseFormat,
    ToolChoice,
)
from tests.router.bedrock_fakes import (
    bedrock_exception,
    converse_frames,
    converse_output,
    exception_frame,
    frame,
)
from tests.router.support import TOOL_TRANSCRIPT, request, weather_tool

SERVICE = botocore.session.get_session().get_service_model("bedrock-runtime")
DEPLOYMENT = Deployment("d", "bedrock", "amazon.nova-lite-v1:0")


def _operation(name: str) -> OperationModel:
    return SERVICE.operation_model(name)


def _shape(shape: Shape | None) -> StructureShape:
    assert isinstance(shape, StructureShape)
    return shape


def _valid(operation: str, body: dict[str, Any]) -> None:
    report = ParamValidator().validate(
        {"modelId": DEPLOYMENT.model, **body}, _shape(_operation(operation).input_shape)
    )
    assert not report.has_errors(), report.generate_report()


@pytest.mark.parametrize(
    "params",
    [
        Params(max_output_tokens=50, temperature=0.2, top_p=0.9, stop=("END",)),
        Params(tool_choice=ToolChoice.REQUIRED, tool_name="get_weather"),
        Params(tool_choice=ToolChoice.REQUIRED),
        Params(tool_choice=ToolChoice.NONE),
        Params(response_format=ResponseFormat("json_schema", {"type": "object"}, "answer")),
    ],
)
def test_converse_bodies_match_the_service_model(params: Params) -> None:
    req = replace(request(tools=(weather_tool(),), params=params), messages=TOOL_TRANSCRIPT)
    _valid("Converse", converse_body(DEPLOYMENT, req))
    _valid("ConverseStream", converse_body(DEPLOYMENT, replace(req, stream=True)))


def test_the_request_path_is_the_operations_uri() -> None:
    assert _operation("Converse").http["requestUri"] == "/model/{modelId}/converse"
    assert _operation("ConverseStream").http["requestUri"] == "/model/{modelId}/converse-stream"
    assert converse_path("amazon.nova-lite-v1:0", stream=True) == (
        "/model/amazon.nova-lite-v1:0/converse-stream"
    )
    arn = "arn:aws:bedrock:eu-central-1:123456789012:inference-profile/eu.amazon.nova-lite-v1:0"
    assert converse_path(arn, stream=False) == f"/model/{arn.replace('/', '%2F')}/converse"


def test_the_test_servers_answers_parse_with_botocore_unchanged() -> None:
    body = converse_output("hi", [("tu_1", "get_weather", {"city": "Oslo"})], cache_read=3)
    response = {"status_code": 200, "headers": {}, "body": json.dumps(body).encode()}
    parsed = RestJSONParser().parse(response, _shape(_operation("Converse").output_shape))
    parsed.pop("ResponseMetadata")
    assert parsed == body


def test_the_test_servers_exceptions_parse_as_botocore_errors() -> None:
    reply = bedrock_exception(429, "ThrottlingException", "slow down")
    raw = json.dumps(reply.body).encode()
    response = {
        "status_code": 429,
        # Header names are case-insensitive; botocore reads them lower-cased.
        "headers": {k.lower(): v for k, v in reply.headers.items()},
        "body": raw,
    }
    parsed = RestJSONParser().parse(response, _shape(_operation("Converse").output_shape))
    assert parsed["Error"] == {"Code": "ThrottlingException", "Message": "slow down"}
    error = bedrock_error(429, reply.headers, raw, datetime(2026, 12, 1, tzinfo=UTC))
    assert error.outcome is Outcome.RATE_LIMITED


class _Raw:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def stream(self) -> Iterator[bytes]:
        yield from self._chunks


def _botocore_events(frames: list[bytes]) -> list[dict[str, Any]]:
    output = _shape(_shape(_operation("ConverseStream").output_shape).members["stream"])
    return list(EventStream(_Raw(frames), output, EventStreamJSONParser(), "ConverseStream"))


def test_the_frame_encoder_decodes_with_botocores_parser() -> None:
    data = frame({":event-type": "messageStart", ":message-type": "event"}, b'{"role":"user"}')
    buffer = EventStreamBuffer()
    buffer.add_data(data + data[:7])
    message = next(buffer)
    assert message.to_response_dict()["headers"] == {
        ":event-type": "messageStart",
        ":message-type": "event",
    }
    assert message.payload == b'{"role":"user"}'
    with pytest.raises(StopIteration):
        next(buffer)


def test_the_test_servers_stream_is_a_converse_stream_to_botocore() -> None:
    frames = converse_frames(
        ["Hi"], ("tu_1", "get_weather", ['{"city"', ': "Oslo"}']), cache_read=5
    )
    events = _botocore_events(frames)
    assert [next(iter(e)) for e in events] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockStop",
        "contentBlockStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert events[3]["contentBlockStart"]["start"]["toolUse"]["toolUseId"] == "tu_1"
    assert events[-1]["metadata"]["usage"]["cacheReadInputTokens"] == 5
    with pytest.raises(EventStreamError, match=r"[Tt]hrottlingException"):
        _botocore_events([frames[0], exception_frame("throttlingException", "slow down")])
