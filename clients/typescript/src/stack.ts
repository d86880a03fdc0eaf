/**
 * The security stack: the trust gate, the budget and the audit log of one
 * agentsec server, and `guard`, which puts a tool call behind all three.
 *
 * @packageDocumentation
 */

import { AgentsecError } from './errors.js';
import { Transport, type Json, type Kind } from './http.js';
import { startLocal, type LocalServer } from './local.js';
import type {
  AgentOption,
  AuditEvent,
  AuditFilter,
  AuditRecord,
  BudgetDecision,
  Checkpoint,
  ConnectOptions,
  GuardCall,
  GuardOptions,
  LocalStackOptions,
  LogResult,
  QueryResult,
  RecordEntry,
  RecordProof,
  ReservationOutcome,
  ReserveOptions,
  SpendResult,
  ToolRequest,
  TrustDecision,
  Usage,
} from './types.js';

/**
 * Makes a security stack.
 *
 * - **Connect mode** — `{ url, token }`: talks to a running `agentsec serve`
 *   with an agent's (or an operator's) bearer token.
 * - **Local mode** — the seed's configuration (`trustGate`, `budget`,
 *   `auditNamespace`, optional `dataDir`): finds the `agentsec` binary
 *   (`AGENTSEC_BIN`, else `PATH`), writes a configuration with a fresh
 *   token per agent, starts `agentsec serve` on 127.0.0.1 and talks to it.
 *
 * Close the stack when done (`await stack.close()`, or `await using`).
 *
 * @throws {@link AgentsecBinaryNotFoundError} in local mode, if there is no binary.
 * @throws {@link AgentsecStartError} in local mode, if the server does not start.
 * @throws `TypeError` for options that are missing or mistyped.
 */
export async function createSecurityStack(options: ConnectOptions | LocalStackOptions): Promise<SecurityStack> {
  if (!options || typeof options !== 'object') throw new TypeError('agentsec: createSecurityStack needs options');
  if ('url' in options && options.url !== undefined) {
    if ('trustGate' in options) throw new TypeError('agentsec: pass either { url, token } (connect mode) or a configuration (local mode), not both');
    const { url, token } = options;
    if (typeof url !== 'string') throw new TypeError('agentsec: url must be a string');
    if (typeof token !== 'string' || token === '') throw new TypeError('agentsec: connect mode needs token, a bearer token');
    // The message never quotes the token: it is a secret.
    if (!/^[\x21-\x7e]+$/.test(token)) {
      throw new TypeError('agentsec: token must be printable ASCII, with no spaces or control characters');
    }
    const http = new Transport(url, options);
    return new SecurityStack(new Context(http, 'connect', token, undefined, undefined));
  }
  const local = options as LocalStackOptions;
  // Check the transport options before starting a process.
  new Transport('http://127.0.0.1', local);
  const server = await startLocal(local);
  const http = new Transport(server.url, local);
  return new SecurityStack(new Context(http, 'local', server.operatorToken(), server, local.trustGate.toolName));
}

/**
 * What the parts of a stack share: the transport, the tokens, whether it is
 * closed.
 *
 * @internal Not exported from the package.
 */
export class Context {
  closed = false;
  /** Connect mode: the token. Local mode: the operator's. `#private`, so it is never printed. */
  readonly #mainToken: string;
  constructor(
    readonly http: Transport,
    readonly mode: 'connect' | 'local',
    mainToken: string,
    readonly local: LocalServer | undefined,
    readonly defaultTool: string | undefined,
  ) {
    this.#mainToken = mainToken;
  }

  /** The first configured agent (local mode). */
  get firstAgent(): string | undefined {
    return this.local?.agentIds()[0];
  }

  /** The token of the agent a call acts as. */
  agentToken(agentId: string | undefined): string {
    this.checkOpen();
    if (!this.local) return this.#mainToken;
    const t = this.local.agentToken(agentId);
    if (t === undefined) {
      throw new TypeError(
        `agentsec: agent ${JSON.stringify(agentId)} is not in this local stack's trustGate.agents (${this.local.agentIds().join(', ')})`,
      );
    }
    return t;
  }

  /** The token that reads the whole log: the operator's in local mode. */
  readerToken(): string {
    this.checkOpen();
    return this.#mainToken;
  }

  checkOpen(): void {
    if (this.closed) throw new AgentsecError({ code: 'closed', detail: 'agentsec: this security stack is closed' });
  }

  request(method: 'GET' | 'POST', path: string, token: string, kind: Kind, body?: unknown): Promise<Json> {
    return this.http.request(method, path, token, kind, body);
  }
}

/** The trust gate: asks whether an agent may call a tool. */
export class TrustGate {
  /** @internal */
  constructor(private readonly ctx: Context) {}

  /**
   * Asks the trust gate whether the request's agent may call its tool
   * (`POST /v1/trust/check`). A question: nothing is recorded, and a "no" is
   * an answer (`allowed: false`), not an error. To act on the decision, use
   * {@link SecurityStack.guard}, which records it.
   *
   * In local mode `toolName` defaults to `trustGate.toolName`.
   */
  async check(request: ToolRequest): Promise<TrustDecision> {
    checkObject(request, 'request');
    const tool = request.toolName ?? this.ctx.defaultTool;
    if (typeof tool !== 'string' || tool === '') throw new TypeError('agentsec: request.toolName must name the tool');
    const token = this.ctx.agentToken(optString(request.agentId, 'request.agentId'));
    const body: Json = { tool };
    if (request.scope !== undefined) body.scope = optString(request.scope, 'request.scope');
    if (request.agentId !== undefined) body.agent = request.agentId;
    const r = await this.ctx.request('POST', '/v1/trust/check', token, 'read', body);
    return {
      allowed: r.allowed === true,
      reason: s(r.reason),
      requiredLevel: s(r.required_level),
      assignedLevel: s(r.assigned_level),
      agent: s(r.agent),
      tool: s(r.tool),
      scope: s(r.scope),
    };
  }
}

/** A call slot taken from a session's budget; settle it with {@link Reservation.commit} or {@link Reservation.release}. */
export class Reservation {
  /** The reservation's id on the server. */
  readonly id: string;
  /** The session it was taken from. */
  readonly sessionId: string;
  /** When it counts as spent if still unsettled. */
  readonly expiresAt: Date;
  /** The index of the audit record of the reservation. */
  readonly decisionId: number;
  /** The session's usage once it was taken. */
  readonly used: Usage;
  /** The session's limits. */
  readonly limits: Usage;

  readonly #ctx: Context;
  /** The token of the agent that took it; `#private`, so it is never printed. */
  readonly #token: string;

  /** @internal */
  constructor(ctx: Context, token: string, r: Json) {
    this.#ctx = ctx;
    this.#token = token;
    this.id = s(r.reservation_id);
    this.sessionId = s(r.session);
    this.expiresAt = new Date(s(r.expires_at));
    this.decisionId = n(r.decision_id);
    this.used = usage(r.used);
    this.limits = usage(r.limits);
  }

  /**
   * The tool ran and used `tokens`: commits them (`budget.commit`).
   *
   * @throws {@link ConflictError} if the reservation was already committed, released or expired.
   */
  async commit(tokens: number): Promise<ReservationOutcome> {
    checkTokens(tokens);
    this.#ctx.checkOpen();
    const r = await this.#ctx.request('POST', `/v1/budget/reservations/${encodeURIComponent(this.id)}/commit`, this.#token, 'change', { tokens });
    return outcome(r);
  }

  /**
   * The tool never ran: gives the slot back (`budget.release`).
   *
   * @throws {@link ConflictError} if the reservation was already committed, released or expired.
   */
  async release(): Promise<ReservationOutcome> {
    this.#ctx.checkOpen();
    const r = await this.#ctx.request('POST', `/v1/budget/reservations/${encodeURIComponent(this.id)}/release`, this.#token, 'change', {});
    return outcome(r);
  }
}

/** The budget: every session's exact token and call limits. */
export class Budget {
  /** @internal */
  constructor(private readonly ctx: Context) {}

  /**
   * Reads a session's budget (`GET /v1/budget/sessions/{session}`): what it
   * has used, its limits, what remains, and whether a call would be allowed
   * now. A read; to take a slot atomically use {@link Budget.reserve} or
   * {@link SecurityStack.guard}.
   */
  async checkBudget(sessionId: string, options: AgentOption = {}): Promise<BudgetDecision> {
    checkSession(sessionId);
    const agentId = optString(options?.agentId, 'agentId');
    const token = this.ctx.agentToken(agentId);
    let path = `/v1/budget/sessions/${encodeURIComponent(sessionId)}`;
    if (this.ctx.mode === 'connect' && agentId !== undefined) path += `?agent=${encodeURIComponent(agentId)}`;
    const r = await this.ctx.request('GET', path, token, 'read');
    return {
      sessionId: typeof r.session === 'string' ? r.session : sessionId,
      allowed: r.allowed === true,
      reason: s(r.reason),
      used: usage(r.used),
      limits: usage(r.limits),
      remaining: usage(r.remaining),
    };
  }

  /**
   * Takes one call slot from the session, atomically, and records it. Settle
   * it with {@link Reservation.commit} (the tool ran) or
   * {@link Reservation.release} (it never ran); one left unsettled past
   * `ttlSeconds` counts as spent.
   *
   * @throws {@link BudgetExceededError} if the session has no slot left (recorded).
   */
  async reserve(sessionId: string, options: ReserveOptions = {}): Promise<Reservation> {
    checkSession(sessionId);
    const token = this.ctx.agentToken(optString(options?.agentId, 'agentId'));
    const body: Json = {};
    if (options?.ttlSeconds !== undefined) body.ttl_seconds = checkTtl(options.ttlSeconds);
    const r = await this.ctx.request('POST', `/v1/budget/sessions/${encodeURIComponent(sessionId)}/reservations`, token, 'change', body);
    return new Reservation(this.ctx, token, r);
  }

  /**
   * Records spending that already happened (`budget.spend`): one call and
   * its tokens, whatever the limits.
   */
  async recordSpending(sessionId: string, tokens: number, options: AgentOption = {}): Promise<SpendResult> {
    checkSession(sessionId);
    checkTokens(tokens);
    const token = this.ctx.agentToken(optString(options?.agentId, 'agentId'));
    const r = await this.ctx.request('POST', `/v1/budget/sessions/${encodeURIComponent(sessionId)}/spending`, token, 'change', { tokens });
    return { decisionId: n(r.decision_id), used: usage(r.used), limits: usage(r.limits) };
  }
}

/** The tamper-evident audit log. */
export class Audit {
  /** @internal */
  constructor(private readonly ctx: Context) {}

  /**
   * Logs the agent's own event (`POST /v1/audit/events`). The server stamps
   * the agent, the namespace and the time, and marks the record
   * `source: client`.
   */
  async log(event: AuditEvent): Promise<LogResult> {
    checkObject(event, 'event');
    if (typeof event.event !== 'string' || event.event === '') throw new TypeError('agentsec: event.event must name the event');
    const token = this.ctx.agentToken(optString(event.agentId, 'event.agentId'));
    const body: Json = { event: event.event };
    if (event.sessionId !== undefined) body.session = checkSession(event.sessionId);
    if (event.toolName !== undefined) body.tool = optString(event.toolName, 'event.toolName');
    if (event.outcome !== undefined) body.outcome = event.outcome;
    if (event.reason !== undefined) body.reason = optString(event.reason, 'event.reason');
    if (event.tokens !== undefined) body.tokens = checkTokens(event.tokens);
    if (event.attrs !== undefined) body.attrs = event.attrs;
    const r = await this.ctx.request('POST', '/v1/audit/events', token, 'change', body);
    return { decisionId: n(r.decision_id), record: toRecord(r.record) };
  }

  /**
   * Reads one page of records (`GET /v1/audit/records`), oldest first. Pass
   * the answer's `nextCursor` as `cursor` for the next page, or use
   * {@link Audit.queryAll}.
   *
   * In local mode the client reads as the operator (the whole log), and
   * `sessionId` is `agentId`'s session (default the first agent's).
   */
  async query(filter: AuditFilter = {}): Promise<QueryResult> {
    checkObject(filter, 'filter');
    const token = this.ctx.readerToken();
    const q = new URLSearchParams();
    const agentId = optString(filter.agentId, 'filter.agentId');
    if (agentId !== undefined) q.set('agent', agentId);
    if (filter.sessionId !== undefined) {
      checkSession(filter.sessionId);
      q.set('session', this.ctx.mode === 'local' ? `${agentId ?? this.ctx.firstAgent}/${filter.sessionId}` : filter.sessionId);
    }
    if (filter.toolName !== undefined) q.set('tool', optString(filter.toolName, 'filter.toolName')!);
    if (filter.event !== undefined) q.set('event', optString(filter.event, 'filter.event')!);
    if (filter.outcome !== undefined) q.set('outcome', optString(filter.outcome, 'filter.outcome')!);
    if (filter.since !== undefined) q.set('since', time(filter.since, 'filter.since'));
    if (filter.until !== undefined) q.set('until', time(filter.until, 'filter.until'));
    if (filter.limit !== undefined) {
      if (!Number.isInteger(filter.limit)) throw new TypeError(`agentsec: filter.limit must be an integer, not ${String(filter.limit)}`);
      q.set('limit', String(filter.limit));
    }
    if (filter.cursor !== undefined) q.set('cursor', optString(filter.cursor, 'filter.cursor')!);
    const qs = q.toString();
    const r = await this.ctx.request('GET', '/v1/audit/records' + (qs ? '?' + qs : ''), token, 'read');
    const records = Array.isArray(r.records) ? r.records.map(toRecord) : [];
    const out: QueryResult = { records };
    if (typeof r.next_cursor === 'string' && r.next_cursor !== '') out.nextCursor = r.next_cursor;
    return out;
  }

  /**
   * Every record the filter matches, page after page:
   * `for await (const record of stack.audit.queryAll({ sessionId }))`.
   */
  async *queryAll(filter: AuditFilter = {}): AsyncGenerator<AuditRecord, void, undefined> {
    let cursor = filter?.cursor;
    for (;;) {
      const page = await this.query({ ...filter, cursor });
      yield* page.records;
      if (page.nextCursor === undefined) return;
      cursor = page.nextCursor;
    }
  }

  /** Reads one record and its leaf hash (`GET /v1/audit/records/{seq}`). */
  async get(seq: number): Promise<RecordEntry> {
    checkSeq(seq);
    const r = await this.ctx.request('GET', `/v1/audit/records/${seq}`, this.ctx.readerToken(), 'read');
    return { record: toRecord(r.record), leafHash: s(r.leaf_hash) };
  }

  /** The latest signed checkpoint of the log (`GET /v1/audit/checkpoint`). */
  async checkpoint(): Promise<Checkpoint> {
    const r = await this.ctx.request('GET', '/v1/audit/checkpoint', this.ctx.readerToken(), 'read');
    return { origin: s(r.origin), size: n(r.size), rootHash: s(r.root_hash), checkpoint: s(r.checkpoint) };
  }

  /**
   * An inclusion proof of record `seq` — such as an error's or a result's
   * `decisionId` — in a signed checkpoint (`GET /v1/audit/records/{seq}/proof`);
   * `agentsec audit check-proof` verifies it.
   */
  async proof(seq: number): Promise<RecordProof> {
    checkSeq(seq);
    const r = await this.ctx.request('GET', `/v1/audit/records/${seq}/proof`, this.ctx.readerToken(), 'read');
    return { seq: n(r.seq), record: toRecord(r.record), leafHash: s(r.leaf_hash), checkpoint: s(r.checkpoint), proof: s(r.proof) };
  }
}

/**
 * A trust gate, a budget and an audit log, served by one agentsec server.
 * Make one with {@link createSecurityStack}.
 */
export class SecurityStack {
  /** The trust gate. */
  readonly trustGate: TrustGate;
  /** The budget. */
  readonly budget: Budget;
  /** The audit log. */
  readonly audit: Audit;
  /** `'local'` if this stack runs its own server, `'connect'` if it talks to one. */
  readonly mode: 'connect' | 'local';
  /** The server's base URL. */
  readonly url: string;
  /** Local mode: the data directory (configuration, keys, `audit.db`). Connect mode: undefined. */
  readonly dataDir: string | undefined;
  private readonly ctx: Context;

  /** @internal Use {@link createSecurityStack}. */
  constructor(ctx: Context) {
    this.ctx = ctx;
    this.trustGate = new TrustGate(ctx);
    this.budget = new Budget(ctx);
    this.audit = new Audit(ctx);
    this.mode = ctx.mode;
    this.url = ctx.http.baseUrl;
    this.dataDir = ctx.local?.dataDir;
  }

  /**
   * Runs `fn` as a governed tool call:
   *
   * 1. begins the call (`POST /v1/calls`): the trust check and a call slot in
   *    one step — a refusal is recorded and thrown as its typed error
   *    ({@link TrustDeniedError}, {@link BudgetExceededError}, …), and `fn`
   *    does not run;
   * 2. runs `fn(call)`;
   * 3. ends the call (`POST /v1/calls/{id}/end`) with the tokens the result
   *    used — `options.tokens(result)`, else `result.tokensUsed`, else 0 if
   *    the result has none — and returns the result once the call's record
   *    is durable. A count that is not an integer from 0 to 2^53−1 (a
   *    string, a bigint, a fraction, NaN, a negative) ends the call as
   *    failed and throws a `TypeError`.
   *
   * If `fn` throws, the call is ended as failed (`{error, ran: true}`: the
   * slot stays spent) and `fn`'s error is rethrown. If ending is refused —
   * {@link BudgetExceededError} when the result is over the budget,
   * {@link AuditUnavailableError} when it could not be recorded — that error
   * is thrown and the result must not be used.
   *
   * In local mode `toolName` defaults to `trustGate.toolName`, and
   * `agentId` picks the agent (default the first).
   */
  async guard<T>(request: ToolRequest, fn: (call: GuardCall) => T | Promise<T>, options: GuardOptions<T> = {}): Promise<T> {
    checkObject(request, 'request');
    if (typeof fn !== 'function') throw new TypeError('agentsec: guard needs a function to run');
    const tool = request.toolName ?? this.ctx.defaultTool;
    if (typeof tool !== 'string' || tool === '') throw new TypeError('agentsec: request.toolName must name the tool');
    checkSession(request.sessionId);
    const token = this.ctx.agentToken(optString(request.agentId, 'request.agentId'));
    const body: Json = { tool, session: request.sessionId };
    if (request.scope !== undefined) body.scope = optString(request.scope, 'request.scope');
    if (request.attrs !== undefined) body.attrs = request.attrs;
    if (options.ttlSeconds !== undefined) body.ttl_seconds = checkTtl(options.ttlSeconds);
    const r = await this.ctx.request('POST', '/v1/calls', token, 'change', body);
    const call: GuardCall = {
      callId: s(r.call_id),
      sessionId: typeof r.session === 'string' ? r.session : request.sessionId,
      toolName: typeof r.tool === 'string' ? r.tool : tool,
      expiresAt: new Date(s(r.expires_at)),
      requiredLevel: s(r.required_level),
      assignedLevel: s(r.assigned_level),
    };
    const endPath = `/v1/calls/${encodeURIComponent(call.callId)}/end`;
    const fail = async (err: unknown): Promise<void> => {
      try {
        await this.ctx.request('POST', endPath, token, 'change', { error: errorText(err), ran: true });
      } catch {
        // fn's error is the one to report; an unended call counts as spent.
      }
    };
    let result: T;
    try {
      result = await fn(call);
    } catch (err) {
      await fail(err);
      throw err;
    }
    let tokens: number;
    try {
      tokens = checkTokens(options.tokens ? options.tokens(result) : defaultTokens(result));
    } catch (err) {
      await fail(err);
      throw err;
    }
    await this.ctx.request('POST', endPath, token, 'change', { tokens });
    return result;
  }

  /**
   * Closes the stack. Local mode: closes the server's stdin, so that it
   * drains, signs its last checkpoint and exits (killed after 10 s), and
   * removes a temporary data dir. Calls after close throw. Closing twice is
   * harmless.
   *
   * @throws {@link AgentsecError} (code `server_exit`) if the local server
   * exited with an error or had to be killed.
   */
  async close(): Promise<void> {
    this.ctx.closed = true;
    await this.ctx.local?.close();
  }

  /** The same as {@link SecurityStack.close}, for `await using stack = await createSecurityStack(...)`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

// Conversions and checks.

function s(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

function n(v: unknown): number {
  return typeof v === 'number' ? v : 0;
}

function camel(key: string): string {
  return key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

function usage(v: unknown): Usage {
  const out: Usage = { tokens: 0, calls: 0 };
  if (v && typeof v === 'object') {
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) if (typeof x === 'number') out[camel(k)] = x;
  }
  return out;
}

function outcome(r: Json): ReservationOutcome {
  const o: ReservationOutcome = { reservationId: s(r.reservation_id), decisionId: n(r.decision_id), used: usage(r.used), limits: usage(r.limits) };
  if (typeof r.tokens === 'number') o.tokens = r.tokens;
  return o;
}

const renamed: Record<string, string> = { agent: 'agentId', tool: 'toolName' };

/** Converts a Record from the server's naming to the client's. */
function toRecord(v: unknown): AuditRecord {
  const raw = (v && typeof v === 'object' ? v : {}) as Record<string, unknown>;
  const rec: AuditRecord = { seq: n(raw.seq), time: new Date(s(raw.time)), namespace: s(raw.namespace), event: s(raw.event) };
  for (const [k, x] of Object.entries(raw)) {
    if (k === 'seq' || k === 'time' || k === 'namespace' || k === 'event') continue;
    if (k === 'session' && typeof x === 'string') {
      const agent = raw.agent;
      rec.sessionId = typeof agent === 'string' && x.startsWith(agent + '/') ? x.slice(agent.length + 1) : x;
      rec.sessionKey = x;
      continue;
    }
    rec[renamed[k] ?? camel(k)] = x;
  }
  return rec;
}

/**
 * The result's `tokensUsed`, unchecked (guard checks it), or 0 if it has
 * none: a present count that is not a number is an error, never 0.
 */
function defaultTokens(result: unknown): unknown {
  if (result !== null && typeof result === 'object') {
    const t = (result as { tokensUsed?: unknown }).tokensUsed;
    if (t !== undefined) return t;
  }
  return 0;
}

function errorText(err: unknown): string {
  let t: string;
  try {
    t = String(err);
  } catch {
    t = 'error';
  }
  return t.length > 4096 ? t.slice(0, 4096) + '…' : t;
}

function checkObject(v: unknown, name: string): void {
  if (!v || typeof v !== 'object') throw new TypeError(`agentsec: ${name} must be an object`);
}

function checkSession(v: unknown): string {
  if (typeof v !== 'string' || v === '') throw new TypeError(`agentsec: sessionId must be a non-empty string, not ${JSON.stringify(v)}`);
  return v;
}

function checkTokens(v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new TypeError(`agentsec: a token count must be an integer from 0 to 2^53−1, not ${String(v)}`);
  }
  return v;
}

function checkTtl(v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new TypeError(`agentsec: ttlSeconds must be an integer number of seconds, not ${String(v)}`);
  return v;
}

function checkSeq(v: unknown): void {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new TypeError(`agentsec: seq must be a record index (an integer ≥ 0), not ${String(v)}`);
}

function optString(v: unknown, name: string): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new TypeError(`agentsec: ${name} must be a string`);
  return v;
}

function time(v: unknown, name: string): string {
  if (v instanceof Date) {
    if (Number.isNaN(v.getTime())) throw new TypeError(`agentsec: ${name} is an invalid Date`);
    return v.toISOString();
  }
  if (typeof v === 'string') return v;
  throw new TypeError(`agentsec: ${name} must be a Date or an RFC 3339 string`);
}
