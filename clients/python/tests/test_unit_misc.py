"""Units that need no server: values, token choice, local configuration,
the binary lookup."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from datetime import datetime, timezone
from typing import List

import pytest

import agentsec_client
from agentsec_client import (
    AgentAssignment,
    AgentsecBinaryNotFoundError,
    AuditFilter,
    AuditRecord,
    BudgetEnforcerConfig,
    SecurityStack,
    SecurityStackConfig,
    ToolRequest,
    TrustGateConfig,
    TrustRule,
    create_async_security_stack,
    create_security_stack,
)
from agentsec_client import _protocol as p
from agentsec_client._local import INSTALL_HINT, build_config
from agentsec_client.models import format_time, parse_time

from conftest import FAST_RETRY, FakeServer

CONFIG = SecurityStackConfig(
    trust_gate=TrustGateConfig(
        required_level="verified",
        tool_name="file-reader",
        agents=[AgentAssignment(agent_id="agent-7", level="verified")],
    ),
    budget=BudgetEnforcerConfig(token_limit=10_000, call_limit=100),
    audit_namespace="my-agent.production",
)


def test_every_public_name_is_documented() -> None:
    for name in agentsec_client.__all__:
        obj = getattr(agentsec_client, name)
        if name.startswith("__") or isinstance(obj, str):
            continue
        assert obj.__doc__ and obj.__doc__.strip(), name
        if isinstance(obj, type):
            for attr, member in vars(obj).items():
                if callable(member) and not attr.startswith("_"):
                    assert member.__doc__, f"{name}.{attr}"


def test_parse_time() -> None:
    t = parse_time("2026-12-04T09:00:00.123456789Z")
    assert t == datetime(2026, 12, 4, 9, 0, 0, 123456, tzinfo=timezone.utc)
    assert parse_time("2026-12-04T10:00:00+01:00") == datetime(2026, 12, 4, 9, tzinfo=timezone.utc)
    assert parse_time("2026-12-04T09:00:00Z").microsecond == 0
    with pytest.raises(ValueError):
        parse_time("yesterday")
    assert format_time(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05.000000Z"
    assert format_time("2026-01-02T00:00:00Z") == "2026-01-02T00:00:00Z"


def test_record_conversion() -> None:
    r = p.parse_record(
        {
            "seq": 42,
            "time": "2026-12-04T09:00:00.123456Z",
            "namespace": "ns",
            "event": "tool.call",
            "agent": "agent-7",
            "session": "agent-7/s1",
            "tool": "file-reader",
            "outcome": "allow",
            "required_level": "verified",
            "tokens": 120,
            "attrs": {"k": "v"},
        }
    )
    assert (r.seq, r.agent_id, r.session_id, r.session_key, r.tool_name) == (42, "agent-7", "s1", "agent-7/s1", "file-reader")
    assert (r.outcome, r.required_level, r.assigned_level, r.tokens, r.attrs) == ("allow", "verified", "", 120, {"k": "v"})
    assert r.time.tzinfo is not None
    # An operator's record has no agent and no session.
    r = p.parse_record({"seq": 0, "time": "2026-12-04T09:00:00Z", "event": "trust.assign"})
    assert (r.agent_id, r.session_id, r.tokens, r.attrs) == ("", "", 0, {})


def test_request_and_record_accept_either_naming() -> None:
    assert ToolRequest.of({"agentId": "a", "sessionId": "s", "toolName": "t"}) == ToolRequest(
        session_id="s", tool_name="t", agent_id="a"
    )
    assert ToolRequest.of({"agent_id": "a", "session_id": "s"}).agent_id == "a"
    with pytest.raises(ValueError):
        ToolRequest.of({"toolName": "t"})
    assert AuditRecord.of({"event": "e", "sessionId": "s"}).session_id == "s"
    f = AuditFilter.of({"sessionId": "s"}, limit=5)
    assert (f.session_id, f.limit) == ("s", 5)
    with pytest.raises(TypeError):
        AuditFilter.of(nonsense=1)


def test_local_credentials_pick_tokens_and_session_keys() -> None:
    c = p.Credentials(agent_tokens={"a1": "t1", "a2": "t2"}, operator_token="op", default_tool="file-reader")
    op = p.trust_check(c, {"sessionId": "s"})
    assert op.token == "t1" and op.body == {"tool": "file-reader", "agent": "a1"}
    op = p.trust_check(c, ToolRequest(session_id="s", agent_id="a2", tool_name="x", scope="sc"))
    assert op.token == "t2" and op.body == {"tool": "x", "scope": "sc", "agent": "a2"}
    with pytest.raises(ValueError, match="not configured"):
        p.budget_status(c, "s", "nobody")
    assert p.budget_status(c, "s", None).params is None
    assert p.spend(c, "s", 3, "a2").token == "t2"
    assert p.log_event(c, AuditRecord(event="e", agent_id="a2", session_id="s")).body == {"event": "e", "session": "s"}
    q = p.query(c, agent_id="a2", session_id="s1", limit=10)
    assert q.token == "op" and q.params == {"agent": "a2", "session": "a2/s1", "limit": "10"}
    q = p.query(c, session_id="s1")
    assert q.params == {"agent": "a1", "session": "a1/s1"}
    assert p.query(c).params == {}
    assert p.checkpoint(c).token == "op"
    assert p.begin_call(c, {"sessionId": "s"}, None).body == {"tool": "file-reader", "session": "s"}


def test_connected_credentials_send_the_agent_where_the_api_takes_it() -> None:
    c = p.Credentials(token="tok")
    assert p.trust_check(c, ToolRequest(session_id="s", tool_name="t", agent_id="a")).body == {"tool": "t", "agent": "a"}
    assert p.trust_check(c, ToolRequest(session_id="s", tool_name="t")).body == {"tool": "t"}
    assert p.budget_status(c, "s/x", "a").params == {"agent": "a"}
    assert p.budget_status(c, "s/x", "a").path == "/v1/budget/sessions/s%2Fx"
    assert p.query(c, session_id="s1").params == {"session": "s1"}
    with pytest.raises(ValueError, match="no tool"):
        p.begin_call(c, {"sessionId": "s"}, None)


def test_build_config() -> None:
    cfg = SecurityStackConfig(
        trust_gate=TrustGateConfig(
            required_level="verified",
            tool_name="file-reader",
            rules=[TrustRule(tool="shell*", level="privileged"), {"tool": "web", "level": "public"}],
            default_level="privileged",
            ladder=["public", "verified", "privileged"],
            agents=[
                AgentAssignment(agent_id="a", level="verified"),
                {"agentId": "a", "level": "privileged", "scope": "ops"},
                AgentAssignment(agent_id="b", level="public"),
            ],
        ),
        budget=BudgetEnforcerConfig(token_limit=5, call_limit=2, call_token_limit=3),
        audit_namespace="ns",
    )
    conf = build_config(cfg, "/d", {"a": "ta", "b": "tb"}, "top")
    import hashlib

    h = lambda t: hashlib.sha256(t.encode()).hexdigest()  # noqa: E731
    assert conf == {
        "namespace": "ns",
        "listen": "127.0.0.1:0",
        "trust": {
            "ladder": ["public", "verified", "privileged"],
            "default_level": "privileged",
            "rules": [
                {"tool": "file-reader", "level": "verified"},
                {"tool": "shell*", "level": "privileged"},
                {"tool": "web", "level": "public"},
            ],
            "agents": [
                {"id": "a", "level": "verified", "token_sha256": h("ta")},
                {"id": "a", "level": "privileged", "token_sha256": h("ta"), "scope": "ops"},
                {"id": "b", "level": "public", "token_sha256": h("tb")},
            ],
        },
        "budget": {"tokens": 5, "calls": 2, "call_tokens": 3},
        "audit": {"path": "/d/audit.db", "key_file": "/d/local.key"},
        "operators": [{"id": "local-operator", "role": "admin", "token_sha256": h("top")}],
    }
    json.dumps(conf)


def test_binary_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.delenv("AGENTSEC_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AgentsecBinaryNotFoundError) as ei:
        create_security_stack(CONFIG)
    assert INSTALL_HINT in str(ei.value)
    assert "go install github.com/agentsec/agentsec/cmd/agentsec@latest, or set AGENTSEC_BIN" in str(ei.value)
    with pytest.raises(AgentsecBinaryNotFoundError):
        asyncio.run(create_async_security_stack(CONFIG))
    monkeypatch.setenv("AGENTSEC_BIN", os.path.join(str(tmp_path), "nope"))
    with pytest.raises(AgentsecBinaryNotFoundError, match="AGENTSEC_BIN"):
        create_security_stack(CONFIG)


def test_binary_on_path_is_found(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    from agentsec_client._local import find_binary

    fake_bin = os.path.join(str(tmp_path), "agentsec")
    with open(fake_bin, "w") as f:
        f.write("#!/bin/sh\nexit 1\n")
    os.chmod(fake_bin, stat.S_IRWXU)
    monkeypatch.delenv("AGENTSEC_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_binary() == fake_bin


def test_create_needs_config_or_url_and_token() -> None:
    with pytest.raises(TypeError):
        create_security_stack()
    with pytest.raises(TypeError):
        create_security_stack(CONFIG, url="http://127.0.0.1:1", token="t")
    with pytest.raises(ValueError):
        SecurityStack.connect("127.0.0.1:1", "t")


def test_connect_mode(fake: FakeServer) -> None:
    fake.answer((200, {"origin": "o", "size": 3, "root_hash": "aGk=", "checkpoint": "o\n3\naGk=\n"}))
    with create_security_stack(url=fake.url + "/", token="tok", retry=FAST_RETRY) as s:
        assert s.data_dir is None
        cp = s.audit.checkpoint()
    assert (cp.origin, cp.size, cp.root_hash) == ("o", 3, "aGk=")
    assert fake.requests[0].path == "/v1/audit/checkpoint"


def test_iter_records_follows_cursors(fake: FakeServer) -> None:
    rec = lambda n: {"seq": n, "time": "2026-12-04T09:00:00Z", "event": "e"}  # noqa: E731
    fake.answer(
        (200, {"records": [rec(0), rec(1)], "next_cursor": "c1"}),
        (200, {"records": [rec(2)], "next_cursor": "c2"}),
        (200, {"records": []}),
    )
    with SecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
        seqs = [r.seq for r in s.audit.iter_records(event="e", limit=2)]
    assert seqs == [0, 1, 2]
    assert [r.path for r in fake.requests] == [
        "/v1/audit/records?event=e&limit=2",
        "/v1/audit/records?event=e&limit=2&cursor=c1",
        "/v1/audit/records?event=e&limit=2&cursor=c2",
    ]

    async def main() -> List[int]:
        from agentsec_client import AsyncSecurityStack

        fake.answer((200, {"records": [rec(0)], "next_cursor": "c1"}), (200, {"records": [rec(1)]}))
        async with AsyncSecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
            return [r.seq async for r in s.audit.iter_records()]

    assert asyncio.run(main()) == [0, 1]


def test_small_posts_do_not_wait_for_delayed_acks(fake: FakeServer) -> None:
    # Without TCP_NODELAY, httpcore < 0.17 sends a POST's headers and body in
    # two segments and each request waits ~40 ms for the server's delayed ACK.
    # The median of 20 requests is compared with half that wait: a loaded
    # machine slows some requests, not the typical one by 20 ms, while the
    # delayed ACK slows every one.
    import statistics
    import time

    fake.answer((200, {"decision_id": 1, "used": {"tokens": 1, "calls": 1}, "limits": {"tokens": 9, "calls": 9}}))
    took = []
    with SecurityStack.connect(fake.url, "tok", retry=FAST_RETRY) as s:
        s.budget.record_spending("s", 1)  # connect
        for _ in range(20):
            t0 = time.perf_counter()
            s.budget.record_spending("s", 1)
            took.append(time.perf_counter() - t0)
    median = statistics.median(took)
    assert median < 0.02, f"a small POST took {median * 1000:.1f} ms (median of 20): is TCP_NODELAY set?"


def test_tokens_never_appear_in_reprs() -> None:
    from datetime import datetime, timezone

    from agentsec_client import _protocol as p
    from agentsec_client.models import Usage

    secret = "s3cr3t-token-value"
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    op = p.Op("GET", "/v1/x", secret, lambda d: d)
    res = p.ReservationData("r_1", "s1", when, 1, Usage(0, 0), Usage(1, 1), secret)
    call = p.OpenCall("c_1", "s1", "t", when, "verified", "verified", secret)
    creds = p.Credentials(token=secret)
    for obj in (op, res, call, creds, p.ReservationBase(res), p.end_call(call), p.commit(res, 1)):
        assert secret not in repr(obj)
    assert op.headers()["Authorization"] == "Bearer " + secret  # still used


@pytest.mark.parametrize("token", ["", "Zq9x\n", "Zq9x\r\n", " Zq9x", "Zq 9x", "Zq9x\t", "Zq\x00x", "Zqöx", "Zq9x\x7f"])
def test_connect_rejects_bad_tokens_without_echoing_them(token: str) -> None:
    from agentsec_client import AsyncSecurityStack, SecurityStack

    for connect in (SecurityStack.connect, AsyncSecurityStack.connect):
        with pytest.raises(ValueError) as ei:
            connect("http://127.0.0.1:1", token)
        assert "Zq" not in str(ei.value)
        if token.endswith("\n"):
            assert "newline" in str(ei.value)


def test_connect_rejects_a_non_str_token() -> None:
    from agentsec_client import SecurityStack

    with pytest.raises(TypeError):
        SecurityStack.connect("http://127.0.0.1:1", b"tok")  # type: ignore[arg-type]
