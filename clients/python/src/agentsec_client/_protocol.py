"""What the sync and async clients share: which token a call uses, how each
operation's request is built, and how its answer is read.

Each operation is an :class:`Op`: a description of one HTTP request and a
function that turns the answer's JSON into the client's value. The two
transports (``_sync`` and ``_async``) only send ops, with retries.
"""

from __future__ import annotations

import json
import math
import operator
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Dict, Generic, Mapping, Optional, Tuple, TypeVar, Union
from urllib.parse import quote

from .errors import AgentsecError, error_for_problem
from .models import (
    AuditFilter,
    AuditRecord,
    BudgetStatus,
    BudgetUpdate,
    CallResult,
    Checkpoint,
    LoggedEvent,
    Record,
    RecordPage,
    RecordProof,
    ToolRequest,
    TrustDecision,
    Usage,
    format_time,
    parse_time,
)

T = TypeVar("T")

USER_AGENT = "agentsec-client-python/0.1.0"

RequestLike = Union[ToolRequest, Mapping[str, Any]]
AuditRecordLike = Union[AuditRecord, Mapping[str, Any]]
FilterLike = Union[AuditFilter, Mapping[str, Any], None]
TokensFn = Callable[[Any], int]


class Credentials:
    """The tokens a stack holds and how it picks one per call.

    A connected stack has one token (an agent's or an operator's). A local
    stack holds every configured agent's token, picked by agent id (default:
    the first agent), and an admin operator token for reading the log.
    """

    def __init__(
        self,
        *,
        token: Optional[str] = None,
        agent_tokens: Optional[Mapping[str, str]] = None,
        operator_token: Optional[str] = None,
        default_tool: Optional[str] = None,
    ) -> None:
        self.local = agent_tokens is not None
        self._token = token or ""
        self._agents: Dict[str, str] = dict(agent_tokens or {})
        self._first = next(iter(self._agents), None)
        self._operator = operator_token or ""
        self.default_tool = default_tool

    def agent(self, agent_id: Optional[str]) -> Tuple[str, Optional[str]]:
        """The token for a call by ``agent_id`` and the agent name to send
        where the API takes one (``None``: send none)."""
        if not self.local:
            return self._token, agent_id
        name = agent_id or self._first
        if name is None:
            raise ValueError("this local stack has no agents: add trust_gate.agents")
        tok = self._agents.get(name)
        if tok is None:
            known = ", ".join(sorted(self._agents))
            raise ValueError(f"agent {name!r} is not configured in this local stack (agents: {known})")
        return tok, name

    def default_agent(self, agent_id: Optional[str]) -> Optional[str]:
        """The agent a local stack acts for when ``agent_id`` is None."""
        return agent_id or (self._first if self.local else None)

    def reader(self) -> str:
        """The token for reading the log: the operator's in a local stack."""
        return self._operator if self.local else self._token

    def tool(self, tool_name: Optional[str]) -> str:
        """The tool a request names, or the trust gate's default one."""
        name = tool_name or self.default_tool
        if not name:
            raise ValueError("the request names no tool (tool_name) and the stack has no default tool")
        return name


@dataclass
class Op(Generic[T]):
    """One API request and how to read its answer."""

    method: str
    path: str
    token: str = field(repr=False)
    parse: Callable[[Any], T]
    params: Optional[Dict[str, str]] = None
    body: Optional[Dict[str, Any]] = None
    #: Set for requests that change something: the same on every attempt.
    idempotency_key: Optional[str] = None

    def headers(self) -> Dict[str, str]:
        """The request's headers."""
        h = {"Authorization": "Bearer " + self.token}
        if self.idempotency_key is not None:
            h["Idempotency-Key"] = self.idempotency_key
        return h


def _changing(method: str, path: str, token: str, parse: Callable[[Any], T], body: Dict[str, Any]) -> Op[T]:
    return Op(method, path, token, parse, body=body, idempotency_key=str(uuid.uuid4()))


def should_retry(op: "Op[Any]", status: int, headers: Mapping[str, str]) -> bool:
    """Whether an answer is worth another attempt: a 503, or a 409 with
    Retry-After, which a retry of a change hears while the attempt it
    repeats is still running."""
    if status == 503:
        return True
    return status == 409 and op.idempotency_key is not None and "retry-after" in headers


#: The longest Retry-After the client honours, in seconds.
MAX_RETRY_AFTER = 10.0


def retry_after(headers: Mapping[str, str]) -> float:
    """The wait an answer's Retry-After asks for, in seconds, capped at
    :data:`MAX_RETRY_AFTER`; 0 without one (or with one not understood).
    Takes delta-seconds or an HTTP date."""
    value = headers.get("retry-after")
    if value is None:
        return 0.0
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return 0.0
        if when is None:
            return 0.0
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        secs = (when - datetime.now(timezone.utc)).total_seconds()
    if not math.isfinite(secs) or secs <= 0:
        return 0.0
    return min(secs, MAX_RETRY_AFTER)


def read_answer(op: Op[T], status: int, content: bytes) -> T:
    """Returns the op's value from a 2xx answer, or raises the error of
    another."""
    if not 200 <= status < 300:
        raise error_for_problem(status, content)
    try:
        doc = json.loads(content)
    except ValueError:
        raise AgentsecError(f"{op.method} {op.path}: the answer is not JSON", status=status) from None
    try:
        return op.parse(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise AgentsecError(f"{op.method} {op.path}: unexpected answer: {exc}", status=status) from exc


def _seg(value: str) -> str:
    return quote(str(value), safe="")


# --- reading answers ---------------------------------------------------


def _usage(d: Any) -> Usage:
    d = d or {}
    return Usage(tokens=int(d.get("tokens", 0)), calls=int(d.get("calls", 0)))


def parse_record(d: Mapping[str, Any]) -> Record:
    """Converts an API Record to the client's :class:`Record`."""
    agent = d.get("agent", "") or ""
    key = d.get("session", "") or ""
    session = key[len(agent) + 1 :] if agent and key.startswith(agent + "/") else key
    return Record(
        seq=int(d["seq"]),
        time=parse_time(d["time"]),
        event=d.get("event", ""),
        namespace=d.get("namespace", "") or "",
        agent_id=agent,
        session_id=session,
        session_key=key,
        tool_name=d.get("tool", "") or "",
        scope=d.get("scope", "") or "",
        outcome=d.get("outcome", "") or "",
        reason=d.get("reason", "") or "",
        required_level=d.get("required_level", "") or "",
        assigned_level=d.get("assigned_level", "") or "",
        tokens=int(d.get("tokens", 0) or 0),
        attrs=dict(d.get("attrs") or {}),
        raw=dict(d),
    )


def _trust(d: Any) -> TrustDecision:
    return TrustDecision(
        allowed=bool(d["allowed"]),
        reason=d.get("reason", ""),
        required_level=d.get("required_level", ""),
        assigned_level=d.get("assigned_level", ""),
        agent=d.get("agent", ""),
        tool=d.get("tool", ""),
        scope=d.get("scope", ""),
    )


def _budget(d: Any) -> BudgetStatus:
    return BudgetStatus(
        session_id=d.get("session", ""),
        allowed=bool(d["allowed"]),
        reason=d.get("reason", ""),
        used=_usage(d.get("used")),
        limits=_usage(d.get("limits")),
        remaining=_usage(d.get("remaining")),
    )


def _update(d: Any) -> BudgetUpdate:
    tokens = d.get("tokens")
    return BudgetUpdate(
        decision_id=int(d["decision_id"]),
        used=_usage(d.get("used")),
        limits=_usage(d.get("limits")),
        tokens=int(tokens) if tokens is not None else None,
        reservation_id=d.get("reservation_id"),
    )


def _page(d: Any) -> RecordPage:
    return RecordPage(records=[parse_record(r) for r in d.get("records") or []], next_cursor=d.get("next_cursor") or None)


def _logged(d: Any) -> LoggedEvent:
    return LoggedEvent(decision_id=int(d["decision_id"]), record=parse_record(d["record"]))


def _checkpoint(d: Any) -> Checkpoint:
    return Checkpoint(origin=d["origin"], size=int(d["size"]), root_hash=d["root_hash"], checkpoint=d["checkpoint"])


def _proof(d: Any) -> RecordProof:
    return RecordProof(
        seq=int(d["seq"]),
        record=parse_record(d["record"]),
        leaf_hash=d.get("leaf_hash", ""),
        checkpoint=d["checkpoint"],
        proof=d["proof"],
    )


def _call_result(d: Any) -> CallResult:
    return CallResult(
        call_id=d.get("call_id", ""),
        decision_id=int(d["decision_id"]),
        outcome=d.get("outcome", ""),
        reason=d.get("reason", ""),
        tokens=int(d.get("tokens", 0)),
        used=_usage(d.get("used")),
        limits=_usage(d.get("limits")),
    )


@dataclass(frozen=True)
class ReservationData:
    """A reservation as the server made it, with the token that made it
    (its commit and release must bear the same)."""

    id: str
    session_id: str
    expires_at: datetime
    decision_id: int
    used: Usage
    limits: Usage
    token: str = field(repr=False)


class ReservationBase:
    """What the sync and async Reservation share: the reservation's fields."""

    def __init__(self, data: ReservationData) -> None:
        self._data = data
        #: The reservation's id (``r_…``).
        self.id: str = data.id
        #: The agent's session name.
        self.session_id: str = data.session_id
        #: When the server settles it as spent, if neither committed nor released.
        self.expires_at: datetime = data.expires_at
        #: The index of its ``budget.reserve`` record in the log.
        self.decision_id: int = data.decision_id
        #: The session's usage once reserved.
        self.used: Usage = data.used
        #: The session's limits.
        self.limits: Usage = data.limits

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(id={self.id!r}, session_id={self.session_id!r}, "
            f"expires_at={self.expires_at.isoformat()!r}, decision_id={self.decision_id})"
        )


@dataclass(frozen=True)
class OpenCall:
    """A call begun with ``POST /v1/calls``, to be ended with the same token."""

    call_id: str
    session_id: str
    tool_name: str
    expires_at: datetime
    required_level: str
    assigned_level: str
    token: str = field(repr=False)


# --- building requests ---------------------------------------------------


def trust_check(creds: Credentials, request: RequestLike) -> Op[TrustDecision]:
    """``POST /v1/trust/check``: read-only, retried without a key."""
    req = ToolRequest.of(request)
    token, agent = creds.agent(req.agent_id)
    body: Dict[str, Any] = {"tool": creds.tool(req.tool_name)}
    if req.scope is not None:
        body["scope"] = req.scope
    if agent is not None:
        body["agent"] = agent
    return Op("POST", "/v1/trust/check", token, _trust, body=body)


def budget_status(creds: Credentials, session_id: str, agent_id: Optional[str]) -> Op[BudgetStatus]:
    """``GET /v1/budget/sessions/{session}``."""
    token, agent = creds.agent(agent_id)
    params = {"agent": agent} if agent is not None and not creds.local else None
    return Op("GET", f"/v1/budget/sessions/{_seg(session_id)}", token, _budget, params=params)


def reserve(
    creds: Credentials, session_id: str, ttl_seconds: Optional[int], agent_id: Optional[str]
) -> Op[ReservationData]:
    """``POST /v1/budget/sessions/{session}/reservations``."""
    token, _ = creds.agent(agent_id)
    body: Dict[str, Any] = {}
    if ttl_seconds is not None:
        body["ttl_seconds"] = int(ttl_seconds)

    def parse(d: Any) -> ReservationData:
        return ReservationData(
            id=d["reservation_id"],
            session_id=d.get("session", session_id),
            expires_at=parse_time(d["expires_at"]),
            decision_id=int(d["decision_id"]),
            used=_usage(d.get("used")),
            limits=_usage(d.get("limits")),
            token=token,
        )

    return _changing("POST", f"/v1/budget/sessions/{_seg(session_id)}/reservations", token, parse, body)


def commit(res: ReservationData, tokens: int) -> Op[BudgetUpdate]:
    """``POST /v1/budget/reservations/{id}/commit``."""
    return _changing("POST", f"/v1/budget/reservations/{_seg(res.id)}/commit", res.token, _update, {"tokens": tokens})


def release(res: ReservationData) -> Op[BudgetUpdate]:
    """``POST /v1/budget/reservations/{id}/release``."""
    return _changing("POST", f"/v1/budget/reservations/{_seg(res.id)}/release", res.token, _update, {})


def spend(creds: Credentials, session_id: str, tokens: int, agent_id: Optional[str]) -> Op[BudgetUpdate]:
    """``POST /v1/budget/sessions/{session}/spending``."""
    token, _ = creds.agent(agent_id)
    return _changing("POST", f"/v1/budget/sessions/{_seg(session_id)}/spending", token, _update, {"tokens": tokens})


def log_event(creds: Credentials, record: AuditRecordLike) -> Op[LoggedEvent]:
    """``POST /v1/audit/events``."""
    rec = AuditRecord.of(record)
    token, _ = creds.agent(rec.agent_id)
    body: Dict[str, Any] = {"event": rec.event}
    for key, value in (
        ("session", rec.session_id),
        ("tool", rec.tool_name),
        ("outcome", rec.outcome),
        ("reason", rec.reason),
        ("tokens", rec.tokens),
        ("attrs", rec.attrs),
    ):
        if value is not None:
            body[key] = value
    return _changing("POST", "/v1/audit/events", token, _logged, body)


def query(creds: Credentials, flt: FilterLike = None, **kwargs: Any) -> Op[RecordPage]:
    """``GET /v1/audit/records``. A local stack reads as its operator and
    names a session by its stored key, ``<agent>/<session>``."""
    f = AuditFilter.of(flt, **kwargs)
    params: Dict[str, str] = {}
    agent = f.agent_id
    session = f.session_id
    if creds.local and session is not None:
        agent = creds.default_agent(agent)
        session = f"{agent}/{session}"
    for key, value in (
        ("agent", agent),
        ("session", session),
        ("tool", f.tool_name),
        ("event", f.event),
        ("outcome", f.outcome),
        ("since", format_time(f.since) if f.since is not None else None),
        ("until", format_time(f.until) if f.until is not None else None),
        ("limit", str(int(f.limit)) if f.limit is not None else None),
        ("cursor", f.cursor),
    ):
        if value is not None:
            params[key] = value
    return Op("GET", "/v1/audit/records", creds.reader(), _page, params=params)


def next_page(op: Op[RecordPage], cursor: str) -> Op[RecordPage]:
    """The same query, for the page at ``cursor``."""
    params = dict(op.params or {})
    params["cursor"] = cursor
    return Op(op.method, op.path, op.token, op.parse, params=params)


def get_record(creds: Credentials, seq: int) -> Op[Record]:
    """``GET /v1/audit/records/{seq}``."""
    return Op("GET", f"/v1/audit/records/{int(seq)}", creds.reader(), lambda d: parse_record(d["record"]))


def checkpoint(creds: Credentials) -> Op[Checkpoint]:
    """``GET /v1/audit/checkpoint``."""
    return Op("GET", "/v1/audit/checkpoint", creds.reader(), _checkpoint)


def proof(creds: Credentials, seq: int) -> Op[RecordProof]:
    """``GET /v1/audit/records/{seq}/proof``."""
    return Op("GET", f"/v1/audit/records/{int(seq)}/proof", creds.reader(), _proof)


def begin_call(creds: Credentials, request: RequestLike, ttl_seconds: Optional[int]) -> Op[OpenCall]:
    """``POST /v1/calls``: the trust check and the reservation in one step."""
    req = ToolRequest.of(request)
    token, _ = creds.agent(req.agent_id)
    tool = creds.tool(req.tool_name)
    body: Dict[str, Any] = {"tool": tool, "session": req.session_id}
    if req.scope is not None:
        body["scope"] = req.scope
    if req.attrs is not None:
        body["attrs"] = req.attrs
    if ttl_seconds is not None:
        body["ttl_seconds"] = int(ttl_seconds)

    def parse(d: Any) -> OpenCall:
        return OpenCall(
            call_id=d["call_id"],
            session_id=d.get("session", req.session_id),
            tool_name=d.get("tool", tool),
            expires_at=parse_time(d["expires_at"]),
            required_level=d.get("required_level", ""),
            assigned_level=d.get("assigned_level", ""),
            token=token,
        )

    return _changing("POST", "/v1/calls", token, parse, body)


def end_call(call: OpenCall, tokens: int = 0, error: Optional[str] = None, ran: bool = True) -> Op[CallResult]:
    """``POST /v1/calls/{id}/end``."""
    body: Dict[str, Any] = {"tokens": tokens}
    if error is not None:
        body["error"] = error
        body["ran"] = ran
    return _changing("POST", f"/v1/calls/{_seg(call.call_id)}/end", call.token, _call_result, body)


#: The largest token count a call may report: JSON numbers are exact up to here.
MAX_TOKENS = 2**53 - 1


def token_count(value: Any, what: str = "tokens") -> int:
    """``value`` as a token count: an integer (``operator.index``, so numpy
    ints pass; bool, float, str, Decimal do not) in ``[0, 2**53 - 1]``.
    Raises TypeError or ValueError otherwise."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not bool")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None
    if not 0 <= n <= MAX_TOKENS:
        raise ValueError(f"{what} must be between 0 and {MAX_TOKENS}, not {n}")
    return n


def tokens_of(result: Any, tokens: Optional[TokensFn]) -> int:
    """The tokens a guarded call's result counts: ``tokens(result)`` if
    given, else ``result.tokens_used`` or ``result["tokens_used"]`` /
    ``result["tokensUsed"]``; 0 only if the result has no count (or it is
    None). A count that is not an int in ``[0, 2**53 - 1]`` raises
    TypeError or ValueError."""
    if tokens is not None:
        return token_count(tokens(result), "tokens(result)")
    value = getattr(result, "tokens_used", None)
    if value is None and isinstance(result, Mapping):
        value = result.get("tokens_used")
        if value is None:
            value = result.get("tokensUsed")
    if value is None:
        return 0
    return token_count(value, "the result's tokens_used")


#: The most characters of an exception's text a failed end sends.
MAX_ERROR_CHARS = 4096


def describe_error(exc: BaseException) -> str:
    """What a guarded call's end reports of the exception its tool raised,
    cut to :data:`MAX_ERROR_CHARS` characters so a huge message cannot make
    the end request too big."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    desc = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if len(desc) > MAX_ERROR_CHARS:
        desc = desc[: MAX_ERROR_CHARS - 3] + "..."
    return desc


def check_token(token: str) -> str:
    """Checks a bearer token: a non-empty str of printable ASCII with no
    whitespace. The error never includes the token."""
    if not isinstance(token, str):
        raise TypeError(f"the token must be a str, not {type(token).__name__}")
    if not token:
        raise ValueError("the token is empty")
    bad = next((c for c in token if not ("!" <= c <= "~")), None)
    if bad is not None:
        kind = "whitespace" if bad.isspace() else "a control character" if ord(bad) < 0x20 or ord(bad) == 0x7F else "a non-ASCII character"
        hint = " (a trailing newline from a file? strip it)" if token[-1:] in ("\n", "\r") else ""
        raise ValueError(f"the token contains {kind} ({len(token)} characters){hint}: it must be printable ASCII without spaces")
    return token


def check_url(url: str) -> str:
    """The base URL without a trailing slash; it must be http(s)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the server URL must start with http:// or https://, not {url!r}")
    return url.rstrip("/")

