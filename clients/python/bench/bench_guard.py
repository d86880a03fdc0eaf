"""Benchmark: the client's guard() against the same two requests made by hand.

Starts a local stack (needs AGENTSEC_BIN or agentsec on PATH) and, in
interleaved rounds, times sequential ``stack.guard(request, fn)`` calls and
the same two requests (POST /v1/calls, POST /v1/calls/{id}/end) sent with a
raw httpx.Client over its own connection. Prints each round's median call
time, the median of the rounds' medians, and the ratio client/raw (the goal
is at most 1.2).

    AGENTSEC_BIN=/tmp/agentsec PYTHONPATH=src python3 bench/bench_guard.py [--rounds 7] [--calls 300]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List

import httpx

from agentsec_client import (
    AgentAssignment,
    BudgetEnforcerConfig,
    SecurityStackConfig,
    ToolRequest,
    TrustGateConfig,
    create_security_stack,
)
from agentsec_client._sync import _default_transport


def tool() -> dict:
    """The governed tool: does nothing, uses one token."""
    return {"tokens_used": 1}


def main() -> None:
    """Runs the benchmark and prints its figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument(
        "--raw-default-transport",
        action="store_true",
        help="give the raw client httpx's default transport (without TCP_NODELAY on httpcore < 0.17, "
        "each small POST then waits ~40 ms for a delayed ACK) instead of the client's",
    )
    args = ap.parse_args()

    config = SecurityStackConfig(
        trust_gate=TrustGateConfig(
            required_level="verified",
            tool_name="file-reader",
            agents=[AgentAssignment(agent_id="agent-7", level="verified")],
        ),
        budget=BudgetEnforcerConfig(token_limit=10**12, call_limit=10**9),
        audit_namespace="bench",
    )
    with create_security_stack(config) as stack:
        token = stack._local.agent_tokens["agent-7"]  # type: ignore[union-attr]
        # The raw client gets the same transport as the client (TCP_NODELAY
        # set), so that the comparison is of the client's own work.
        transport = None if args.raw_default_transport else _default_transport()
        raw = httpx.Client(
            base_url=stack.url,
            headers={"Authorization": "Bearer " + token},
            timeout=30,
            transport=transport,
            trust_env=False,
        )

        def client_call(session: str) -> Callable[[], None]:
            request = ToolRequest(agent_id="agent-7", session_id=session, tool_name="file-reader")

            def call() -> None:
                stack.guard(request, tool)

            return call

        def raw_call(session: str) -> Callable[[], None]:
            begin_body = {"tool": "file-reader", "session": session}

            def call() -> None:
                r = raw.post("/v1/calls", json=begin_body)
                r.raise_for_status()
                call_id = r.json()["call_id"]
                result = tool()
                e = raw.post(f"/v1/calls/{call_id}/end", json={"tokens": result["tokens_used"]})
                e.raise_for_status()

            return call

        def timed(call: Callable[[], None], n: int) -> List[float]:
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                call()
                out.append(time.perf_counter() - t0)
            return out

        timed(client_call("warm-client"), args.warmup)
        timed(raw_call("warm-raw"), args.warmup)

        client_medians: List[float] = []
        raw_medians: List[float] = []
        print(f"{args.rounds} rounds x {args.calls} sequential guarded calls each way; server {stack.url}")
        print(f"{'round':>5} {'client µs':>10} {'raw µs':>10} {'ratio':>6}")
        for i in range(args.rounds):
            # Alternate which goes first, so that neither always follows the other.
            if i % 2 == 0:
                c = statistics.median(timed(client_call(f"client-{i}"), args.calls))
                r = statistics.median(timed(raw_call(f"raw-{i}"), args.calls))
            else:
                r = statistics.median(timed(raw_call(f"raw-{i}"), args.calls))
                c = statistics.median(timed(client_call(f"client-{i}"), args.calls))
            client_medians.append(c)
            raw_medians.append(r)
            print(f"{i + 1:>5} {c * 1e6:>10.0f} {r * 1e6:>10.0f} {c / r:>6.3f}")
        raw.close()

    c = statistics.median(client_medians)
    r = statistics.median(raw_medians)
    print(f"median of rounds: client {c * 1e6:.0f} µs, raw {r * 1e6:.0f} µs per guarded call")
    print(f"ratio client/raw: {c / r:.3f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
