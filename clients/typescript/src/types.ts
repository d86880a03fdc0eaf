/**
 * The shapes the client takes and returns, in the client's (camelCase)
 * naming. The server's JSON is snake_case; the client converts both ways.
 *
 * @packageDocumentation
 */

import type { TransportOptions } from './http.js';

/** One agent of a local stack and the trust level an operator assigned it. */
export interface AgentAssignment {
  /** The agent's id, as it appears in decisions and audit records. */
  agentId: string;
  /** Its level on the trust ladder, such as `'verified'`. */
  level: string;
  /** If set, the assignment holds only for requests in this scope. */
  scope?: string;
}

/** A rule saying which level a tool (a name or a glob pattern) requires. */
export interface TrustRule {
  /** A tool name or a glob pattern (`*`, `?`, `[…]`). */
  tool: string;
  /** The level it requires. */
  level: string;
}

/** The trust gate of a local stack. */
export interface TrustGateConfig {
  /** The level {@link TrustGateConfig.toolName} requires (the seed's single rule). */
  requiredLevel?: string;
  /**
   * The tool the seed's rule is about; also the tool a request names when it
   * names none.
   */
  toolName?: string;
  /** The agents and their levels; the first is the default agent of calls that name none. */
  agents: AgentAssignment[];
  /** More rules, after the one made of toolName and requiredLevel. */
  rules?: TrustRule[];
  /** The level tools no rule covers require; unset denies them. */
  defaultLevel?: string;
  /** `'default'` (public < verified < privileged), `'aumos'`, or a list of level names, lowest first. */
  ladder?: string | string[];
}

/** Every session's limits in a local stack. */
export interface BudgetConfig {
  /** Tokens a session may use in all (positive). */
  tokenLimit: number;
  /** Calls a session may make in all (positive). */
  callLimit: number;
  /** If set, the most tokens one call's result may count; a bigger result is withheld. */
  callTokenLimit?: number;
}

/**
 * Options of a local stack: the seed's configuration. The client starts its
 * own `agentsec serve` on 127.0.0.1 and talks to it.
 */
export interface LocalStackOptions extends TransportOptions {
  /** The trust gate: rules and agents. */
  trustGate: TrustGateConfig;
  /** The budget every session gets. */
  budget: BudgetConfig;
  /** The namespace stamped on every audit record, such as `'my-agent.production'`. */
  auditNamespace: string;
  /**
   * Where the configuration, keys and audit log live. Given, it is created
   * if missing and kept on close (and reused by the next stack given it);
   * otherwise a fresh temporary directory is made and removed on close.
   */
  dataDir?: string;
}

/** Options of a stack connected to a running agentsec server. */
export interface ConnectOptions extends TransportOptions {
  /** The server's base URL, such as `'http://127.0.0.1:8080'`. */
  url: string;
  /** An agent's (or an operator's) bearer token. */
  token: string;
}

/** A tool call an agent wants to make. */
export interface ToolRequest {
  /**
   * The agent making it. In local mode it picks the agent's token (default:
   * the first configured agent); in connect mode it is sent where the API
   * takes it, so that the server refuses a name that is not the token's.
   */
  agentId?: string;
  /** The agent's budget session (1–200 bytes of UTF-8, no `/`, no control characters). */
  sessionId: string;
  /** The tool; in local mode it defaults to `trustGate.toolName`. */
  toolName?: string;
  /** The trust scope of the request, if any. */
  scope?: string;
  /** Strings recorded with the call. */
  attrs?: Record<string, string>;
}

/** The trust gate's answer to a question; nothing is recorded. */
export interface TrustDecision {
  /** Whether the agent may call the tool. */
  allowed: boolean;
  /** Why, for people (`"level verified meets verified"`). */
  reason: string;
  /** The level the tool requires. */
  requiredLevel: string;
  /** The level the agent holds. */
  assignedLevel: string;
  /** The agent the server judged (the token's). */
  agent: string;
  /** The tool. */
  tool: string;
  /** The scope (empty if none). */
  scope: string;
}

/** Token and call counts: a session's usage, its limits, or what remains. */
export interface Usage {
  /** Tokens. */
  tokens: number;
  /** Calls. */
  calls: number;
  /** Other counts the server may add, in camelCase. */
  [count: string]: number;
}

/** A session's budget, as `budget.checkBudget` reads it. */
export interface BudgetDecision {
  /** The session, as the agent names it. */
  sessionId: string;
  /** Whether the session has a call slot and tokens left. */
  allowed: boolean;
  /** Why not, when not allowed. */
  reason: string;
  /** What it has used (open reservations count as calls). */
  used: Usage;
  /** Its limits. */
  limits: Usage;
  /** What is left. */
  remaining: Usage;
}

/** The answer to a recorded change of a session's budget. */
export interface SpendResult {
  /** The index of the audit record of the change. */
  decisionId: number;
  /** The session's usage after it. */
  used: Usage;
  /** The session's limits. */
  limits: Usage;
}

/** The answer to `Reservation.commit` and `Reservation.release`. */
export interface ReservationOutcome extends SpendResult {
  /** The reservation. */
  reservationId: string;
  /** The tokens committed (commit only). */
  tokens?: number;
}

/** Options of `budget.reserve`. */
export interface ReserveOptions {
  /** Seconds until an unsettled reservation counts as spent (1–3600; server default 300). */
  ttlSeconds?: number;
  /** Local mode: whose session (default the first agent). Connect mode: ignored — the token names the agent. */
  agentId?: string;
}

/** Options naming the agent whose session a budget call is about. */
export interface AgentOption {
  /**
   * Local mode: the agent whose session it is (default the first agent).
   * Connect mode: sent as `?agent=` where the API takes it (operators
   * reading a session must name its agent); otherwise ignored.
   */
  agentId?: string;
}

/** What the agent logs with `audit.log`. */
export interface AuditEvent {
  /** The event's name; names starting `tool.`, `trust.`, `budget.` or `agentsec.` are the server's own. */
  event: string;
  /** The agent's session it is about. */
  sessionId?: string;
  /** The tool it is about. */
  toolName?: string;
  /** `'allow'` or `'deny'`. */
  outcome?: 'allow' | 'deny';
  /** Why, for people. */
  reason?: string;
  /** Tokens to record (not counted against any budget). */
  tokens?: number;
  /** Strings recorded with it. */
  attrs?: Record<string, string>;
  /** Local mode: which agent logs it (default the first agent). Connect mode: ignored — the server stamps the token's agent. */
  agentId?: string;
}

/** One record of the audit log, in the client's naming. Empty fields are absent. */
export interface AuditRecord {
  /** Its index in the log. */
  seq: number;
  /** When it was written. */
  time: Date;
  /** The namespace of the application that wrote it. */
  namespace: string;
  /** The event: `tool.call`, `budget.spend`, `budget.expire`, or a client's own. */
  event: string;
  /** The agent. */
  agentId?: string;
  /** The session as the agent names it (the part of {@link AuditRecord.sessionKey} after `<agent>/`). */
  sessionId?: string;
  /** The session as the server keeps it: `<agent>/<session>`. */
  sessionKey?: string;
  /** The tool. */
  toolName?: string;
  /** The trust scope. */
  scope?: string;
  /** `'allow'` or `'deny'`. */
  outcome?: string;
  /** Why. */
  reason?: string;
  /** The level the tool required. */
  requiredLevel?: string;
  /** The level the agent held. */
  assignedLevel?: string;
  /** Tokens counted. */
  tokens?: number;
  /** Strings recorded with it (`source: 'client'` for events a client logged). */
  attrs?: Record<string, string>;
  /** Fields the server adds that this client does not know, in camelCase. */
  [field: string]: unknown;
}

/** The answer to `audit.log`. */
export interface LogResult {
  /** The index of the record written. */
  decisionId: number;
  /** The record as written, with the agent, namespace and time the server stamped. */
  record: AuditRecord;
}

/** Which records `audit.query` returns; every field narrows the answer. */
export interface AuditFilter {
  /**
   * The agent. An agent's token reads only its own records. In local mode
   * it also says whose session {@link AuditFilter.sessionId} is (default the
   * first agent).
   */
  agentId?: string;
  /**
   * The session. Local mode and agent tokens: the agent's own session name.
   * Connect mode with an operator token: see the README (`<agent>/<session>`).
   */
  sessionId?: string;
  /** The tool. */
  toolName?: string;
  /** The event name. */
  event?: string;
  /** `'allow'` or `'deny'`. */
  outcome?: string;
  /** Records at or after this time. */
  since?: Date | string;
  /** Records before this time. */
  until?: Date | string;
  /** Records per page (1–1000, server default 100). */
  limit?: number;
  /** The page after the one that gave this `nextCursor`. */
  cursor?: string;
}

/** One page of `audit.query`. */
export interface QueryResult {
  /** The records, oldest first. */
  records: AuditRecord[];
  /** Pass as `cursor` for the next page; absent on the last page. */
  nextCursor?: string;
}

/** The latest signed checkpoint of the log. */
export interface Checkpoint {
  /** The log's origin line. */
  origin: string;
  /** How many records it covers. */
  size: number;
  /** The Merkle root, base64. */
  rootHash: string;
  /** The signed note text. */
  checkpoint: string;
}

/** A record and its leaf hash (`audit.get`). */
export interface RecordEntry {
  /** The record. */
  record: AuditRecord;
  /** Its leaf hash, base64. */
  leafHash: string;
}

/** An inclusion proof of one record (`audit.proof`). */
export interface RecordProof extends RecordEntry {
  /** The record's index. */
  seq: number;
  /** A signed checkpoint covering it. */
  checkpoint: string;
  /** Text that `agentsec audit check-proof` verifies. */
  proof: string;
}

/** What `guard` passes to the function it runs: the call the server began. */
export interface GuardCall {
  /** The call's id on the server. */
  callId: string;
  /** The session. */
  sessionId: string;
  /** The tool. */
  toolName: string;
  /** When the call counts as spent if it has not ended. */
  expiresAt: Date;
  /** The level the tool requires. */
  requiredLevel: string;
  /** The level the agent holds. */
  assignedLevel: string;
}

/** Options of `guard`. */
export interface GuardOptions<T> {
  /**
   * The tokens the result used. By default `result.tokensUsed`, or 0 if
   * the result has none; a count that is not an integer from 0 to 2^53−1
   * is a `TypeError`.
   */
  tokens?: (result: T) => number;
  /** Seconds until the call counts as spent if it has not ended (1–3600; server default 300). */
  ttlSeconds?: number;
}
