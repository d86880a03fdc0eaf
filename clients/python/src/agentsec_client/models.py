"""The values the client sends and receives, in Python's naming.

The API's JSON uses ``agent``, ``session``, ``tool``; the client's values use
``agent_id``, ``session_id``, ``tool_name`` (the seed's names). Times are
timezone-aware :class:`datetime.datetime` values in UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Mapping, Optional, Union

__all__ = [
    "ToolRequest",
    "AuditRecord",
    "AuditFilter",
    "Usage",
    "TrustDecision",
    "BudgetStatus",
    "BudgetUpdate",
    "Record",
    "RecordPage",
    "LoggedEvent",
    "Checkpoint",
    "RecordProof",
    "CallResult",
]


@dataclass
class ToolRequest:
    """A request to call a tool: who (``agent_id``), in which budget session
    (``session_id``, the agent's own name for it), which tool, and optionally
    a trust ``scope`` and string ``attrs`` for the audit record.

    Construct it with keywords. In a local stack ``agent_id`` picks the
    agent's token (default: the first configured agent) and ``tool_name``
    defaults to the trust gate's ``tool_name``. In a connected stack the token
    is the agent; ``agent_id``, if given, is sent where the API takes an agent
    (the trust check), so that the server refuses a mismatch.
    """

    session_id: str
    tool_name: Optional[str] = None
    agent_id: Optional[str] = None
    scope: Optional[str] = None
    attrs: Optional[Dict[str, str]] = None

    @classmethod
    def of(cls, value: Union["ToolRequest", Mapping[str, Any]]) -> "ToolRequest":
        """Returns ``value`` as a ToolRequest; a mapping may use the Python
        (``session_id``) or the TypeScript (``sessionId``) naming."""
        if isinstance(value, ToolRequest):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"a tool request is a ToolRequest or a mapping, not {type(value).__name__}")
        session = _pick(value, "session_id", "sessionId")
        if session is None:
            raise ValueError("a tool request needs session_id")
        return cls(
            session_id=str(session),
            tool_name=_pick(value, "tool_name", "toolName"),
            agent_id=_pick(value, "agent_id", "agentId"),
            scope=value.get("scope"),
            attrs=value.get("attrs"),
        )


@dataclass
class AuditRecord:
    """An event the caller logs (``audit.log``): the server stamps the agent,
    the namespace and the time. Event names beginning ``tool.``, ``trust.``,
    ``budget.`` or ``agentsec.`` are the server's own and refused.

    ``agent_id`` picks the agent's token in a local stack (default: the first
    agent); a connected stack logs as its token's agent and does not send it.
    """

    event: str
    session_id: Optional[str] = None
    tool_name: Optional[str] = None
    outcome: Optional[str] = None
    reason: Optional[str] = None
    tokens: Optional[int] = None
    attrs: Optional[Dict[str, str]] = None
    agent_id: Optional[str] = None

    @classmethod
    def of(cls, value: Union["AuditRecord", Mapping[str, Any]]) -> "AuditRecord":
        """Returns ``value`` as an AuditRecord (a mapping may use either naming)."""
        if isinstance(value, AuditRecord):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"an audit record is an AuditRecord or a mapping, not {type(value).__name__}")
        if not value.get("event"):
            raise ValueError("an audit record needs an event")
        return cls(
            event=str(value["event"]),
            session_id=_pick(value, "session_id", "sessionId"),
            tool_name=_pick(value, "tool_name", "toolName"),
            outcome=value.get("outcome"),
            reason=value.get("reason"),
            tokens=value.get("tokens"),
            attrs=value.get("attrs"),
            agent_id=_pick(value, "agent_id", "agentId"),
        )


@dataclass
class AuditFilter:
    """Which records ``audit.query`` returns; every field is optional.

    ``session_id`` is the agent's session name; in a local stack it is
    combined with ``agent_id`` (default: the first agent) into the stored
    session key ``"<agent>/<session>"``. ``since`` and ``until`` are
    datetimes (naive ones are taken as UTC) or RFC 3339 strings. ``limit`` is
    the page size (1–1000, default 100); ``cursor`` is a page's
    ``next_cursor``.
    """

    agent_id: Optional[str] = None
    session_id: Optional[str] = None
    tool_name: Optional[str] = None
    event: Optional[str] = None
    outcome: Optional[str] = None
    since: Optional[Union[datetime, str]] = None
    until: Optional[Union[datetime, str]] = None
    limit: Optional[int] = None
    cursor: Optional[str] = None

    @classmethod
    def of(cls, value: Union["AuditFilter", Mapping[str, Any], None] = None, **kwargs: Any) -> "AuditFilter":
        """Returns a filter from an AuditFilter, a mapping (either naming) and/or keywords."""
        merged: Dict[str, Any] = {}
        if isinstance(value, AuditFilter):
            merged.update({k: getattr(value, k) for k in _FILTER_FIELDS})
        elif value is not None:
            if not isinstance(value, Mapping):
                raise TypeError(f"an audit filter is an AuditFilter or a mapping, not {type(value).__name__}")
            merged.update(value)
        merged.update(kwargs)
        out: Dict[str, Any] = {}
        for k, v in merged.items():
            name = _CAMEL_TO_SNAKE.get(k, k)
            if name not in _FILTER_FIELDS:
                raise TypeError(f"unknown audit filter field {k!r}")
            out[name] = v
        return cls(**out)


_FILTER_FIELDS = ("agent_id", "session_id", "tool_name", "event", "outcome", "since", "until", "limit", "cursor")
_CAMEL_TO_SNAKE = {"agentId": "agent_id", "sessionId": "session_id", "toolName": "tool_name"}


@dataclass(frozen=True)
class Usage:
    """Calls and tokens: used, allowed (limits) or remaining."""

    tokens: int
    calls: int


@dataclass(frozen=True)
class TrustDecision:
    """The trust gate's answer (``trust_gate.check``). A check is a question:
    it records nothing, so it has no decision id."""

    allowed: bool
    reason: str
    required_level: str
    assigned_level: str
    agent: str
    tool: str
    scope: str


@dataclass(frozen=True)
class BudgetStatus:
    """A session's budget (``budget.check_budget``): whether a call may
    start now, and what is used, allowed and left."""

    session_id: str
    allowed: bool
    reason: str
    used: Usage
    limits: Usage
    remaining: Usage


@dataclass(frozen=True)
class BudgetUpdate:
    """The answer to a spending, commit or release: the decision's record
    index in the log and the session's budget after it. ``tokens`` is the
    tokens a commit counted; ``reservation_id`` names the reservation for a
    commit or release."""

    decision_id: int
    used: Usage
    limits: Usage
    tokens: Optional[int] = None
    reservation_id: Optional[str] = None


@dataclass(frozen=True)
class Record:
    """One record of the audit log.

    ``session_key`` is the stored session, ``"<agent>/<session>"``;
    ``session_id`` is the agent's own name for it (the part after the
    slash), as requests name it. ``raw`` is the record as the server sent it.
    """

    seq: int
    time: datetime
    event: str
    namespace: str = ""
    agent_id: str = ""
    session_id: str = ""
    session_key: str = ""
    tool_name: str = ""
    scope: str = ""
    outcome: str = ""
    reason: str = ""
    required_level: str = ""
    assigned_level: str = ""
    tokens: int = 0
    attrs: Dict[str, str] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class RecordPage:
    """A page of ``audit.query``: records, and the cursor of the next page
    (``None`` on the last)."""

    records: List[Record]
    next_cursor: Optional[str] = None


@dataclass(frozen=True)
class LoggedEvent:
    """The answer to ``audit.log``: the record written and its index."""

    decision_id: int
    record: Record


@dataclass(frozen=True)
class Checkpoint:
    """The log's latest signed checkpoint: its origin, its size (records),
    its Merkle root (base64) and the signed note's text."""

    origin: str
    size: int
    root_hash: str
    checkpoint: str


@dataclass(frozen=True)
class RecordProof:
    """A record with its inclusion proof: ``agentsec audit check-proof``
    verifies ``proof`` against ``checkpoint``."""

    seq: int
    record: Record
    leaf_hash: str
    checkpoint: str
    proof: str


@dataclass(frozen=True)
class CallResult:
    """How a governed call ended (the answer to ``POST /v1/calls/{id}/end``)."""

    call_id: str
    decision_id: int
    outcome: str
    reason: str
    tokens: int
    used: Usage
    limits: Usage


def _pick(m: Mapping[str, Any], *names: str) -> Any:
    for n in names:
        if n in m and m[n] is not None:
            return m[n]
    return None


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:\d{2})$"
)


def parse_time(value: str) -> datetime:
    """Parses an RFC 3339 time (with up to nanoseconds, which Go writes) into
    an aware datetime in UTC (microsecond precision)."""
    m = _RFC3339.match(value)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {value!r}")
    y, mo, d, h, mi, s, frac, off = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    if off in ("Z", "z"):
        tz = timezone.utc
    else:
        sign = 1 if off[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(off[1:3]), minutes=int(off[4:6])))
    return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micro, tzinfo=tz).astimezone(timezone.utc)


def format_time(value: Union[datetime, str]) -> str:
    """Formats a datetime as RFC 3339 in UTC (naive datetimes are taken as
    UTC); a string is passed through."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
