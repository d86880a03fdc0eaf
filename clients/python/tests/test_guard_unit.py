"""guard() against a fake server: begin, run, end — and what happens when
any of them fails."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, List, Tuple, Type

import pytest

from agentsec_client import (
    AsyncSecurityStack,
    AuditUnavailableError,
    BudgetExceededError,
    SecurityStack,
    ToolRequest,
    TrustDeniedError,
)

from conftest import FAST_RETRY, FakeServer, problem

BEGIN = (
    201,
    {
        "call_id": "c_1",
        "session": "s1",
        "tool": "t",
        "expires_at": "2026-12-04T10:00:00.123456789Z",
        "required_level": "verified",
        "assigned_level": "verified",
    },
)
END = (
    200,
    {
        "call_id": "c_1",
        "decision_id": 5,
        "outcome": "allow",
        "reason": "",
        "tokens": 7,
        "used": {"tokens": 7, "calls": 1},
        "limits": {"tokens": 100, "calls": 5},
    },
)
REQ = ToolRequest(session_id="s1", tool_name="t", scope="sc", attrs={"k": "v"})


@dataclass
class Result:
    tokens_used: int


def test_guard_begins_runs_and_ends(fake: FakeServer) -> None:
    fake.answer(BEGIN, END)
    with SecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
        out = s.guard(REQ, lambda: Result(7), ttl_seconds=30)
    assert out == Result(7)
    begin, end = fake.requests
    assert (begin.method, begin.path) == ("POST", "/v1/calls")
    assert begin.json() == {"tool": "t", "session": "s1", "scope": "sc", "attrs": {"k": "v"}, "ttl_seconds": 30}
    assert (end.method, end.path) == ("POST", "/v1/calls/c_1/end")
    assert end.json() == {"tokens": 7}
    assert begin.headers["idempotency-key"] != end.headers["idempotency-key"]


@pytest.mark.parametrize(
    "result,tokens,want",
    [
        ({"tokens_used": 3}, None, 3),
        ({"tokensUsed": 4}, None, 4),
        ({"tokens_used": None}, None, 0),
        ({"tokens_used": 2**53 - 1}, None, 2**53 - 1),
        ("text", None, 0),
        (None, None, 0),
        ("abcdef", len, 6),
    ],
)
def test_guard_tokens(fake: FakeServer, result: Any, tokens: Any, want: int) -> None:
    fake.answer(BEGIN, END)
    with SecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
        assert s.guard({"sessionId": "s1", "toolName": "t"}, lambda: result, tokens=tokens) == result
    assert fake.requests[1].json() == {"tokens": want}


def test_guard_denied_does_not_run(fake: FakeServer) -> None:
    fake.answer(problem("trust_denied", 403, decision_id=11, required_level="verified", assigned_level="public"))
    ran: List[int] = []
    with SecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
        with pytest.raises(TrustDeniedError) as ei:
            s.guard(REQ, lambda: ran.append(1))
    assert ran == [] and ei.value.decision_id == 11 and ei.value.assigned_level == "public"
    assert len(fake.requests) == 1


def test_guard_ends_a_failed_call_and_reraises(fake: FakeServer) -> None:
    fake.answer(BEGIN, END)

    def boom() -> None:
        raise KeyError("missing")

    with SecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
        with pytest.raises(KeyError):
            s.guard(REQ, boom)
    assert fake.requests[1].json() == {"tokens": 0, "error": "KeyError: 'missing'", "ran": True}


def test_guard_reraises_the_tools_error_even_if_end_fails(fake: FakeServer) -> None:
    fake.answer(BEGIN, problem("conflict", 409))
    with SecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
        with pytest.raises(ZeroDivisionError):
            s.guard(REQ, lambda: 1 / 0)


@pytest.mark.parametrize(
    "end,exc",
    [(problem("budget_exceeded", 429, decision_id=6), BudgetExceededError), (problem("audit_unavailable", 503), AuditUnavailableError)],
)
def test_guard_raises_when_end_refuses_the_result(fake: FakeServer, end: Tuple[int, Any], exc: Type[Exception]) -> None:
    fake.answer(BEGIN, end)
    with SecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
        with pytest.raises(exc):
            s.guard(REQ, lambda: {"tokens_used": 10_000})
    ends = fake.requests[1:]
    # A 503 is retried with the same key; a 429 is not.
    assert len(ends) == (4 if exc is AuditUnavailableError else 1)
    assert len({r.headers["idempotency-key"] for r in ends}) == 1


def test_async_guard(fake: FakeServer) -> None:
    async def tool() -> Result:
        await asyncio.sleep(0)
        return Result(7)

    async def failing() -> None:
        raise RuntimeError("tool broke")

    async def main() -> None:
        async with AsyncSecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
            fake.answer(BEGIN, END)
            assert await s.guard(REQ, tool) == Result(7)
            assert fake.requests[1].json() == {"tokens": 7}
            fake.answer(BEGIN, END)
            assert await s.guard(REQ, lambda: {"tokens_used": 2}) == {"tokens_used": 2}  # a plain callable
            assert fake.requests[1].json() == {"tokens": 2}
            fake.answer(BEGIN, END)
            with pytest.raises(RuntimeError, match="tool broke"):
                await s.guard(REQ, failing)
            assert fake.requests[1].json() == {"tokens": 0, "error": "RuntimeError: tool broke", "ran": True}
            fake.answer(problem("budget_exceeded", 429, decision_id=1))
            with pytest.raises(BudgetExceededError):
                await s.guard(REQ, tool)
            assert len(fake.requests) == 1

    asyncio.run(main())


class _NumpyLikeInt:
    """An integer type that is not int but has __index__, as numpy's are."""

    def __index__(self) -> int:
        return 8


def test_guard_tokens_accepts_index_ints(fake: FakeServer) -> None:
    fake.answer(BEGIN, END)
    with SecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
        s.guard(REQ, lambda: {"tokens_used": _NumpyLikeInt()})
    assert fake.requests[1].json() == {"tokens": 8}


@pytest.mark.parametrize(
    "result,tokens,exc",
    [
        ({"tokens_used": True}, None, TypeError),
        ({"tokens_used": 3.0}, None, TypeError),
        ({"tokensUsed": "3"}, None, TypeError),
        ({"tokens_used": Decimal(3)}, None, TypeError),
        ({"tokens_used": -1}, None, ValueError),
        ({"tokens_used": 2**53}, None, ValueError),
        (Result(-2), None, ValueError),
        ("x", lambda r: 1.5, TypeError),
        ("x", lambda r: False, TypeError),
        ("x", lambda r: 2**60, ValueError),
    ],
)
def test_guard_bad_token_count_fails_the_call(fake: FakeServer, result: Any, tokens: Any, exc: Type[Exception]) -> None:
    fake.answer(BEGIN, END)
    with SecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
        with pytest.raises(exc):
            s.guard(REQ, lambda: result, tokens=tokens)
    assert len(fake.requests) == 2
    end = fake.requests[1].json()
    assert end["ran"] is True and end["tokens"] == 0 and end["error"].startswith(exc.__name__ + ": ")


def test_async_guard_bad_token_count_fails_the_call(fake: FakeServer) -> None:
    async def main() -> None:
        async with AsyncSecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
            fake.answer(BEGIN, END)
            with pytest.raises(ValueError):
                await s.guard(REQ, lambda: {"tokens_used": -3})
            end = fake.requests[1].json()
            assert end["ran"] is True and end["error"].startswith("ValueError: ")

    asyncio.run(main())


def test_guard_truncates_a_huge_error(fake: FakeServer) -> None:
    fake.answer(BEGIN, END)

    def boom() -> None:
        raise RuntimeError("x" * 1_000_000)

    with SecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
        with pytest.raises(RuntimeError):
            s.guard(REQ, boom)
    error = fake.requests[1].json()["error"]
    assert len(error) == 4096 and error.startswith("RuntimeError: xxx")
