"""The client's exceptions.

A refusal from the server is an RFC 9457 problem document whose stable
``code`` picks the exception class; every class carries the document's
fields. Transport failures that outlast the retries raise
:class:`AgentsecConnectionError`.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional, Type

from .models import Usage

__all__ = [
    "AgentsecError",
    "TrustDeniedError",
    "BudgetExceededError",
    "AuditUnavailableError",
    "BudgetUnavailableError",
    "InvalidRequestError",
    "UnauthenticatedError",
    "ForbiddenError",
    "NotFoundError",
    "ConflictError",
    "RateLimitedError",
    "AgentsecConnectionError",
    "AgentsecBinaryNotFoundError",
    "AgentsecStartupError",
    "error_for_problem",
]


class AgentsecError(Exception):
    """The base of the client's errors.

    ``code`` is the problem's stable code (``""`` when the answer was not a
    problem document of a known code), ``status`` the HTTP status (``None``
    when there was no answer), ``title`` and ``detail`` are for people,
    ``reason`` is the decision's reason, ``decision_id`` the index of the
    record of the refusal in the audit log (``None`` if it was not
    recorded), ``problem`` the raw document. Denials of a call also carry
    ``required_level``/``assigned_level`` (trust) or ``used``/``limits``
    (budget).
    """

    #: The problem code this class stands for.
    default_code: str = ""

    def __init__(
        self,
        message: Optional[str] = None,
        *,
        code: Optional[str] = None,
        status: Optional[int] = None,
        title: str = "",
        detail: str = "",
        reason: str = "",
        decision_id: Optional[int] = None,
        problem: Optional[Dict[str, Any]] = None,
        required_level: str = "",
        assigned_level: str = "",
        used: Optional[Usage] = None,
        limits: Optional[Usage] = None,
    ) -> None:
        self.code: str = self.default_code if code is None else code
        self.status: Optional[int] = status
        self.title: str = title
        self.detail: str = detail
        self.reason: str = reason
        self.decision_id: Optional[int] = decision_id
        self.problem: Optional[Dict[str, Any]] = problem
        self.required_level: str = required_level
        self.assigned_level: str = assigned_level
        self.used: Optional[Usage] = used
        self.limits: Optional[Usage] = limits
        if message is None:
            message = self._describe()
        super().__init__(message)

    def _describe(self) -> str:
        head = self.code or "error"
        if self.status is not None:
            head += f" ({self.status})"
        text = self.detail or self.title or self.reason
        msg = f"{head}: {text}" if text else head
        if self.decision_id is not None:
            msg += f" [decision {self.decision_id}]"
        return msg


class TrustDeniedError(AgentsecError):
    """The trust gate refused the call (403 ``trust_denied``); recorded."""

    default_code = "trust_denied"


class BudgetExceededError(AgentsecError):
    """The session has no call slot left, or a result is over the budget
    (429 ``budget_exceeded``); recorded. A result it refers to must not be
    used."""

    default_code = "budget_exceeded"


class AuditUnavailableError(AgentsecError):
    """The decision could not be recorded, so it is denied (503
    ``audit_unavailable``, fail closed). Retried with backoff first."""

    default_code = "audit_unavailable"


class BudgetUnavailableError(AgentsecError):
    """The budget store could not be asked (503 ``budget_unavailable``).
    Retried with backoff first."""

    default_code = "budget_unavailable"


class InvalidRequestError(AgentsecError):
    """The request was malformed or a value was bad (400, 405, 413, 415
    ``invalid_request``)."""

    default_code = "invalid_request"


class UnauthenticatedError(AgentsecError):
    """No token, or not a known one (401 ``unauthenticated``)."""

    default_code = "unauthenticated"


class ForbiddenError(AgentsecError):
    """The caller may not do this: another agent's name or scope, or an
    operator role without the right (403 ``forbidden``)."""

    default_code = "forbidden"


class NotFoundError(AgentsecError):
    """No such route, reservation, call or record — or not the caller's
    (404 ``not_found``)."""

    default_code = "not_found"


class ConflictError(AgentsecError):
    """The reservation or call is already committed, released, ended or
    expired, or an idempotency key was reused with another body (409/422
    ``conflict``)."""

    default_code = "conflict"


class RateLimitedError(AgentsecError):
    """Too many open reservations and calls for this caller (429
    ``rate_limited``); try later."""

    default_code = "rate_limited"


class AgentsecConnectionError(AgentsecError, ConnectionError):
    """The server could not be reached, or the connection failed, on every
    attempt. The last transport error is the ``__cause__``."""

    default_code = "connection_error"


class AgentsecBinaryNotFoundError(AgentsecError):
    """A local stack needs the ``agentsec`` binary and none was found."""

    default_code = "binary_not_found"


class AgentsecStartupError(AgentsecError):
    """A local stack's ``agentsec`` process failed to start; the message
    holds what it wrote to stderr (also in ``stderr``)."""

    default_code = "startup_failed"

    def __init__(self, message: str, *, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr: str = stderr


_BY_CODE: Dict[str, Type[AgentsecError]] = {
    cls.default_code: cls
    for cls in (
        TrustDeniedError,
        BudgetExceededError,
        AuditUnavailableError,
        BudgetUnavailableError,
        InvalidRequestError,
        UnauthenticatedError,
        ForbiddenError,
        NotFoundError,
        ConflictError,
        RateLimitedError,
    )
}


def _usage(v: Any) -> Optional[Usage]:
    if isinstance(v, Mapping):
        try:
            return Usage(tokens=int(v.get("tokens", 0)), calls=int(v.get("calls", 0)))
        except (TypeError, ValueError):
            return None
    return None


def error_for_problem(status: int, body: bytes, content_type: str = "") -> AgentsecError:
    """Returns the exception for an error answer: the class of the problem's
    ``code``, or :class:`AgentsecError` for an unknown code or a body that
    is not a problem document."""
    doc: Any = None
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        text = body[:200].decode("utf-8", "replace").strip() if body else ""
        return AgentsecError(
            f"HTTP {status}" + (f": {text}" if text else ""), code="", status=status, detail=text
        )
    raw_code = doc.get("code")
    code = raw_code if isinstance(raw_code, str) else ""
    cls = _BY_CODE.get(code, AgentsecError)
    decision = doc.get("decision_id")

    def s(key: str) -> str:
        v = doc.get(key)
        return v if isinstance(v, str) else ""

    return cls(
        code=code,
        status=status,
        title=s("title"),
        detail=s("detail"),
        reason=s("reason"),
        decision_id=decision if isinstance(decision, int) and not isinstance(decision, bool) else None,
        problem=doc,
        required_level=s("required_level"),
        assigned_level=s("assigned_level"),
        used=_usage(doc.get("used")),
        limits=_usage(doc.get("limits")),
    )
