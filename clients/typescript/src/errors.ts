/**
 * Errors thrown by the agentsec client.
 *
 * Every error the server answers with is an RFC 9457 problem document whose
 * `code` field is stable; the client turns it into an instance of the
 * subclass of {@link AgentsecError} named after that code, so that callers
 * can write `if (err instanceof BudgetExceededError)`. A problem with an
 * unknown code, or an error answer that is not a problem document, becomes
 * a plain {@link AgentsecError}.
 *
 * @packageDocumentation
 */

/** The stable `code` values of the server's problem documents (docs/api.md, "Errors"). */
export type ProblemCode =
  | 'invalid_request'
  | 'unauthenticated'
  | 'forbidden'
  | 'trust_denied'
  | 'not_found'
  | 'conflict'
  | 'budget_exceeded'
  | 'rate_limited'
  | 'audit_unavailable'
  | 'budget_unavailable';

/**
 * An RFC 9457 problem document as the server sends it (snake_case, as on
 * the wire). Fields beyond these may be present.
 */
export interface Problem {
  /** A URI naming the kind of problem. */
  type?: string;
  /** A short summary for people. */
  title?: string;
  /** The HTTP status. */
  status?: number;
  /** The stable machine-readable code. */
  code?: string;
  /** An explanation for people of this occurrence. */
  detail?: string;
  /** The decision's reason, when the problem is a recorded denial. */
  reason?: string;
  /** The audit record of the denial, when it was recorded. */
  decision_id?: number;
  [field: string]: unknown;
}

/** Fields common to every {@link AgentsecError}'s constructor. */
export interface AgentsecErrorInit {
  /** The stable code: a {@link ProblemCode}, or one of the client's own. */
  code: string;
  /** The HTTP status, or 0 when no answer was received. */
  status?: number;
  /** A short summary for people. */
  title?: string;
  /** An explanation for people. */
  detail?: string;
  /** The decision's reason, for recorded denials. */
  reason?: string;
  /** The index of the audit record of the decision, when it was recorded. */
  decisionId?: number;
  /** The raw problem document, when the server sent one. */
  problem?: Problem;
  /** The underlying error, for transport failures. */
  cause?: unknown;
}

/**
 * The base class of every error the client throws on purpose (argument
 * mistakes are `TypeError`s). It carries the problem document's fields in
 * the client's naming.
 */
export class AgentsecError extends Error {
  /** The stable code (`budget_exceeded`, `trust_denied`, …, or a client code such as `connection_error`). */
  readonly code: string;
  /** The HTTP status of the answer, or 0 when there was none. */
  readonly status: number;
  /** The problem's title, for people. */
  readonly title: string | undefined;
  /** The problem's detail, for people. */
  readonly detail: string | undefined;
  /** The decision's reason, for recorded denials (`"call limit reached"`). */
  readonly reason: string | undefined;
  /**
   * The index of the audit record of this decision, when the refusal was
   * recorded; `agentsec audit prove -record N` and `audit.proof(N)` prove it.
   */
  readonly decisionId: number | undefined;
  /** The raw problem document, if the server sent one. */
  readonly problem: Problem | undefined;

  /** Makes an error; most callers never construct one. */
  constructor(init: AgentsecErrorInit) {
    const message = init.detail || init.title || init.reason || init.code;
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'AgentsecError';
    this.code = init.code;
    this.status = init.status ?? 0;
    this.title = init.title;
    this.detail = init.detail;
    this.reason = init.reason;
    this.decisionId = init.decisionId;
    this.problem = init.problem;
  }
}

/** `trust_denied` (403): the trust gate refused the call; the refusal was recorded. */
export class TrustDeniedError extends AgentsecError {
  /** The level the tool requires, when the server said. */
  readonly requiredLevel: string | undefined;
  /** The level the agent holds, when the server said. */
  readonly assignedLevel: string | undefined;
  /** Makes the error from the server's answer. */
  constructor(init: AgentsecErrorInit) {
    super(init);
    this.name = 'TrustDeniedError';
    this.requiredLevel = str(init.problem?.required_level);
    this.assignedLevel = str(init.problem?.assigned_level);
  }
}

/**
 * `budget_exceeded` (429): the session has no call slot left, or a result
 * was over the budget (and must not be used); the refusal was recorded.
 */
export class BudgetExceededError extends AgentsecError {
  /** The session's usage when it was refused, when the server said (`{tokens, calls}`). */
  readonly used: Record<string, number> | undefined;
  /** The session's limits, when the server said (`{tokens, calls}`). */
  readonly limits: Record<string, number> | undefined;
  /** Makes the error from the server's answer. */
  constructor(init: AgentsecErrorInit) {
    super(init);
    this.name = 'BudgetExceededError';
    this.used = numbers(init.problem?.used);
    this.limits = numbers(init.problem?.limits);
  }
}

/** `audit_unavailable` (503): the decision could not be recorded, so it was denied (fail closed). */
export class AuditUnavailableError extends AgentsecError {
  /** Makes the error from the server's answer. */
  constructor(init: AgentsecErrorInit) {
    super(init);
    this.name = 'AuditUnavailableError';
  }
}

/** `budget_unavailable` (503): the budget store could not be asked. */
export class BudgetUnavailableError extends AgentsecError {
  /** Makes the error from the server's answer. */
  constructor(init: AgentsecErrorInit) {
    super(init);
    this.name = 'BudgetUnavailableError';
  }
}

/** `invalid_request` (400, 405, 413, 415): the server refused the request's form or values. */
export class InvalidRequestError extends AgentsecError {
  /** Makes the error from the server's answer. */
  constructor(init: AgentsecErrorInit) {
    super(init);
    this.name = 'InvalidRequestError';
  }
}

/** `unauthenticated` (401): no token, or not a known one. */
export class UnauthenticatedError extends AgentsecError {
  /** Makes the error from the server's answer. */
  constructor(init: AgentsecErrorInit) {
    super(init);
    this.name = 'UnauthenticatedError';
  }
}

/** `forbidden` (403): the caller may not do this (another agent's name or scope, or an operator role without the right). */
export class ForbiddenError extends AgentsecError {
  /** Makes the error from the server's answer. */
  constructor(init: AgentsecErrorInit) {
    super(init);
    this.name = 'ForbiddenError';
  }
}

/** `not_found` (404): no such route, reservation, call or record — or not the caller's. */
export class NotFoundError extends AgentsecError {
  /** Makes the error from the server's answer. */
  constructor(init: AgentsecErrorInit) {
    super(init);
    this.name = 'NotFoundError';
  }
}

/**
 * `conflict` (409, 422): the reservation or call is already committed,
 * released, ended or expired; or an idempotency key was reused with another
 * body, or is still in progress.
 */
export class ConflictError extends AgentsecError {
  /** Makes the error from the server's answer. */
  constructor(init: AgentsecErrorInit) {
    super(init);
    this.name = 'ConflictError';
  }
}

/** `rate_limited` (429): the caller holds too many open reservations and calls; try later. */
export class RateLimitedError extends AgentsecError {
  /** Makes the error from the server's answer. */
  constructor(init: AgentsecErrorInit) {
    super(init);
    this.name = 'RateLimitedError';
  }
}

/**
 * The server could not be reached, or the connection failed, on every
 * attempt (code `connection_error`, status 0). `cause` holds the last
 * transport error.
 */
export class AgentsecConnectionError extends AgentsecError {
  /** How many attempts were made. */
  readonly attempts: number;
  /** Makes the error; `attempts` is how many requests were tried. */
  constructor(init: AgentsecErrorInit & { attempts: number }) {
    super(init);
    this.name = 'AgentsecConnectionError';
    this.attempts = init.attempts;
  }
}

/**
 * Local mode found no `agentsec` binary: neither `AGENTSEC_BIN` nor
 * `agentsec` on `PATH` (code `binary_not_found`). The message says how to
 * install one.
 */
export class AgentsecBinaryNotFoundError extends AgentsecError {
  /** Makes the error; `detail` says where the client looked. */
  constructor(detail: string) {
    super({ code: 'binary_not_found', title: 'agentsec binary not found', detail });
    this.name = 'AgentsecBinaryNotFoundError';
  }
}

/**
 * Local mode could not start the `agentsec` server (code `start_failed`):
 * `keygen` failed, or `serve` exited or did not say its address in time.
 * `stderr` holds what the process printed.
 */
export class AgentsecStartError extends AgentsecError {
  /** The end of what the failed process wrote to its standard error. */
  readonly stderr: string;
  /** Makes the error; `stderr` is what the process printed. */
  constructor(detail: string, stderr: string) {
    const tail = stderr.trim();
    super({ code: 'start_failed', title: 'agentsec did not start', detail: tail ? `${detail}:\n${tail}` : detail });
    this.name = 'AgentsecStartError';
    this.stderr = stderr;
  }
}

type ErrorClass = new (init: AgentsecErrorInit) => AgentsecError;

const byCode: Record<ProblemCode, ErrorClass> = {
  invalid_request: InvalidRequestError,
  unauthenticated: UnauthenticatedError,
  forbidden: ForbiddenError,
  trust_denied: TrustDeniedError,
  not_found: NotFoundError,
  conflict: ConflictError,
  budget_exceeded: BudgetExceededError,
  rate_limited: RateLimitedError,
  audit_unavailable: AuditUnavailableError,
  budget_unavailable: BudgetUnavailableError,
};

/**
 * Turns an error answer into the matching {@link AgentsecError} subclass:
 * by the problem's `code`, or a base {@link AgentsecError} for an unknown
 * code or a body that is not a problem document.
 *
 * @param status - the HTTP status of the answer
 * @param body - the answer's body, as text
 * @param contentType - the answer's Content-Type, if any
 */
export function errorFromResponse(status: number, body: string, contentType?: string | null): AgentsecError {
  let problem: Problem | undefined;
  if (body && (!contentType || /json/i.test(contentType))) {
    try {
      const parsed: unknown = JSON.parse(body);
      if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) problem = parsed as Problem;
    } catch {
      // not JSON: a proxy's page, say
    }
  }
  if (!problem || typeof problem.code !== 'string') {
    const text = body.trim().slice(0, 500);
    return new AgentsecError({
      code: problem && typeof problem.code === 'string' ? problem.code : 'http_error',
      status,
      title: problem ? str(problem.title) : undefined,
      detail: problem ? str(problem.detail) ?? `HTTP ${status}` : text ? `HTTP ${status}: ${text}` : `HTTP ${status}`,
      problem,
    });
  }
  const init: AgentsecErrorInit = {
    code: problem.code,
    status,
    title: str(problem.title),
    detail: str(problem.detail),
    reason: str(problem.reason),
    decisionId: typeof problem.decision_id === 'number' ? problem.decision_id : undefined,
    problem,
  };
  const cls = Object.prototype.hasOwnProperty.call(byCode, problem.code) ? byCode[problem.code as ProblemCode] : AgentsecError;
  return new cls(init);
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function numbers(v: unknown): Record<string, number> | undefined {
  if (!v || typeof v !== 'object') return undefined;
  const out: Record<string, number> = {};
  for (const [k, n] of Object.entries(v as Record<string, unknown>)) {
    if (typeof n === 'number') out[camel(k)] = n;
  }
  return out;
}

/** snake_case to camelCase. */
export function camel(key: string): string {
  return key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}
