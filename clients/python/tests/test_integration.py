"""Integration tests against a real ``agentsec serve`` (local stacks).

They need the binary: set AGENTSEC_BIN (the Go test driver does in CI);
without it they are skipped, saying so.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List, Optional

import pytest

from agentsec_client import (
    AgentAssignment,
    AgentsecStartupError,
    AsyncSecurityStack,
    AuditRecord,
    BudgetEnforcerConfig,
    BudgetExceededError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    SecurityStack,
    SecurityStackConfig,
    ToolRequest,
    TrustDeniedError,
    TrustGateConfig,
    UnauthenticatedError,
    create_async_security_stack,
    Reservation,
    Usage,
    create_security_stack,
)
from agentsec_client import _protocol as p

pytestmark = pytest.mark.integration


def make_config(
    binary: str,
    *,
    call_limit: int = 100,
    token_limit: int = 10_000,
    data_dir: Optional[str] = None,
    **budget: Any,
) -> SecurityStackConfig:
    return SecurityStackConfig(
        trust_gate=TrustGateConfig(
            required_level="verified",
            tool_name="file-reader",
            rules=[{"tool": "shell", "level": "privileged"}],
            agents=[
                AgentAssignment(agent_id="agent-7", level="verified"),
                AgentAssignment(agent_id="agent-low", level="public"),
            ],
        ),
        budget=BudgetEnforcerConfig(token_limit=token_limit, call_limit=call_limit, **budget),
        audit_namespace="my-agent.production",
        data_dir=data_dir,
        agentsec_bin=binary,
    )


def verify_log(binary: str, data_dir: str) -> None:
    done = subprocess.run(
        [binary, "audit", "verify", "-db", os.path.join(data_dir, "audit.db"), "-pubkey", os.path.join(data_dir, "local.pub")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# 1. The seed's quick starts, sync and async -------------------------------


def test_quick_start_sync(binary: str) -> None:
    config = SecurityStackConfig(
        trust_gate=TrustGateConfig(
            required_level="verified",
            tool_name="file-reader",
            agents=[AgentAssignment(agent_id="agent-7", level="verified")],
        ),
        budget=BudgetEnforcerConfig(token_limit=10_000, call_limit=100),
        audit_namespace="my-agent.production",
    )
    stack = create_security_stack(config)
    data_dir = stack.data_dir
    assert data_dir and os.path.isdir(data_dir)
    with stack:
        request = ToolRequest(agent_id="agent-7", session_id="session-1", tool_name="file-reader")
        trust_decision = stack.trust_gate.check(request)
        assert trust_decision.allowed and trust_decision.assigned_level == "verified"
        budget_decision = stack.budget.check_budget(request.session_id)
        assert budget_decision.allowed and budget_decision.remaining.calls == 100
        spent = stack.budget.record_spending(request.session_id, 120)
        assert spent.used.tokens == 120 and spent.used.calls == 1
        logged = stack.audit.log(AuditRecord(event="tool-call-complete", session_id=request.session_id))
        assert logged.record.event == "tool-call-complete" and logged.record.attrs.get("source") == "client"
        page = stack.audit.query(session_id=request.session_id)
        assert [r.event for r in page.records] == ["budget.spend", "tool-call-complete"]
        assert all(r.session_id == "session-1" and r.agent_id == "agent-7" for r in page.records)
        assert page.records[0].namespace == "my-agent.production"
        # The proof of a record holds offline.
        proof = stack.audit.proof(logged.decision_id)
        assert proof.record.seq == logged.decision_id
        done = subprocess.run(
            [binary, "audit", "check-proof", "-pubkey", os.path.join(data_dir, "local.pub"), "-"],
            input=proof.proof,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        cp = stack.audit.checkpoint()
        assert cp.size > logged.decision_id
    assert not os.path.exists(data_dir)  # a temporary data dir is removed on close


def test_quick_start_async(binary: str) -> None:
    async def main() -> None:
        config = make_config(binary)
        async with await create_async_security_stack(config) as stack:
            request = ToolRequest(agent_id="agent-7", session_id="session-1", tool_name="file-reader")
            assert (await stack.trust_gate.check(request)).allowed
            assert (await stack.budget.check_budget(request.session_id)).allowed
            await stack.budget.record_spending(request.session_id, 5)
            await stack.audit.log(AuditRecord(event="tool-call-complete", session_id=request.session_id))
            records = [r async for r in stack.audit.iter_records(session_id="session-1")]
            assert [r.event for r in records] == ["budget.spend", "tool-call-complete"]
            result = await stack.guard(request, _async_tool)
            assert result == {"tokens_used": 42}
            status = await stack.budget.check_budget("session-1")
            assert status.used.tokens == 47 and status.used.calls == 2

    asyncio.run(main())


async def _async_tool() -> dict:
    await asyncio.sleep(0)
    return {"tokens_used": 42}


# 2. Exactness -------------------------------------------------------------


def _check_exact_log(stack: SecurityStack, session: str) -> None:
    records = list(stack.audit.iter_records(session_id=session, event="tool.call", limit=1000))
    assert len(records) == 200
    outcomes = [r.outcome for r in records]
    assert outcomes.count("allow") == 50 and outcomes.count("deny") == 150


def test_exact_budget_async_200_concurrent_guards(binary: str, tmp_path: Any) -> None:
    data_dir = str(tmp_path / "data")

    async def tool() -> dict:
        await asyncio.sleep(0.001)
        return {"tokens_used": 1}

    async def main() -> None:
        async with await create_async_security_stack(make_config(binary, call_limit=50, data_dir=data_dir)) as stack:
            request = ToolRequest(agent_id="agent-7", session_id="exact", tool_name="file-reader")
            results = await asyncio.gather(*(stack.guard(request, tool) for _ in range(200)), return_exceptions=True)
            ok = [r for r in results if r == {"tokens_used": 1}]
            denied = [r for r in results if isinstance(r, BudgetExceededError)]
            others = [r for r in results if r not in ok and r not in denied]
            assert others == []
            assert len(ok) == 50 and len(denied) == 150
            assert all(isinstance(e.decision_id, int) for e in denied)
            assert len({e.decision_id for e in denied}) == 150
            records = [r async for r in stack.audit.iter_records(session_id="exact", event="tool.call", limit=1000)]
            assert len(records) == 200
            outcomes = [r.outcome for r in records]
            assert outcomes.count("allow") == 50 and outcomes.count("deny") == 150
            assert {r.seq for r in records if r.outcome == "deny"} == {e.decision_id for e in denied}
            status = await stack.budget.check_budget("exact")
            assert status.used.calls == 50 and status.used.tokens == 50 and not status.allowed

    asyncio.run(main())
    verify_log(binary, data_dir)  # the data dir was kept: the log verifies after close


def test_exact_budget_sync_thread_pool(binary: str, tmp_path: Any) -> None:
    data_dir = str(tmp_path / "data")
    with create_security_stack(make_config(binary, call_limit=50, data_dir=data_dir)) as stack:
        request = ToolRequest(agent_id="agent-7", session_id="exact-sync", tool_name="file-reader")

        def one(_: int) -> Any:
            try:
                return stack.guard(request, lambda: {"tokens_used": 2})
            except BudgetExceededError as e:
                return e

        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(one, range(200)))
        denied = [r for r in results if isinstance(r, BudgetExceededError)]
        assert sum(1 for r in results if r == {"tokens_used": 2}) == 50
        assert len(denied) == 150 and all(e.decision_id is not None for e in denied)
        _check_exact_log(stack, "exact-sync")
    verify_log(binary, data_dir)


# 3. Reservations ----------------------------------------------------------


def test_open_reservation_expires_as_spent(binary: str) -> None:
    with create_security_stack(make_config(binary)) as stack:
        res = stack.budget.reserve("ttl", ttl_seconds=1)
        assert res.used.calls == 1 and res.session_id == "ttl"
        expired: List[Any] = []
        deadline = time.monotonic() + 5
        while not expired and time.monotonic() < deadline:
            time.sleep(0.25)
            expired = list(stack.audit.iter_records(session_id="ttl", event="budget.expire"))
        assert len(expired) == 1, "no budget.expire record within 5 s"
        assert time.monotonic() - (deadline - 5) >= 1.0
        status = stack.budget.check_budget("ttl")
        assert status.used.calls == 1  # counted as spent: the slot stays taken
        with pytest.raises(ConflictError) as ei:
            res.commit(10)
        assert ei.value.status == 409 and "expired" in (ei.value.detail or "")


def test_released_reservation_gives_its_slot_back(binary: str) -> None:
    with create_security_stack(make_config(binary, call_limit=2)) as stack:
        r1 = stack.budget.reserve("rel")
        r2 = stack.budget.reserve("rel")
        with pytest.raises(BudgetExceededError) as ei:
            stack.budget.reserve("rel")
        assert ei.value.decision_id is not None and ei.value.used is not None and ei.value.used.calls == 2
        up = r1.release()
        assert up.used.calls == 1 and up.reservation_id == r1.id
        assert stack.budget.check_budget("rel").remaining.calls == 1
        r3 = stack.budget.reserve("rel")  # the slot is back
        assert r2.commit(5).used.tokens == 5
        with pytest.raises(ConflictError):
            r1.commit(1)
        r3.release()
        events = [r.event for r in stack.audit.iter_records(session_id="rel")]
        assert events.count("budget.reserve") == 4  # three taken, one refused
        assert events.count("budget.release") == 2 and events.count("budget.commit") == 1


# 4. Typed errors ----------------------------------------------------------


def test_trust_denial_is_typed_and_recorded(binary: str) -> None:
    with create_security_stack(make_config(binary)) as stack:
        low = ToolRequest(agent_id="agent-low", session_id="s", tool_name="file-reader")
        decision = stack.trust_gate.check(low)
        assert not decision.allowed and decision.assigned_level == "public"
        ran: List[int] = []
        with pytest.raises(TrustDeniedError) as ei:
            stack.guard(low, lambda: ran.append(1))
        assert not ran
        err = ei.value
        assert err.status == 403 and err.code == "trust_denied" and isinstance(err.decision_id, int)
        assert (err.required_level, err.assigned_level) == ("verified", "public")
        rec = stack.audit.get(err.decision_id)
        assert (rec.event, rec.outcome, rec.agent_id) == ("tool.call", "deny", "agent-low")
        with pytest.raises(TrustDeniedError):
            stack.guard(ToolRequest(agent_id="agent-7", session_id="s", tool_name="shell"), lambda: None)


def test_bad_token_and_connect_mode(binary: str) -> None:
    with create_security_stack(make_config(binary)) as local:
        with SecurityStack.connect(local.url, "not-a-token") as bad:
            with pytest.raises(UnauthenticatedError) as ei:
                bad.budget.check_budget("s")
            assert ei.value.status == 401
        # Connect mode with an agent's token: the agent acts only as itself.
        token = local._local.agent_tokens["agent-7"]  # type: ignore[union-attr]
        with SecurityStack.connect(local.url, token) as agent:
            assert agent.trust_gate.check(ToolRequest(session_id="s", tool_name="file-reader")).agent == "agent-7"
            assert agent.trust_gate.check({"agentId": "agent-7", "sessionId": "s", "toolName": "file-reader"}).allowed
            with pytest.raises(ForbiddenError):
                agent.trust_gate.check(ToolRequest(agent_id="agent-low", session_id="s", tool_name="file-reader"))
            assert agent.guard(ToolRequest(session_id="s", tool_name="file-reader"), lambda: {"tokens_used": 3})
            assert agent.budget.check_budget("s").used.tokens == 3
            recs = agent.audit.query(session_id="s").records
            assert [r.event for r in recs] == ["tool.call"] and recs[0].session_key == "agent-7/s"
            # A reservation that is not the caller's (or does not exist) is not_found.
            foreign = p.ReservationData(
                id="r_nope", session_id="s", expires_at=recs[0].time, decision_id=0,
                used=Usage(0, 0), limits=Usage(0, 0), token=token,
            )
            with pytest.raises(NotFoundError):
                Reservation(foreign, agent._t).commit(1)


def test_async_connect_mode_bad_token(binary: str) -> None:
    async def main() -> None:
        async with await create_async_security_stack(make_config(binary)) as local:
            async with AsyncSecurityStack.connect(local.url, "nope") as bad:
                with pytest.raises(UnauthenticatedError):
                    await bad.audit.checkpoint()

    asyncio.run(main())


# Local mode ----------------------------------------------------------------


def test_kept_data_dir_is_reused(binary: str, tmp_path: Any) -> None:
    data_dir = str(tmp_path / "kept")
    with create_security_stack(make_config(binary, data_dir=data_dir)) as stack:
        first = stack.budget.record_spending("s", 1).decision_id
    assert os.path.exists(os.path.join(data_dir, "audit.db"))
    assert oct(os.stat(os.path.join(data_dir, "agentsec.yaml")).st_mode & 0o777) == "0o600"
    with create_security_stack(make_config(binary, data_dir=data_dir)) as stack:
        assert stack.data_dir == data_dir
        assert stack.budget.record_spending("s", 1).decision_id > first  # the same log, continued
    verify_log(binary, data_dir)


def test_a_server_that_fails_to_start_shows_its_stderr(binary: str) -> None:
    config = make_config(binary)
    config.trust_gate.required_level = "no-such-level"
    with pytest.raises(AgentsecStartupError) as ei:
        create_security_stack(config)
    assert "no-such-level" in str(ei.value)


def test_close_is_quick_and_clean_when_another_process_holds_the_stdin_pipe(binary: str) -> None:
    import signal

    stack = create_security_stack(make_config(binary))
    server = stack._local
    assert server is not None
    proc = server._proc
    assert proc.stdin is not None
    # A process that inherited the server's stdin pipe keeps it from seeing
    # EOF: close() must not hang until its timeout and SIGKILL the server.
    holder = subprocess.Popen(["sleep", "60"], pass_fds=(proc.stdin.fileno(),))
    try:
        t0 = time.monotonic()
        stack.close()
        elapsed = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert elapsed < 5, elapsed
    assert proc.returncode != -signal.SIGKILL


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_drops_the_stdin_pipe_and_leaves_the_server_alone(binary: str) -> None:
    import warnings

    with create_security_stack(make_config(binary)) as stack:
        server = stack._local
        assert server is not None and server._proc.stdin is not None
        fd = server._proc.stdin.fileno()
        r, w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                try:
                    os.fstat(fd)
                    still_open = True
                except OSError:
                    still_open = False
                server.stop()  # a no-op here: the parent owns the server
                os.write(w, b"open" if still_open else b"closed")
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        got = os.read(r, 16)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        assert got == b"closed" and status == 0
        assert server._proc.poll() is None  # still running
        assert stack.budget.record_spending("s", 1).decision_id > 0


def test_keygen_runs_only_when_the_private_key_is_missing(binary: str, tmp_path: Any) -> None:
    data_dir = str(tmp_path / "kept")
    with create_security_stack(make_config(binary, data_dir=data_dir)):
        pass
    key = os.path.join(data_dir, "local.key")
    with open(key, "rb") as f:
        first = f.read()
    os.remove(os.path.join(data_dir, "local.pub"))
    with create_security_stack(make_config(binary, data_dir=data_dir)) as stack:
        stack.budget.record_spending("s", 1)
    with open(key, "rb") as f:
        assert f.read() == first  # the signing key was not replaced
