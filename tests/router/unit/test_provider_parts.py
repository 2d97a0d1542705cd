"""The pieces the HTTP adapters share: setting names, call numbers, events, image types."""

from __future__ import annotations

import pytest

from stepline_router.errors import Outcome, ProviderError
from stepline_router.providers.events import CallNumbers, EventParser
from stepline_router.providers.fields import object_arguments, sampling
from stepline_router.providers.images import url_media_type
from stepline_router.stream import Delta, TextDelta
from stepline_router.types import Params


def test_sampling_sends_only_set_values_under_the_formats_names_in_its_order() -> None:
    names = {"stop": "stopSequences", "max_output_tokens": "maxTokens", "temperature": "t"}
    assert sampling(Params(), names) == {}
    # 0.0 is a temperature; 0 tokens and no stop sequences mean "the default".
    assert sampling(Params(temperature=0.0, max_output_tokens=0), names) == {"t": 0.0}
    sent = sampling(Params(stop=("END",), max_output_tokens=9, temperature=1.0, seed=3), names)
    assert list(sent.items()) == [("stopSequences", ["END"]), ("maxTokens", 9), ("t", 1.0)]


def test_object_arguments_keep_text_that_is_no_object() -> None:
    assert object_arguments('{"city": "Oslo"}') == {"city": "Oslo"}
    assert object_arguments("") == {}
    assert object_arguments("[1]") == {"_unparsed_arguments": "[1]"}
    assert object_arguments('{"ci') == {"_unparsed_arguments": '{"ci'}


def test_call_numbers_count_in_order_of_first_sight() -> None:
    calls = CallNumbers()
    assert [calls.number(i) for i in (4, 7, 4, 2)] == [0, 1, 0, 2]
    assert len(calls) == 3


class _Echo(EventParser):
    end_marker = "stop"

    def _deltas(self, kind: str, data: dict[str, object], status: int) -> list[Delta]:
        if kind == "stop":
            self.done = True
            return []
        return [TextDelta(str(data["text"]))]


def test_an_event_parser_decodes_names_and_ends_at_its_marker() -> None:
    parser = _Echo()
    assert parser.feed("delta", '{"text": "hi"}', 200) == [TextDelta("hi")]
    assert not parser.complete
    parser.feed("message", '{"type": "stop"}', 200)  # the payload names itself
    assert parser.ended
    assert parser.complete


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ("{nope", "delta event is not valid JSON"),
        ("[1]", "delta event is not an object"),
        ('{"other": 1}', "delta event has a wrong shape (KeyError)"),
    ],
)
def test_an_event_parser_refuses_what_is_malformed(data: str, says: str) -> None:
    with pytest.raises(ProviderError) as refused:
        _Echo().feed("delta", data, 200)
    assert refused.value.outcome is Outcome.MALFORMED_RESPONSE
    assert says in str(refused.value)


def test_url_media_type_reads_the_paths_extension_only() -> None:
    assert url_media_type("https://x.test/a/cat.JPG?v=2") == "image/jpeg"
    assert url_media_type("https://x.test/cat.webp") == "image/webp"
    assert url_media_type("https://x.test/photo?format=png") is None
    assert url_media_type("https://x.test/cat.svg") is None
