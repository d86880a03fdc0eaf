"""Retries against a fake server: which requests are retried, how often,
with which Idempotency-Key, and with what backoff."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, List, Tuple, Type

import httpx
import pytest

import agentsec_client._async as async_mod
import agentsec_client._sync as sync_mod
from agentsec_client import (
    AgentsecConnectionError,
    AsyncSecurityStack,
    AuditUnavailableError,
    BudgetExceededError,
    BudgetUnavailableError,
    ConflictError,
    InvalidRequestError,
    RateLimitedError,
    RetryPolicy,
    SecurityStack,
    ToolRequest,
)

from conftest import FAST_RETRY, FakeServer, problem

BUDGET = {
    "session": "s1",
    "allowed": True,
    "reason": "",
    "used": {"tokens": 10, "calls": 1},
    "limits": {"tokens": 100, "calls": 5},
    "remaining": {"tokens": 90, "calls": 4},
}
SPEND = {"decision_id": 9, "used": {"tokens": 12, "calls": 2}, "limits": {"tokens": 100, "calls": 5}}
TRUST = {
    "allowed": True,
    "reason": "ok",
    "agent": "a",
    "tool": "t",
    "scope": "",
    "required_level": "verified",
    "assigned_level": "verified",
}
UNAVAILABLE = problem("budget_unavailable", 503, detail="store down")


def stack(fake: FakeServer) -> SecurityStack:
    return SecurityStack.connect(fake.url, "tok", retry=FAST_RETRY)


def test_get_retried_on_503_then_succeeds(fake: FakeServer) -> None:
    fake.answer(UNAVAILABLE, UNAVAILABLE, (200, BUDGET))
    with stack(fake) as s:
        st = s.budget.check_budget("s1")
    assert st.used.calls == 1 and st.remaining.tokens == 90
    assert [r.method for r in fake.requests] == ["GET"] * 3
    assert all(r.path == "/v1/budget/sessions/s1" for r in fake.requests)
    assert all(r.headers["authorization"] == "Bearer tok" for r in fake.requests)
    assert all("idempotency-key" not in r.headers for r in fake.requests)


def test_get_gives_up_after_four_attempts(fake: FakeServer) -> None:
    fake.answer(UNAVAILABLE)
    with stack(fake) as s, pytest.raises(BudgetUnavailableError) as ei:
        s.budget.check_budget("s1")
    assert len(fake.requests) == 4
    assert ei.value.status == 503 and ei.value.detail == "store down"


def test_post_retried_after_503_sends_the_same_idempotency_key(fake: FakeServer) -> None:
    fake.answer(problem("audit_unavailable", 503), (200, SPEND))
    with stack(fake) as s:
        up = s.budget.record_spending("s1", 2)
        assert up.decision_id == 9 and up.used.tokens == 12
        keys = [r.headers["idempotency-key"] for r in fake.requests]
        assert len(keys) == 2 and keys[0] == keys[1]
        uuid.UUID(keys[0])  # a UUID
        assert fake.requests[0].json() == fake.requests[1].json() == {"tokens": 2}
        # A new logical call has a new key.
        fake.answer((200, SPEND))
        s.budget.record_spending("s1", 2)
        assert fake.requests[0].headers["idempotency-key"] != keys[0]


def test_change_in_progress_is_retried_with_the_same_key(fake: FakeServer) -> None:
    # A retry that reaches the server while the attempt it repeats still
    # runs hears 409 with Retry-After: it tries again, with the same key.
    status, doc = problem("conflict", 409)
    doc["_headers"] = {"Retry-After": "1"}
    fake.answer(problem("audit_unavailable", 503), (status, doc), (200, SPEND))
    with stack(fake) as s:
        assert s.budget.record_spending("s1", 2).decision_id == 9
        keys = [r.headers["idempotency-key"] for r in fake.requests]
        assert len(keys) == 3 and len(set(keys)) == 1
    # A conflict without Retry-After is final.
    fake.answer(problem("conflict", 409), (200, SPEND))
    with stack(fake) as s:
        with pytest.raises(ConflictError):
            s.budget.record_spending("s1", 2)
        assert len(fake.requests) == 1


def test_trust_check_is_retried_without_a_key(fake: FakeServer) -> None:
    fake.answer(UNAVAILABLE, (200, TRUST))
    with stack(fake) as s:
        d = s.trust_gate.check(ToolRequest(session_id="s1", tool_name="t", agent_id="a"))
    assert d.allowed and d.required_level == "verified"
    assert len(fake.requests) == 2
    assert all("idempotency-key" not in r.headers for r in fake.requests)
    assert fake.requests[0].json() == {"tool": "t", "agent": "a"}


@pytest.mark.parametrize(
    "answer,exc",
    [
        (problem("invalid_request", 400, detail="bad"), InvalidRequestError),
        (problem("budget_exceeded", 429, decision_id=4), BudgetExceededError),
        (problem("rate_limited", 429), RateLimitedError),
    ],
)
def test_no_retry_on_4xx(fake: FakeServer, answer: Tuple[int, Any], exc: Type[Exception]) -> None:
    fake.answer(answer)
    with stack(fake) as s:
        with pytest.raises(exc):
            s.budget.check_budget("s1")
        assert len(fake.requests) == 1
        fake.answer(answer)
        with pytest.raises(exc):
            s.budget.record_spending("s1", 1)
        assert len(fake.requests) == 1


def test_async_retries_keep_the_key(fake: FakeServer) -> None:
    async def main() -> None:
        fake.answer(problem("audit_unavailable", 503), problem("audit_unavailable", 503), (200, SPEND))
        async with AsyncSecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
            up = await s.budget.record_spending("s1", 2)
            assert up.decision_id == 9
            keys = {r.headers["idempotency-key"] for r in fake.requests}
            assert len(fake.requests) == 3 and len(keys) == 1
            fake.answer(UNAVAILABLE, (200, BUDGET))
            st = await s.budget.check_budget("s1")
            assert st.allowed and len(fake.requests) == 2
            fake.answer(problem("invalid_request", 400))
            with pytest.raises(InvalidRequestError):
                await s.budget.check_budget("s1")
            assert len(fake.requests) == 1

    asyncio.run(main())


def _refusing_transport(calls: List[httpx.Request], failures: int, then: httpx.Response) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) <= failures:
            raise httpx.ConnectError("connection refused", request=request)
        return then

    return httpx.MockTransport(handler)


def test_connection_errors_are_retried_with_the_same_key() -> None:
    calls: List[httpx.Request] = []
    t = _refusing_transport(calls, 2, httpx.Response(200, json=SPEND))
    with SecurityStack.connect("http://agentsec.invalid", "tok", retry=FAST_RETRY, transport=t) as s:
        s.budget.record_spending("s1", 2)
    assert len(calls) == 3
    assert len({c.headers["idempotency-key"] for c in calls}) == 1


def test_connection_error_after_the_last_attempt() -> None:
    calls: List[httpx.Request] = []
    t = _refusing_transport(calls, 99, httpx.Response(200, json=BUDGET))
    with SecurityStack.connect("http://agentsec.invalid", "tok", retry=FAST_RETRY, transport=t) as s:
        with pytest.raises(AgentsecConnectionError) as ei:
            s.budget.check_budget("s1")
    assert len(calls) == 4
    assert isinstance(ei.value, ConnectionError)
    assert isinstance(ei.value.__cause__, httpx.ConnectError)


def test_async_connection_error_after_the_last_attempt() -> None:
    calls: List[httpx.Request] = []
    t = _refusing_transport(calls, 99, httpx.Response(200, json=BUDGET))

    async def main() -> None:
        s = AsyncSecurityStack.connect("http://agentsec.invalid", "tok", retry=FAST_RETRY, transport=t)
        try:
            with pytest.raises(AgentsecConnectionError):
                await s.budget.check_budget("s1")
        finally:
            await s.close()

    asyncio.run(main())
    assert len(calls) == 4


def test_a_closed_port_is_a_connection_error() -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with SecurityStack.connect(f"http://127.0.0.1:{port}", "tok", retry=FAST_RETRY) as s:
        with pytest.raises(AgentsecConnectionError):
            s.budget.check_budget("s1")


def test_backoff_is_exponential_with_full_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = RetryPolicy()
    uppers: List[float] = []

    def upper(lo: float, hi: float) -> float:
        uppers.append(hi)
        return hi

    monkeypatch.setattr("random.uniform", upper)
    for n in range(7):
        policy.delay(n)
    assert uppers == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])

    # The transport sleeps the policy's delay before each retry, and no more.
    monkeypatch.undo()
    slept: List[float] = []
    monkeypatch.setattr(sync_mod.time, "sleep", slept.append)
    calls: List[httpx.Request] = []
    t = _refusing_transport(calls, 99, httpx.Response(200, json=BUDGET))
    with SecurityStack.connect("http://agentsec.invalid", "tok", transport=t) as s:
        with pytest.raises(AgentsecConnectionError):
            s.budget.check_budget("s1")
    assert len(slept) == 3
    for n, d in enumerate(slept):
        assert 0 <= d <= min(2.0, 0.1 * 2**n)


def test_async_backoff_sleeps_between_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: List[float] = []

    async def fake_sleep(d: float) -> None:
        slept.append(d)

    monkeypatch.setattr(async_mod.asyncio, "sleep", fake_sleep)
    calls: List[httpx.Request] = []
    t = _refusing_transport(calls, 2, httpx.Response(200, json=BUDGET))

    async def main() -> None:
        async with AsyncSecurityStack.connect("http://agentsec.invalid", "tok", transport=t) as s:
            await s.budget.check_budget("s1")

    asyncio.run(main())
    assert len(slept) == 2 and slept[0] <= 0.1 and slept[1] <= 0.2


def test_audit_unavailable_after_retries_is_typed(fake: FakeServer) -> None:
    fake.answer(problem("audit_unavailable", 503, detail="disk full"))
    with stack(fake) as s, pytest.raises(AuditUnavailableError) as ei:
        s.audit.log({"event": "x"})
    assert len(fake.requests) == 4
    assert len({r.headers["idempotency-key"] for r in fake.requests}) == 1
    assert ei.value.code == "audit_unavailable"


def _arrivals(fake: FakeServer) -> List[float]:
    import time

    times: List[float] = []
    original = fake.httpd.RequestHandlerClass._serve  # type: ignore[attr-defined]

    def timed(handler: Any) -> None:
        times.append(time.monotonic())
        original(handler)

    fake.httpd.RequestHandlerClass.do_POST = timed  # type: ignore[attr-defined]
    fake.httpd.RequestHandlerClass.do_GET = timed  # type: ignore[attr-defined]
    return times


@pytest.mark.parametrize("status", [409, 503])
def test_retry_after_is_honoured(fake: FakeServer, status: int) -> None:
    # FAST_RETRY backs off ~1 ms: only Retry-After explains a ~1 s wait.
    code = "conflict" if status == 409 else "budget_unavailable"
    st, doc = problem(code, status)
    doc["_headers"] = {"Retry-After": "1"}
    times = _arrivals(fake)
    fake.answer((st, doc), (200, SPEND))
    with stack(fake) as s:
        assert s.budget.record_spending("s1", 2).decision_id == 9
    assert len(times) == 2 and times[1] - times[0] >= 0.9


def test_async_retry_after_is_honoured(fake: FakeServer) -> None:
    st, doc = problem("conflict", 409)
    doc["_headers"] = {"Retry-After": "1"}
    times = _arrivals(fake)
    fake.answer((st, doc), (200, SPEND))

    async def main() -> None:
        async with AsyncSecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
            assert (await s.budget.record_spending("s1", 2)).decision_id == 9

    asyncio.run(main())
    assert len(times) == 2 and times[1] - times[0] >= 0.9


def test_retry_after_is_capped_and_parsed() -> None:
    from agentsec_client import _protocol as p

    assert p.retry_after({}) == 0.0
    assert p.retry_after({"retry-after": "2"}) == 2.0
    assert p.retry_after({"retry-after": "3600"}) == 10.0
    assert p.retry_after({"retry-after": "soon"}) == 0.0
    assert p.retry_after({"retry-after": "-5"}) == 0.0
    assert p.retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
