"""The synchronous client: SecurityStack and its parts, over httpx.Client."""

from __future__ import annotations

import socket
import time
from types import TracebackType
from typing import Any, Callable, Dict, Iterator, Optional, Type, TypeVar

import httpx

from . import _protocol as p
from .config import RetryPolicy, SecurityStackConfig
from .errors import AgentsecConnectionError
from .models import (
    BudgetStatus,
    BudgetUpdate,
    Checkpoint,
    LoggedEvent,
    Record,
    RecordPage,
    RecordProof,
    TrustDecision,
)
from ._local import LocalServer

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_TIMEOUT = 30.0


_NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def _default_transport() -> httpx.HTTPTransport:
    """An HTTP transport whose sockets have TCP_NODELAY set.

    httpcore before 0.17 writes a request's headers and body in two writes
    without TCP_NODELAY, so each small POST waits for a delayed ACK (about
    40 ms on Linux). Newer httpx takes ``socket_options``; with older ones
    the connection pool's network backend is swapped for one that sets the
    option (asyncio sets it on its own sockets, so the async client needs
    nothing).
    """
    try:
        options: Dict[str, Any] = {"socket_options": _NODELAY}  # httpx >= 0.24.1
        return httpx.HTTPTransport(**options)
    except TypeError:
        pass
    transport = httpx.HTTPTransport()
    try:
        from httpcore.backends.sync import SyncBackend  # httpcore 0.16

        class _NoDelayBackend(SyncBackend):
            def connect_tcp(self, *args: Any, **kwargs: Any) -> Any:
                stream = super().connect_tcp(*args, **kwargs)
                sock = getattr(stream, "_sock", None)
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return stream

        pool = getattr(transport, "_pool", None)
        if pool is not None and type(getattr(pool, "_network_backend", None)) is SyncBackend:
            pool._network_backend = _NoDelayBackend()
    except Exception:  # pragma: no cover - another httpcore: leave it be
        pass
    return transport


class _Transport:
    """Sends ops over one httpx.Client, retrying connection errors and 503s
    (and 409s of a change still running), honouring Retry-After."""

    def __init__(self, client: httpx.Client, retry: RetryPolicy) -> None:
        self.client = client
        self.retry = retry

    def run(self, op: p.Op[T]) -> T:
        headers = op.headers()
        attempt = 0
        while True:
            last = attempt + 1 >= self.retry.max_attempts
            hint = 0.0
            try:
                resp = self.client.request(op.method, op.path, params=op.params, json=op.body, headers=headers)
            except httpx.TransportError as exc:
                if last:
                    raise AgentsecConnectionError(
                        f"{op.method} {op.path}: {type(exc).__name__}: {exc} (after {attempt + 1} attempts)"
                    ) from exc
            else:
                if last or not p.should_retry(op, resp.status_code, resp.headers):
                    return p.read_answer(op, resp.status_code, resp.content)
                # A 409 or 503 with Retry-After: wait at least that long (capped).
                hint = p.retry_after(resp.headers)
            time.sleep(max(self.retry.delay(attempt), hint))
            attempt += 1


class Reservation(p.ReservationBase):
    """A call slot taken with ``budget.reserve``: commit it with the tokens
    the call used, or release it if the tool never ran. One neither
    committed nor released by ``expires_at`` counts as spent."""

    def __init__(self, data: p.ReservationData, transport: _Transport) -> None:
        super().__init__(data)
        self._t = transport

    def commit(self, tokens: int) -> BudgetUpdate:
        """Counts ``tokens`` for the call (``budget.commit``); raises
        ConflictError if it was committed, released or expired already."""
        return self._t.run(p.commit(self._data, tokens))

    def release(self) -> BudgetUpdate:
        """Gives the slot back: the tool never ran (``budget.release``)."""
        return self._t.run(p.release(self._data))


class TrustGateClient:
    """The trust gate (``stack.trust_gate``)."""

    def __init__(self, creds: p.Credentials, transport: _Transport) -> None:
        self._c, self._t = creds, transport

    def check(self, request: p.RequestLike) -> TrustDecision:
        """Asks whether the request's agent may call its tool (in its scope).
        A question only: it records nothing. Denial is ``allowed=False``,
        not an exception."""
        return self._t.run(p.trust_check(self._c, request))


class BudgetClient:
    """The budget enforcer (``stack.budget``). Sessions are the agent's
    own: two agents naming the same session have two budgets."""

    def __init__(self, creds: p.Credentials, transport: _Transport) -> None:
        self._c, self._t = creds, transport

    def check_budget(self, session_id: str, *, agent_id: Optional[str] = None) -> BudgetStatus:
        """The session's budget: whether a call may start, used, limits, remaining."""
        return self._t.run(p.budget_status(self._c, session_id, agent_id))

    def reserve(self, session_id: str, *, ttl_seconds: Optional[int] = None, agent_id: Optional[str] = None) -> Reservation:
        """Takes one call slot, atomically; raises BudgetExceededError if
        none is left. ``ttl_seconds`` (1–3600, default 300) is how long it
        stays open before it counts as spent."""
        data = self._t.run(p.reserve(self._c, session_id, ttl_seconds, agent_id))
        return Reservation(data, self._t)

    def record_spending(self, session_id: str, tokens: int, *, agent_id: Optional[str] = None) -> BudgetUpdate:
        """Counts one call and its tokens, whatever the limits: the spending
        already happened (``budget.spend``)."""
        return self._t.run(p.spend(self._c, session_id, tokens, agent_id))


class AuditClient:
    """The tamper-evident audit log (``stack.audit``)."""

    def __init__(self, creds: p.Credentials, transport: _Transport) -> None:
        self._c, self._t = creds, transport

    def log(self, record: p.AuditRecordLike) -> LoggedEvent:
        """Logs the caller's own event; the server stamps agent, namespace and time."""
        return self._t.run(p.log_event(self._c, record))

    def query(self, filter: p.FilterLike = None, **kwargs: Any) -> RecordPage:
        """One page of records matching the filter (an AuditFilter, a mapping
        or keywords: agent_id, session_id, tool_name, event, outcome, since,
        until, limit, cursor)."""
        return self._t.run(p.query(self._c, filter, **kwargs))

    def iter_records(self, filter: p.FilterLike = None, **kwargs: Any) -> Iterator[Record]:
        """Every record matching the filter, page after page."""
        op = p.query(self._c, filter, **kwargs)
        while True:
            page = self._t.run(op)
            yield from page.records
            if not page.next_cursor:
                return
            op = p.next_page(op, page.next_cursor)

    def get(self, seq: int) -> Record:
        """The record at index ``seq``."""
        return self._t.run(p.get_record(self._c, seq))

    def checkpoint(self) -> Checkpoint:
        """The log's latest signed checkpoint."""
        return self._t.run(p.checkpoint(self._c))

    def proof(self, seq: int) -> RecordProof:
        """The record at ``seq`` with a proof of its inclusion in a signed
        checkpoint (``agentsec audit check-proof`` verifies it)."""
        return self._t.run(p.proof(self._c, seq))


class SecurityStack:
    """A security stack: trust gate, budgets and audit log, over the
    decision API. Get one with :func:`create_security_stack`,
    :meth:`SecurityStack.connect` or :meth:`SecurityStack.start`; close it
    (or use it as a context manager)."""

    def __init__(
        self,
        url: str,
        creds: p.Credentials,
        *,
        retry: Optional[RetryPolicy] = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: Optional[httpx.BaseTransport] = None,
        local: Optional[LocalServer] = None,
    ) -> None:
        """Prefer :meth:`connect` and :meth:`start`; this wires the parts."""
        self.url: str = p.check_url(url)
        self._client = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            transport=transport if transport is not None else _default_transport(),
            headers={"User-Agent": p.USER_AGENT},
            trust_env=local is None,  # a local server is on 127.0.0.1: never through a proxy
        )
        self._creds = creds
        self._t = _Transport(self._client, retry or RetryPolicy())
        self._local = local
        #: The trust gate.
        self.trust_gate: TrustGateClient = TrustGateClient(creds, self._t)
        #: The budget enforcer.
        self.budget: BudgetClient = BudgetClient(creds, self._t)
        #: The audit log.
        self.audit: AuditClient = AuditClient(creds, self._t)
        self._closed = False

    @classmethod
    def connect(
        cls,
        url: str,
        token: str,
        *,
        retry: Optional[RetryPolicy] = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> "SecurityStack":
        """A stack over a running server at ``url`` (``http://host:port``),
        calling with ``token`` (an agent's or an operator's)."""
        return cls(url, p.Credentials(token=p.check_token(token)), retry=retry, timeout=timeout, transport=transport)

    @classmethod
    def start(
        cls, config: SecurityStackConfig, *, retry: Optional[RetryPolicy] = None, timeout: float = DEFAULT_TIMEOUT
    ) -> "SecurityStack":
        """Starts a local ``agentsec serve`` for ``config`` and returns a
        stack over it; closing the stack stops the server."""
        server = LocalServer.start(config)
        try:
            return cls(server.url, _local_creds(server), retry=retry, timeout=timeout, local=server)
        except BaseException:
            server.stop()
            raise

    @property
    def data_dir(self) -> Optional[str]:
        """A local stack's data directory (``None`` for a connected stack)."""
        return self._local.data_dir if self._local else None

    def guard(
        self,
        request: p.RequestLike,
        fn: Callable[[], R],
        tokens: Optional[Callable[[R], int]] = None,
        ttl_seconds: Optional[int] = None,
    ) -> R:
        """Runs ``fn()`` as a governed call: begins it (trust check and call
        slot in one step; a denial raises TrustDeniedError or
        BudgetExceededError, recorded), runs it, and ends it with the tokens
        it used — ``tokens(result)``, else ``result.tokens_used`` /
        ``result["tokens_used"]``, else 0. Returns fn's result, unless the
        end refuses it (BudgetExceededError, AuditUnavailableError). If
        ``fn`` raises, the call is ended as failed and the error re-raised."""
        call = self._t.run(p.begin_call(self._creds, request, ttl_seconds))
        try:
            result = fn()
            used = p.tokens_of(result, tokens)
        except BaseException as exc:
            try:
                self._t.run(p.end_call(call, error=p.describe_error(exc), ran=True))
            except Exception:
                pass  # fn's error is the one to see; an unended call expires as spent
            raise
        self._t.run(p.end_call(call, tokens=used))
        return result

    def close(self) -> None:
        """Closes the connection pool and, for a local stack, stops the
        server (and removes a temporary data directory). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client.close()
        finally:
            if self._local is not None:
                self._local.stop()

    def __enter__(self) -> "SecurityStack":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "local" if self._local else "connected"
        return f"<SecurityStack {mode} {self.url}>"


def _local_creds(server: LocalServer) -> p.Credentials:
    return p.Credentials(
        agent_tokens=server.agent_tokens, operator_token=server.operator_token, default_tool=server.default_tool
    )


def create_security_stack(
    config: Optional[SecurityStackConfig] = None,
    *,
    url: Optional[str] = None,
    token: Optional[str] = None,
    retry: Optional[RetryPolicy] = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> SecurityStack:
    """Returns a :class:`SecurityStack`: a local one started from
    ``config``, or, given ``url`` and ``token``, one connected to a running
    server."""
    if config is not None:
        if url is not None or token is not None:
            raise TypeError("create_security_stack takes a config (local) or url and token (connect), not both")
        return SecurityStack.start(config, retry=retry, timeout=timeout)
    if url is None or token is None:
        raise TypeError("create_security_stack needs a config, or url and token")
    return SecurityStack.connect(url, token, retry=retry, timeout=timeout)
