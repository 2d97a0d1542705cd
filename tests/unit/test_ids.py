"""The tenant id rule the CLI, the gateway and the planner share."""

from __future__ import annotations

import pytest

from stepline_runtime.ids import TENANT_ID_MAX_LENGTH, tenant_id_problem


@pytest.mark.parametrize("tenant", ["acme", "t1", "chaos-tenant", "a.b_c-9", "x" * 64])
def test_valid_tenant_ids_pass(tenant: str) -> None:
    assert tenant_id_problem(tenant) is None


@pytest.mark.parametrize(
    ("tenant", "why"),
    [
        ("", "required"),
        ("x" * (TENANT_ID_MAX_LENGTH + 1), "longer than 64"),
        ("Acme", "lower-case"),
        ("ac me", "lower-case"),
        ("-acme", "start with a letter or digit"),
        ("acme/../x", "lower-case"),
        ("acmé", "lower-case"),
        ("acme\n", "lower-case"),
    ],
)
def test_invalid_tenant_ids_say_why(tenant: str, why: str) -> None:
    problem = tenant_id_problem(tenant)
    assert problem is not None
    assert why in problem
