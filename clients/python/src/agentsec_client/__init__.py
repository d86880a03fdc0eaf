"""agentsec_client: the Python client of agentsec's decision API.

agentsec is a security stack for AI agents: a trust gate (which agent may
call which tool), exact budgets (tokens and calls per session, reserved
atomically) and a tamper-evident audit log (a signed Merkle log). This
package talks to ``agentsec serve`` over HTTP, either one you run
(:meth:`SecurityStack.connect`) or one it starts for you from a
:class:`SecurityStackConfig` (:func:`create_security_stack`).

Sync::

    with create_security_stack(config) as stack:
        stack.guard(ToolRequest(agent_id="agent-7", session_id="s1"), lambda: run_tool())

Async::

    async with await create_async_security_stack(config) as stack:
        await stack.guard(request, run_tool_async)
"""

from ._async import (
    AsyncAuditClient,
    AsyncBudgetClient,
    AsyncReservation,
    AsyncSecurityStack,
    AsyncTrustGateClient,
    create_async_security_stack,
)
from ._local import INSTALL_HINT
from ._sync import AuditClient, BudgetClient, Reservation, SecurityStack, TrustGateClient, create_security_stack
from .config import (
    AgentAssignment,
    BudgetEnforcerConfig,
    RetryPolicy,
    SecurityStackConfig,
    TrustGateConfig,
    TrustRule,
)
from .errors import (
    AgentsecBinaryNotFoundError,
    AgentsecConnectionError,
    AgentsecError,
    AgentsecStartupError,
    AuditUnavailableError,
    BudgetExceededError,
    BudgetUnavailableError,
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    TrustDeniedError,
    UnauthenticatedError,
)
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
)

#: The package's version.
__version__ = "0.1.0"

__all__ = [
    "__version__",
    "INSTALL_HINT",
    # stacks
    "create_security_stack",
    "create_async_security_stack",
    "SecurityStack",
    "AsyncSecurityStack",
    "TrustGateClient",
    "BudgetClient",
    "AuditClient",
    "Reservation",
    "AsyncTrustGateClient",
    "AsyncBudgetClient",
    "AsyncAuditClient",
    "AsyncReservation",
    # configuration
    "SecurityStackConfig",
    "TrustGateConfig",
    "TrustRule",
    "AgentAssignment",
    "BudgetEnforcerConfig",
    "RetryPolicy",
    # values
    "ToolRequest",
    "AuditRecord",
    "AuditFilter",
    "TrustDecision",
    "BudgetStatus",
    "BudgetUpdate",
    "Usage",
    "Record",
    "RecordPage",
    "LoggedEvent",
    "Checkpoint",
    "RecordProof",
    "CallResult",
    # errors
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
]
