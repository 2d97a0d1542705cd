"""Provider-safe public tool names: sanitised, collision-free in any order, at most 64 chars."""

from __future__ import annotations

import itertools
import random
import string

from stepline_executor.names import SAFE_NAME, public_names, sanitize
from stepline_executor.registry import Registry
from tests.executor.fakes import ScriptedTool


def test_mcp_names_become_safe_and_safe_names_stay() -> None:
    assert sanitize("everything.get-sum") == "everything__get-sum"
    assert sanitize("calculator") == "calculator"
    assert sanitize("files.read file/v2") == "files__read_file_v2"
    assert sanitize("a.b.c") == "a__b_c"


def test_long_names_are_cut_with_a_hash_and_stay_distinct() -> None:
    first = "server." + "x" * 80 + "1"
    second = "server." + "x" * 80 + "2"
    names = public_names([first, second])
    assert all(SAFE_NAME.fullmatch(n) for n in names.values())
    assert len(names[first]) == 64
    assert names[first] != names[second]


def test_collisions_get_a_hash_suffix_whatever_the_order() -> None:
    colliding = ["a.b_c", "a_b.c", "a__b_c", "tool.x", "tool x"]
    expected = public_names(colliding)
    for order in itertools.permutations(colliding):
        assert public_names(order) == expected
    # An already-safe name keeps it; the changed ones that collide with it get suffixes.
    assert expected["a__b_c"] == "a__b_c"
    assert expected["a.b_c"].startswith("a__b_c_")
    assert expected["a_b.c"].startswith("a_b__c")
    assert len(set(expected.values())) == len(colliding)


def test_random_names_always_map_to_distinct_safe_names() -> None:
    rng = random.Random(11)
    alphabet = string.ascii_letters + string.digits + "._- /:é"
    names = {"".join(rng.choices(alphabet, k=rng.randint(1, 90))) for _ in range(500)}
    mapped = public_names(names)
    assert len(set(mapped.values())) == len(names)
    assert all(SAFE_NAME.fullmatch(n) for n in mapped.values())


def test_a_registry_serves_public_names_and_renames_on_a_new_collision() -> None:
    registry = Registry([ScriptedTool.named("calc.add one", source="mcp:calc")])
    assert registry.names() == ["calc__add_one"]
    tool = registry.get("calc__add_one")
    assert tool is not None
    assert tool.original == "calc.add one"
    assert tool.spec.name == "calc__add_one"
    version = registry.version
    other = ScriptedTool.named("calc.add/one", source="mcp:other")
    registry.replace_source("mcp:other", [other])
    assert registry.version > version
    assert len(registry.names()) == 2
    assert "calc__add_one" not in registry.names()  # both changed names now carry a hash
    registry.remove_source("mcp:other")
    assert registry.names() == ["calc__add_one"]
