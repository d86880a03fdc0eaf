/**
 * `@agentsec/client`: the TypeScript client of agentsec's decision API — a
 * trust gate, exact budgets and a tamper-evident audit log for AI agents.
 *
 * ```js
 * import { createSecurityStack } from '@agentsec/client';
 * const stack = await createSecurityStack({ url: 'http://127.0.0.1:8080', token: process.env.AGENTSEC_TOKEN });
 * const answer = await stack.guard({ sessionId: 's1', toolName: 'file-reader' }, () => readFile());
 * await stack.close();
 * ```
 *
 * @packageDocumentation
 */

export { createSecurityStack, SecurityStack, TrustGate, Budget, Audit, Reservation } from './stack.js';
export {
  AgentsecError,
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
  AgentsecConnectionError,
  AgentsecBinaryNotFoundError,
  AgentsecStartError,
  errorFromResponse,
} from './errors.js';
export type { ProblemCode, Problem, AgentsecErrorInit } from './errors.js';
export type { RetryOptions, TransportOptions } from './http.js';
export { findBinary, installHint } from './local.js';
export type * from './types.js';
