"""Problem documents are mapped to the right exception classes, with their fields."""

from __future__ import annotations

import asyncio
import json
from typing import Type

import pytest

from agentsec_client import (
    AgentsecError,
    AsyncSecurityStack,
    AuditUnavailableError,
    BudgetExceededError,
    BudgetUnavailableError,
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    SecurityStack,
    TrustDeniedError,
    UnauthenticatedError,
    Usage,
)
from agentsec_client.errors import error_for_problem

from conftest import FAST_RETRY, FakeServer, problem

CASES = [
    ("trust_denied", 403, TrustDeniedError),
    ("budget_exceeded", 429, BudgetExceededError),
    ("audit_unavailable", 503, AuditUnavailableError),
    ("budget_unavailable", 503, BudgetUnavailableError),
    ("invalid_request", 400, InvalidRequestError),
    ("invalid_request", 415, InvalidRequestError),
    ("unauthenticated", 401, UnauthenticatedError),
    ("forbidden", 403, ForbiddenError),
    ("not_found", 404, NotFoundError),
    ("conflict", 409, ConflictError),
    ("conflict", 422, ConflictError),
    ("rate_limited", 429, RateLimitedError),
]


@pytest.mark.parametrize("code,status,cls", CASES)
def test_code_maps_to_class(code: str, status: int, cls: type) -> None:
    _, doc = problem(code, status, detail="d", reason="r", decision_id=17)
    err = error_for_problem(status, json.dumps(doc).encode())
    assert type(err) is cls
    assert isinstance(err, AgentsecError)
    assert (err.code, err.status, err.detail, err.reason, err.decision_id) == (code, status, "d", "r", 17)
    assert err.problem == doc
    assert code in str(err) and "decision 17" in str(err)


def test_denial_fields() -> None:
    _, doc = problem(
        "budget_exceeded",
        429,
        decision_id=0,
        used={"tokens": 5, "calls": 50},
        limits={"tokens": 100, "calls": 50},
    )
    err = error_for_problem(429, json.dumps(doc).encode())
    assert err.decision_id == 0  # 0 is a decision id, not "none"
    assert err.used == Usage(tokens=5, calls=50) and err.limits == Usage(tokens=100, calls=50)
    _, doc = problem("trust_denied", 403, required_level="verified", assigned_level="public")
    err = error_for_problem(403, json.dumps(doc).encode())
    assert (err.required_level, err.assigned_level, err.decision_id) == ("verified", "public", None)


def test_unknown_code_and_non_problem_bodies_are_the_base_class() -> None:
    _, doc = problem("teapot", 418)
    err = error_for_problem(418, json.dumps(doc).encode())
    assert type(err) is AgentsecError and err.code == "teapot" and err.status == 418
    err = error_for_problem(502, b"<html>bad gateway</html>")
    assert type(err) is AgentsecError and err.status == 502 and err.code == "" and err.problem is None
    assert "bad gateway" in str(err)
    err = error_for_problem(500, b"")
    assert type(err) is AgentsecError and err.status == 500
    err = error_for_problem(400, b"[1, 2]")
    assert type(err) is AgentsecError


@pytest.mark.parametrize("code,status,cls", CASES)
def test_the_stack_raises_the_mapped_class(fake: FakeServer, code: str, status: int, cls: Type[AgentsecError]) -> None:
    fake.answer(problem(code, status, decision_id=3))
    with SecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
        with pytest.raises(cls) as ei:
            s.budget.reserve("s1")
    assert ei.value.decision_id == 3


def test_async_stack_raises_the_mapped_class(fake: FakeServer) -> None:
    fake.answer(problem("forbidden", 403, detail="not yours"))

    async def main() -> None:
        async with AsyncSecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
            with pytest.raises(ForbiddenError, match="not yours"):
                await s.audit.query(agent_id="someone-else")

    asyncio.run(main())
    assert fake.requests[0].path == "/v1/audit/records?agent=someone-else"


def test_a_2xx_that_is_not_json_is_an_error(fake: FakeServer) -> None:
    fake.answer((200, "not json"))
    with SecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
        with pytest.raises(AgentsecError, match="not JSON"):
            s.audit.checkpoint()
