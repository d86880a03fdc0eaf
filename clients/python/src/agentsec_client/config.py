"""Configuration of a local security stack and of the client's retries.

A *local* stack is an ``agentsec serve`` process that the client starts for
you from a :class:`SecurityStackConfig` (the seed's configuration); a
*connected* stack talks to a server someone else runs and needs only its URL
and a bearer token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

__all__ = [
    "AgentAssignment",
    "TrustRule",
    "TrustGateConfig",
    "BudgetEnforcerConfig",
    "SecurityStackConfig",
    "RetryPolicy",
]


@dataclass
class AgentAssignment:
    """An agent and the trust level an operator assigned it.

    ``scope``, if set, limits the assignment to requests made in that scope.
    A local stack makes one bearer token per distinct ``agent_id``; the
    client presents it for every call that names the agent.
    """

    agent_id: str
    level: str
    scope: Optional[str] = None


@dataclass
class TrustRule:
    """A rule of the trust gate: ``tool`` (a name or glob) needs ``level``."""

    tool: str
    level: str


@dataclass
class TrustGateConfig:
    """The trust gate of a local stack.

    ``tool_name`` and ``required_level`` make the first rule (and
    ``tool_name`` is the tool a :class:`~agentsec_client.ToolRequest` names
    when it names none); ``rules`` follow it. ``default_level`` is required by
    tools no rule covers (unset: such tools are denied). ``ladder`` is a
    built-in ladder's name (``"default"``: public < verified < privileged, or
    ``"aumos"``) or a list of level names, lowest first. ``agents`` are the
    agents the stack knows, with their levels.
    """

    required_level: Optional[str] = None
    tool_name: Optional[str] = None
    rules: Optional[Sequence[Union[TrustRule, Mapping[str, str]]]] = None
    default_level: Optional[str] = None
    ladder: Optional[Union[str, Sequence[str]]] = None
    agents: Sequence[Union[AgentAssignment, Mapping[str, Any]]] = field(default_factory=list)


@dataclass
class BudgetEnforcerConfig:
    """Every session's fixed limits: tokens and calls (both required, > 0).

    ``call_token_limit``, if set, is the most tokens one call's result may
    count; a bigger result is withheld and recorded as over budget.
    """

    token_limit: int
    call_limit: int
    call_token_limit: Optional[int] = None


@dataclass
class SecurityStackConfig:
    """The seed's configuration of a local security stack.

    ``audit_namespace`` names the application whose decisions are logged.
    ``data_dir``, if given, is created if needed and kept after close (it
    holds ``audit.db``, the key pair ``local.key``/``local.pub`` and
    ``agentsec.yaml``); otherwise a temporary directory is used and removed on
    close. ``agentsec_bin`` overrides the binary lookup (``$AGENTSEC_BIN``,
    then ``agentsec`` on ``PATH``). ``startup_timeout`` bounds the wait for
    the server to listen, in seconds.
    """

    trust_gate: TrustGateConfig
    budget: BudgetEnforcerConfig
    audit_namespace: str
    data_dir: Optional[str] = None
    agentsec_bin: Optional[str] = None
    startup_timeout: float = 15.0


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries a request that met a connection error or a 503.

    Up to ``max_attempts`` attempts in all; before retry *n* (0-based) it
    sleeps a random time in ``[0, min(max_delay, base_delay * multiplier**n))``
    seconds ("full jitter"); if the answer carried Retry-After (a 503, or a
    409 of a change still running), it sleeps at least that long, capped at
    10 seconds. Other 4xx answers are never retried. Requests that
    change something carry an ``Idempotency-Key`` that is the same on every
    attempt, so a retry has the effect of one request.
    """

    max_attempts: int = 4
    base_delay: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 2.0

    def delay(self, retry: int) -> float:
        """The time to sleep, in seconds, before retry number ``retry`` (0-based)."""
        cap = min(self.max_delay, self.base_delay * (self.multiplier ** retry))
        return random.uniform(0.0, max(0.0, cap))


def _agent(a: Union[AgentAssignment, Mapping[str, Any]]) -> AgentAssignment:
    if isinstance(a, AgentAssignment):
        return a
    agent_id = a.get("agent_id", a.get("agentId", a.get("id")))
    if not isinstance(agent_id, str) or not agent_id:
        raise ValueError(f"trust_gate.agents: {a!r} has no agent_id")
    return AgentAssignment(agent_id=agent_id, level=str(a["level"]), scope=a.get("scope"))


def _rule(r: Union[TrustRule, Mapping[str, str]]) -> TrustRule:
    if isinstance(r, TrustRule):
        return r
    return TrustRule(tool=str(r["tool"]), level=str(r["level"]))
