/**
 * The HTTP transport: JSON requests to the decision API with bearer
 * tokens, typed errors, and retries with backoff.
 *
 * @packageDocumentation
 */

import { randomUUID } from 'node:crypto';
import { AgentsecConnectionError, AgentsecError, errorFromResponse } from './errors.js';

/**
 * How requests are retried. A request is retried when the connection fails
 * or the server answers 503 (`audit_unavailable`, `budget_unavailable`),
 * never on another 4xx or 5xx. Reads (GETs and `POST /v1/trust/check`) are
 * retried as they are; every other POST carries an `Idempotency-Key` made
 * once per logical call and sent again on each retry, so the server acts on
 * it once. A 503, or a 409 with Retry-After, waits at least the
 * Retry-After header's seconds (at most 10 s) before the next attempt.
 */
export interface RetryOptions {
  /** Attempts in all, the first included; 1 disables retries. Default 4. */
  maxAttempts?: number;
  /** The first backoff's cap, in milliseconds; it doubles on each retry. Default 100. */
  baseDelayMs?: number;
  /** The largest backoff cap, in milliseconds. Default 2000. */
  maxDelayMs?: number;
}

/** Options of the HTTP transport, common to both modes of {@link createSecurityStack}. */
export interface TransportOptions {
  /** Retry policy; see {@link RetryOptions}. */
  retry?: RetryOptions;
  /**
   * How long one attempt may take, in milliseconds, before it is abandoned
   * (and retried, as a connection failure). Default 30000; 0 means no limit.
   */
  timeoutMs?: number;
}

/** A JSON object as the server sends it. */
export type Json = Record<string, unknown>;

/**
 * Whether a request may be repeated as it is (`'read'`), or changes
 * something and so carries an Idempotency-Key, the same on every retry
 * (`'change'`).
 */
export type Kind = 'read' | 'change';

const userAgent = 'agentsec-client-typescript/0.1.0';

/** Sends requests to one agentsec server. */
export class Transport {
  /** The server's base URL, without a trailing slash. */
  readonly baseUrl: string;
  private readonly maxAttempts: number;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly timeoutMs: number;

  constructor(baseUrl: string, opts: TransportOptions = {}) {
    let u: URL;
    try {
      u = new URL(baseUrl);
    } catch {
      throw new TypeError(`agentsec: url ${JSON.stringify(baseUrl)} is not a URL; it should look like http://127.0.0.1:8080`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') {
      throw new TypeError(`agentsec: url ${JSON.stringify(baseUrl)} must be http: or https:`);
    }
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    const r = opts.retry ?? {};
    this.maxAttempts = positiveInt(r.maxAttempts, 4, 'retry.maxAttempts', 1);
    this.baseDelayMs = positiveInt(r.baseDelayMs, 100, 'retry.baseDelayMs', 0);
    this.maxDelayMs = positiveInt(r.maxDelayMs, 2000, 'retry.maxDelayMs', 0);
    this.timeoutMs = positiveInt(opts.timeoutMs, 30_000, 'timeoutMs', 0);
  }

  /**
   * Sends one logical request, retrying as {@link RetryOptions} says, and
   * returns the answer's JSON object; an error answer is thrown as its
   * {@link AgentsecError} subclass.
   */
  async request(method: 'GET' | 'POST', path: string, token: string, kind: Kind, body?: unknown): Promise<Json> {
    const headers: Record<string, string> = {
      authorization: `Bearer ${token}`,
      accept: 'application/json',
      'user-agent': userAgent,
    };
    let payload: string | undefined;
    if (body !== undefined) {
      payload = JSON.stringify(body);
      headers['content-type'] = 'application/json';
    }
    if (kind === 'change') headers['idempotency-key'] = randomUUID();
    const url = this.baseUrl + path;
    for (let attempt = 1; ; attempt++) {
      let status = 0;
      let text = '';
      let contentType: string | null = null;
      let retryAfter: string | null = null;
      // An AbortController and a timer cleared on the answer cost less
      // than AbortSignal.timeout, which showed in guard's latency.
      let timer: ReturnType<typeof setTimeout> | undefined;
      let signal: AbortSignal | undefined;
      if (this.timeoutMs > 0) {
        const ac = new AbortController();
        signal = ac.signal;
        timer = setTimeout(() => ac.abort(new TimeoutError(this.timeoutMs)), this.timeoutMs);
      }
      let failed = false;
      let failure: unknown;
      try {
        const res = await fetch(url, { method, headers, body: payload, signal });
        status = res.status;
        contentType = res.headers.get('content-type');
        retryAfter = res.headers.get('retry-after');
        text = await res.text();
      } catch (err) {
        failed = true;
        failure = err;
      } finally {
        clearTimeout(timer);
      }
      if (failed) {
        if (attempt >= this.maxAttempts) {
          throw new AgentsecConnectionError({
            code: 'connection_error',
            title: 'agentsec server unreachable',
            detail: `${method} ${url} failed after ${attempt} attempt${attempt === 1 ? '' : 's'}: ${describe(failure)}`,
            cause: failure,
            attempts: attempt,
          });
        }
        await this.backoff(attempt);
        continue;
      }
      if (status >= 200 && status < 300) {
        if (!text) return {};
        try {
          const v: unknown = JSON.parse(text);
          if (v && typeof v === 'object' && !Array.isArray(v)) return v as Json;
        } catch {
          // fall through
        }
        throw new AgentsecError({ code: 'invalid_response', status, detail: `${method} ${path}: the answer is not a JSON object` });
      }
      // 503 says try again; so does 409 with Retry-After, which a retry
      // hears while the attempt it repeats is still running.
      const inProgress = status === 409 && retryAfter !== null && kind === 'change';
      if ((status === 503 || inProgress) && attempt < this.maxAttempts) {
        // Wait at least as long as the server asks (capped), and no less
        // than the backoff.
        await this.backoff(attempt, retryAfterMs(retryAfter));
        continue;
      }
      throw errorFromResponse(status, text, contentType);
    }
  }

  /**
   * Waits before retry number `attempt`: full jitter over an exponential
   * cap, or `atLeastMs` (the server's Retry-After) if that is longer.
   */
  private backoff(attempt: number, atLeastMs = 0): Promise<void> {
    const cap = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** (attempt - 1));
    const ms = Math.max(Math.random() * cap, atLeastMs);
    return new Promise((resolve) => setTimeout(resolve, ms));
  }
}

/** The longest wait a Retry-After header can ask for, in milliseconds. */
const maxRetryAfterMs = 10_000;

/**
 * A Retry-After header's integer number of seconds, in milliseconds and
 * capped at {@link maxRetryAfterMs}; 0 if absent or not an integer.
 */
export function retryAfterMs(v: string | null): number {
  if (v === null) return 0;
  const t = v.trim();
  if (!/^\d+$/.test(t)) return 0;
  return Math.min(Number(t) * 1000, maxRetryAfterMs);
}

/** An attempt that took longer than `timeoutMs`. */
class TimeoutError extends Error {
  constructor(ms: number) {
    super(`no answer within ${ms} ms`);
    this.name = 'TimeoutError';
  }
}

function positiveInt(v: number | undefined, dflt: number, name: string, min: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) {
    throw new TypeError(`agentsec: ${name} must be an integer ≥ ${min}, not ${String(v)}`);
  }
  return v;
}

/** Names a transport error with its cause's code, such as ECONNREFUSED. */
function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = (err as { cause?: unknown }).cause;
  if (cause instanceof Error) {
    const code = (cause as { code?: unknown }).code;
    return `${err.message} (${typeof code === 'string' ? code + ': ' : ''}${cause.message})`;
  }
  return err.name === 'TimeoutError' ? `timed out (${err.message})` : err.message;
}
