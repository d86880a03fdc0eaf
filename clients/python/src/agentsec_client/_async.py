"""The asynchronous client: AsyncSecurityStack and its parts, over
httpx.AsyncClient. Requests are built and answers read by ``_protocol``,
as in the sync client; only the sending differs."""

from __future__ import annotations

import asyncio
import inspect
from types import TracebackType
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Type, TypeVar, overload

import httpx

from . import _protocol as p
from .config import RetryPolicy, SecurityStackConfig
from .errors import AgentsecConnectionError
from .models import BudgetStatus, BudgetUpdate, Checkpoint, LoggedEvent, Record, RecordPage, RecordProof, TrustDecision
from ._local import LocalServer
from ._sync import DEFAULT_TIMEOUT, _local_creds

T = TypeVar("T")
R = TypeVar("R")


class _AsyncTransport:
    """Sends ops over one httpx.AsyncClient, retrying connection errors and 503s
    (and 409s of a change still running), honouring Retry-After."""

    def __init__(self, client: httpx.AsyncClient, retry: RetryPolicy) -> None:
        self.client = client
        self.retry = retry

    async def run(self, op: p.Op[T]) -> T:
        headers = op.headers()
        attempt = 0
        while True:
            last = attempt + 1 >= self.retry.max_attempts
            hint = 0.0
            try:
                resp = await self.client.request(op.method, op.path, params=op.params, json=op.body, headers=headers)
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
            await asyncio.sleep(max(self.retry.delay(attempt), hint))
            attempt += 1


class AsyncReservation(p.ReservationBase):
    """A call slot taken with ``budget.reserve`` (async): commit it with
    the tokens the call used, or release it if the tool never ran. One
    neither committed nor released by ``expires_at`` counts as spent."""

    def __init__(self, data: p.ReservationData, transport: _AsyncTransport) -> None:
        super().__init__(data)
        self._t = transport

    async def commit(self, tokens: int) -> BudgetUpdate:
        """Counts ``tokens`` for the call (``budget.commit``); raises
        ConflictError if it was committed, released or expired already."""
        return await self._t.run(p.commit(self._data, tokens))

    async def release(self) -> BudgetUpdate:
        """Gives the slot back: the tool never ran (``budget.release``)."""
        return await self._t.run(p.release(self._data))


class AsyncTrustGateClient:
    """The trust gate (``stack.trust_gate``), async."""

    def __init__(self, creds: p.Credentials, transport: _AsyncTransport) -> None:
        self._c, self._t = creds, transport

    async def check(self, request: p.RequestLike) -> TrustDecision:
        """Asks whether the request's agent may call its tool (in its scope).
        A question only: it records nothing. Denial is ``allowed=False``,
        not an exception."""
        return await self._t.run(p.trust_check(self._c, request))


class AsyncBudgetClient:
    """The budget enforcer (``stack.budget``), async."""

    def __init__(self, creds: p.Credentials, transport: _AsyncTransport) -> None:
        self._c, self._t = creds, transport

    async def check_budget(self, session_id: str, *, agent_id: Optional[str] = None) -> BudgetStatus:
        """The session's budget: whether a call may start, used, limits, remaining."""
        return await self._t.run(p.budget_status(self._c, session_id, agent_id))

    async def reserve(
        self, session_id: str, *, ttl_seconds: Optional[int] = None, agent_id: Optional[str] = None
    ) -> AsyncReservation:
        """Takes one call slot, atomically; raises BudgetExceededError if
        none is left. ``ttl_seconds`` (1–3600, default 300) is how long it
        stays open before it counts as spent."""
        data = await self._t.run(p.reserve(self._c, session_id, ttl_seconds, agent_id))
        return AsyncReservation(data, self._t)

    async def record_spending(self, session_id: str, tokens: int, *, agent_id: Optional[str] = None) -> BudgetUpdate:
        """Counts one call and its tokens, whatever the limits: the spending
        already happened (``budget.spend``)."""
        return await self._t.run(p.spend(self._c, session_id, tokens, agent_id))


class AsyncAuditClient:
    """The tamper-evident audit log (``stack.audit``), async."""

    def __init__(self, creds: p.Credentials, transport: _AsyncTransport) -> None:
        self._c, self._t = creds, transport

    async def log(self, record: p.AuditRecordLike) -> LoggedEvent:
        """Logs the caller's own event; the server stamps agent, namespace and time."""
        return await self._t.run(p.log_event(self._c, record))

    async def query(self, filter: p.FilterLike = None, **kwargs: Any) -> RecordPage:
        """One page of records matching the filter (an AuditFilter, a mapping
        or keywords: agent_id, session_id, tool_name, event, outcome, since,
        until, limit, cursor)."""
        return await self._t.run(p.query(self._c, filter, **kwargs))

    async def iter_records(self, filter: p.FilterLike = None, **kwargs: Any) -> AsyncIterator[Record]:
        """Every record matching the filter, page after page (``async for``)."""
        op = p.query(self._c, filter, **kwargs)
        while True:
            page = await self._t.run(op)
            for record in page.records:
                yield record
            if not page.next_cursor:
                return
            op = p.next_page(op, page.next_cursor)

    async def get(self, seq: int) -> Record:
        """The record at index ``seq``."""
        return await self._t.run(p.get_record(self._c, seq))

    async def checkpoint(self) -> Checkpoint:
        """The log's latest signed checkpoint."""
        return await self._t.run(p.checkpoint(self._c))

    async def proof(self, seq: int) -> RecordProof:
        """The record at ``seq`` with a proof of its inclusion in a signed
        checkpoint (``agentsec audit check-proof`` verifies it)."""
        return await self._t.run(p.proof(self._c, seq))


class AsyncSecurityStack:
    """A security stack for asyncio: trust gate, budgets and audit log,
    over the decision API. Get one with ``await``
    :func:`create_async_security_stack`, :meth:`AsyncSecurityStack.connect`
    or ``await`` :meth:`AsyncSecurityStack.start`; close it with ``await
    stack.close()`` or ``async with``. One stack may serve many concurrent
    tasks."""

    def __init__(
        self,
        url: str,
        creds: p.Credentials,
        *,
        retry: Optional[RetryPolicy] = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        local: Optional[LocalServer] = None,
    ) -> None:
        """Prefer :meth:`connect` and :meth:`start`; this wires the parts."""
        self.url: str = p.check_url(url)
        self._client = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": p.USER_AGENT},
            trust_env=local is None,  # a local server is on 127.0.0.1: never through a proxy
        )
        self._creds = creds
        self._t = _AsyncTransport(self._client, retry or RetryPolicy())
        self._local = local
        #: The trust gate.
        self.trust_gate: AsyncTrustGateClient = AsyncTrustGateClient(creds, self._t)
        #: The budget enforcer.
        self.budget: AsyncBudgetClient = AsyncBudgetClient(creds, self._t)
        #: The audit log.
        self.audit: AsyncAuditClient = AsyncAuditClient(creds, self._t)
        self._closed = False

    @classmethod
    def connect(
        cls,
        url: str,
        token: str,
        *,
        retry: Optional[RetryPolicy] = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> "AsyncSecurityStack":
        """A stack over a running server at ``url``, calling with ``token``
        (an agent's or an operator's). Not a coroutine: nothing is sent yet."""
        return cls(url, p.Credentials(token=p.check_token(token)), retry=retry, timeout=timeout, transport=transport)

    @classmethod
    async def start(
        cls, config: SecurityStackConfig, *, retry: Optional[RetryPolicy] = None, timeout: float = DEFAULT_TIMEOUT
    ) -> "AsyncSecurityStack":
        """Starts a local ``agentsec serve`` for ``config`` (in a thread, so
        the event loop keeps running) and returns a stack over it."""
        server = await asyncio.to_thread(LocalServer.start, config)
        try:
            return cls(server.url, _local_creds(server), retry=retry, timeout=timeout, local=server)
        except BaseException:
            await asyncio.to_thread(server.stop)
            raise

    @property
    def data_dir(self) -> Optional[str]:
        """A local stack's data directory (``None`` for a connected stack)."""
        return self._local.data_dir if self._local else None

    @overload
    async def guard(
        self,
        request: p.RequestLike,
        fn: Callable[[], Awaitable[R]],
        tokens: Optional[Callable[[R], int]] = None,
        ttl_seconds: Optional[int] = None,
    ) -> R: ...

    @overload
    async def guard(
        self,
        request: p.RequestLike,
        fn: Callable[[], R],
        tokens: Optional[Callable[[R], int]] = None,
        ttl_seconds: Optional[int] = None,
    ) -> R: ...

    async def guard(
        self,
        request: p.RequestLike,
        fn: Callable[[], Any],
        tokens: Optional[Callable[[Any], int]] = None,
        ttl_seconds: Optional[int] = None,
    ) -> Any:
        """Runs ``fn()`` (an async callable; a plain one works too) as a
        governed call: begins it (a denial raises TrustDeniedError or
        BudgetExceededError, recorded), awaits it, and ends it with the
        tokens it used — ``tokens(result)``, else ``result.tokens_used`` /
        ``result["tokens_used"]``, else 0. Returns fn's result, unless the
        end refuses it (BudgetExceededError, AuditUnavailableError). If
        ``fn`` raises, the call is ended as failed and the error re-raised."""
        call = await self._t.run(p.begin_call(self._creds, request, ttl_seconds))
        try:
            out = fn()
            result = await out if inspect.isawaitable(out) else out
            used = p.tokens_of(result, tokens)
        except BaseException as exc:
            try:
                await self._t.run(p.end_call(call, error=p.describe_error(exc), ran=True))
            except Exception:
                pass  # fn's error is the one to see; an unended call expires as spent
            raise
        await self._t.run(p.end_call(call, tokens=used))
        return result

    async def close(self) -> None:
        """Closes the connection pool and, for a local stack, stops the
        server (and removes a temporary data directory). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._client.aclose()
        finally:
            if self._local is not None:
                await asyncio.to_thread(self._local.stop)

    async def __aenter__(self) -> "AsyncSecurityStack":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        mode = "local" if self._local else "connected"
        return f"<AsyncSecurityStack {mode} {self.url}>"


async def create_async_security_stack(
    config: Optional[SecurityStackConfig] = None,
    *,
    url: Optional[str] = None,
    token: Optional[str] = None,
    retry: Optional[RetryPolicy] = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> AsyncSecurityStack:
    """Returns an :class:`AsyncSecurityStack`: a local one started from
    ``config``, or, given ``url`` and ``token``, one connected to a running
    server."""
    if config is not None:
        if url is not None or token is not None:
            raise TypeError("create_async_security_stack takes a config (local) or url and token (connect), not both")
        return await AsyncSecurityStack.start(config, retry=retry, timeout=timeout)
    if url is None or token is None:
        raise TypeError("create_async_security_stack needs a config, or url and token")
    return AsyncSecurityStack.connect(url, token, retry=retry, timeout=timeout)
