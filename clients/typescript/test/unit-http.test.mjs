// The transport against a fake server: retries, idempotency keys, and
// problem documents mapped to error classes.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import {
  createSecurityStack,
  errorFromResponse,
  AgentsecError,
  AgentsecConnectionError,
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
} from '../dist/index.js';
import { retryAfterMs } from '../dist/http.js';
import { fakeServer, problem, fastRetry } from './helpers.mjs';

const budgetBody = {
  session: 's1',
  allowed: true,
  reason: '',
  used: { tokens: 10, calls: 1 },
  limits: { tokens: 100, calls: 5 },
  remaining: { tokens: 90, calls: 4 },
};

async function connect(t, handler, opts = fastRetry) {
  const srv = await fakeServer(handler);
  t.after(() => srv.close());
  const stack = await createSecurityStack({ url: srv.url, token: 'tok-1', ...opts });
  return { srv, stack };
}

test('a GET is retried on 503 and then succeeds', async (t) => {
  const { srv, stack } = await connect(t, (_r, i) => (i <= 2 ? problem('budget_unavailable', 503) : { body: budgetBody }));
  const b = await stack.budget.checkBudget('s1');
  assert.equal(srv.requests.length, 3);
  assert.deepEqual(b, {
    sessionId: 's1',
    allowed: true,
    reason: '',
    used: { tokens: 10, calls: 1 },
    limits: { tokens: 100, calls: 5 },
    remaining: { tokens: 90, calls: 4 },
  });
  for (const r of srv.requests) {
    assert.equal(r.method, 'GET');
    assert.equal(r.url, '/v1/budget/sessions/s1');
    assert.equal(r.headers.authorization, 'Bearer tok-1');
    assert.equal(r.headers['idempotency-key'], undefined, 'a read carries no Idempotency-Key');
  }
});

test('a GET that gets 503 on every attempt throws the typed error after 4 attempts', async (t) => {
  const { srv, stack } = await connect(t, () => problem('budget_unavailable', 503));
  await assert.rejects(stack.budget.checkBudget('s1'), BudgetUnavailableError);
  assert.equal(srv.requests.length, 4);
});

test('a POST retried after a 503 sends the same Idempotency-Key; the next call a new one', async (t) => {
  const { srv, stack } = await connect(t, (_r, i) =>
    i === 1 ? problem('audit_unavailable', 503) : { body: { decision_id: 7, used: { tokens: 5, calls: 1 }, limits: { tokens: 100, calls: 5 } } },
  );
  const r = await stack.budget.recordSpending('s1', 5);
  assert.deepEqual(r, { decisionId: 7, used: { tokens: 5, calls: 1 }, limits: { tokens: 100, calls: 5 } });
  assert.equal(srv.requests.length, 2);
  const [a, b] = srv.requests;
  assert.match(a.headers['idempotency-key'], /^[0-9a-f-]{36}$/);
  assert.equal(a.headers['idempotency-key'], b.headers['idempotency-key']);
  assert.deepEqual(a.body, { tokens: 5 });
  assert.deepEqual(b.body, { tokens: 5 });
  assert.equal(a.headers['content-type'], 'application/json');
  await stack.budget.recordSpending('s1', 5);
  assert.notEqual(srv.requests[2].headers['idempotency-key'], a.headers['idempotency-key']);
});

test('a change whose retry hears 409 with Retry-After (still running) tries again with the same key', async (t) => {
  const spent = { body: { decision_id: 7, used: { tokens: 5, calls: 1 }, limits: { tokens: 100, calls: 5 } } };
  const { srv, stack } = await connect(t, (_r, i) =>
    i === 1 ? problem('audit_unavailable', 503) : i === 2 ? { ...problem('conflict', 409), headers: { 'retry-after': '1' } } : spent,
  );
  assert.equal((await stack.budget.recordSpending('s1', 5)).decisionId, 7);
  assert.equal(srv.requests.length, 3);
  assert.equal(new Set(srv.requests.map((r) => r.headers['idempotency-key'])).size, 1);
});

test('a change retried after 409 + Retry-After: 1 waits at least about a second', async (t) => {
  const spent = { body: { decision_id: 7, used: { tokens: 5, calls: 1 }, limits: { tokens: 100, calls: 5 } } };
  const times = [];
  const { srv, stack } = await connect(t, (_r, i) => {
    times.push(Date.now());
    return i === 1 ? { ...problem('conflict', 409), headers: { 'retry-after': '1' } } : spent;
  });
  assert.equal((await stack.budget.recordSpending('s1', 5)).decisionId, 7);
  assert.equal(srv.requests.length, 2);
  assert.ok(times[1] - times[0] >= 900, `the retry came ${times[1] - times[0]} ms later`);
});

test('a 503 with Retry-After: 1 waits at least about a second before the retry', async (t) => {
  const times = [];
  const { srv, stack } = await connect(t, (_r, i) => {
    times.push(Date.now());
    return i === 1 ? { ...problem('budget_unavailable', 503), headers: { 'retry-after': '1' } } : { body: budgetBody };
  });
  assert.equal((await stack.budget.checkBudget('s1')).allowed, true);
  assert.equal(srv.requests.length, 2);
  assert.ok(times[1] - times[0] >= 900, `the retry came ${times[1] - times[0]} ms later`);
});

test('Retry-After is read as whole seconds and capped at 10 s', () => {
  assert.equal(retryAfterMs('1'), 1000);
  assert.equal(retryAfterMs(' 3 '), 3000);
  assert.equal(retryAfterMs('10'), 10_000);
  assert.equal(retryAfterMs('3600'), 10_000);
  assert.equal(retryAfterMs('99999999999999999999999'), 10_000);
  assert.equal(retryAfterMs(null), 0);
  assert.equal(retryAfterMs('1.5'), 0);
  assert.equal(retryAfterMs('-1'), 0);
  assert.equal(retryAfterMs('Fri, 04 Dec 2026 10:00:00 GMT'), 0);
});

test('a Retry-After that is not whole seconds leaves only the backoff', async (t) => {
  const times = [];
  const { stack } = await connect(t, (_r, i) => {
    times.push(Date.now());
    return i === 1 ? { ...problem('budget_unavailable', 503), headers: { 'retry-after': '1.5' } } : { body: budgetBody };
  });
  await stack.budget.checkBudget('s1');
  assert.ok(times[1] - times[0] < 500, 'a non-integer Retry-After is ignored');
});

test('a 409 without Retry-After is final', async (t) => {
  const { srv, stack } = await connect(t, () => problem('conflict', 409));
  await assert.rejects(stack.budget.recordSpending('s1', 5), ConflictError);
  assert.equal(srv.requests.length, 1);
});

test('a POST whose connection drops is retried with the same Idempotency-Key', async (t) => {
  const { srv, stack } = await connect(t, (_r, i) =>
    i === 1 ? 'destroy' : { status: 201, body: { decision_id: 3, record: { seq: 3, time: '2026-01-02T03:04:05.5Z', namespace: 'ns', event: 'e' } } },
  );
  const r = await stack.audit.log({ event: 'e' });
  assert.equal(r.decisionId, 3);
  assert.equal(srv.requests.length, 2);
  assert.equal(srv.requests[0].headers['idempotency-key'], srv.requests[1].headers['idempotency-key']);
});

test('the trust check is a read: retried on 503, with no Idempotency-Key', async (t) => {
  const { srv, stack } = await connect(t, (_r, i) =>
    i === 1
      ? problem('audit_unavailable', 503)
      : {
          body: {
            allowed: true,
            reason: 'level verified meets verified',
            agent: 'agent-7',
            tool: 'file-reader',
            scope: '',
            required_level: 'verified',
            assigned_level: 'verified',
          },
        },
  );
  const d = await stack.trustGate.check({ agentId: 'agent-7', sessionId: 's1', toolName: 'file-reader' });
  assert.deepEqual(d, {
    allowed: true,
    reason: 'level verified meets verified',
    requiredLevel: 'verified',
    assignedLevel: 'verified',
    agent: 'agent-7',
    tool: 'file-reader',
    scope: '',
  });
  assert.equal(srv.requests.length, 2);
  for (const r of srv.requests) {
    assert.equal(r.headers['idempotency-key'], undefined);
    // connect mode sends the request's agent, so the server refuses a mismatch
    assert.deepEqual(r.body, { tool: 'file-reader', agent: 'agent-7' });
  }
});

for (const [code, status, cls] of [
  ['invalid_request', 400, InvalidRequestError],
  ['budget_exceeded', 429, BudgetExceededError],
  ['rate_limited', 429, RateLimitedError],
  ['conflict', 409, ConflictError],
  ['unauthenticated', 401, UnauthenticatedError],
]) {
  test(`no retry on ${status} ${code}`, async (t) => {
    const { srv, stack } = await connect(t, () => problem(code, status));
    await assert.rejects(stack.budget.recordSpending('s1', 1), cls);
    await assert.rejects(stack.budget.checkBudget('s1'), cls);
    assert.equal(srv.requests.length, 2, 'one request per call');
  });
}

test('connection refused: AgentsecConnectionError after 4 attempts', async () => {
  // A port that was free a moment ago.
  const s = createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  const stack = await createSecurityStack({ url: `http://127.0.0.1:${port}`, token: 't', ...fastRetry });
  const err = await stack.budget.checkBudget('s1').then(
    () => assert.fail('resolved'),
    (e) => e,
  );
  assert.ok(err instanceof AgentsecConnectionError);
  assert.ok(err instanceof AgentsecError);
  assert.equal(err.code, 'connection_error');
  assert.equal(err.status, 0);
  assert.equal(err.attempts, 4);
  assert.match(err.message, /ECONNREFUSED/);
  assert.ok(err.cause);
});

test('retry.maxAttempts 1 disables retries', async (t) => {
  const { srv, stack } = await connect(t, () => problem('budget_unavailable', 503), { retry: { maxAttempts: 1 } });
  await assert.rejects(stack.budget.checkBudget('s1'), BudgetUnavailableError);
  assert.equal(srv.requests.length, 1);
});

test('backoff waits between attempts, capped by maxDelayMs', async (t) => {
  const { srv, stack } = await connect(t, () => problem('budget_unavailable', 503), { retry: { baseDelayMs: 40, maxDelayMs: 40 } });
  const start = Date.now();
  await assert.rejects(stack.budget.checkBudget('s1'), BudgetUnavailableError);
  const took = Date.now() - start;
  assert.equal(srv.requests.length, 4);
  // three waits of up to 40 ms each (full jitter)
  assert.ok(took < 40 * 3 + 300, `took ${took} ms`);
});

test('problem documents are mapped to their error classes', () => {
  const table = [
    ['invalid_request', 400, InvalidRequestError],
    ['unauthenticated', 401, UnauthenticatedError],
    ['forbidden', 403, ForbiddenError],
    ['trust_denied', 403, TrustDeniedError],
    ['not_found', 404, NotFoundError],
    ['conflict', 422, ConflictError],
    ['budget_exceeded', 429, BudgetExceededError],
    ['rate_limited', 429, RateLimitedError],
    ['audit_unavailable', 503, AuditUnavailableError],
    ['budget_unavailable', 503, BudgetUnavailableError],
  ];
  for (const [code, status, cls] of table) {
    const doc = { type: `tag:agentsec.dev,2026:problem:${code}`, title: 'T', status, code, detail: 'D', reason: 'R', decision_id: 41 };
    const err = errorFromResponse(status, JSON.stringify(doc), 'application/problem+json');
    assert.ok(err instanceof cls, code);
    assert.ok(err instanceof AgentsecError);
    assert.ok(err instanceof Error);
    assert.equal(err.name, cls.name);
    assert.equal(err.code, code);
    assert.equal(err.status, status);
    assert.equal(err.title, 'T');
    assert.equal(err.detail, 'D');
    assert.equal(err.message, 'D');
    assert.equal(err.reason, 'R');
    assert.equal(err.decisionId, 41);
    assert.deepEqual(err.problem, doc);
  }
  const trust = errorFromResponse(
    403,
    JSON.stringify({ code: 'trust_denied', status: 403, required_level: 'privileged', assigned_level: 'public', decision_id: 0 }),
    'application/problem+json',
  );
  assert.equal(trust.requiredLevel, 'privileged');
  assert.equal(trust.assignedLevel, 'public');
  assert.equal(trust.decisionId, 0, 'decision 0 is a decision');
  const budget = errorFromResponse(
    429,
    JSON.stringify({ code: 'budget_exceeded', status: 429, used: { tokens: 1, calls: 50 }, limits: { tokens: 9, calls: 50 } }),
    'application/problem+json',
  );
  assert.deepEqual(budget.used, { tokens: 1, calls: 50 });
  assert.deepEqual(budget.limits, { tokens: 9, calls: 50 });
  assert.equal(budget.decisionId, undefined);

  const unknown = errorFromResponse(418, JSON.stringify({ code: 'teapot', status: 418, detail: 'short and stout' }), 'application/problem+json');
  assert.equal(unknown.constructor, AgentsecError);
  assert.equal(unknown.code, 'teapot');
  assert.equal(unknown.message, 'short and stout');

  const html = errorFromResponse(502, '<html>Bad Gateway</html>', 'text/html');
  assert.equal(html.constructor, AgentsecError);
  assert.equal(html.code, 'http_error');
  assert.equal(html.status, 502);
  assert.match(html.message, /502/);
  assert.equal(html.problem, undefined);
});

test('a problem answered over HTTP keeps its fields', async (t) => {
  const { stack } = await connect(t, () =>
    problem('budget_exceeded', 429, { reason: 'call limit reached', decision_id: 1234, used: { tokens: 0, calls: 50 }, limits: { tokens: 10, calls: 50 } }),
  );
  const err = await stack.budget.reserve('s1').then(
    () => assert.fail('resolved'),
    (e) => e,
  );
  assert.ok(err instanceof BudgetExceededError);
  assert.equal(err.status, 429);
  assert.equal(err.reason, 'call limit reached');
  assert.equal(err.decisionId, 1234);
  assert.deepEqual(err.limits, { tokens: 10, calls: 50 });
});

test('a 2xx answer that is not JSON is an AgentsecError', async (t) => {
  const { stack } = await connect(t, () => ({ status: 200, body: 'hello', headers: { 'content-type': 'text/plain' } }));
  await assert.rejects(stack.budget.checkBudget('s1'), (e) => e instanceof AgentsecError && e.code === 'invalid_response');
});

test('a slow answer times out and is retried', async (t) => {
  const { srv, stack } = await connect(
    t,
    async (_r, i) => {
      if (i === 1) await new Promise((r) => setTimeout(r, 300));
      return { body: budgetBody };
    },
    { ...fastRetry, timeoutMs: 100 },
  );
  const b = await stack.budget.checkBudget('s1');
  assert.equal(b.allowed, true);
  assert.equal(srv.requests.length, 2);
});

test('an attempt that times out on the last try is a connection error saying so', async (t) => {
  const { stack } = await connect(
    t,
    async () => {
      await new Promise((r) => setTimeout(r, 300));
      return { body: budgetBody };
    },
    { timeoutMs: 50, retry: { maxAttempts: 1 } },
  );
  const err = await stack.budget.checkBudget('s1').catch((e) => e);
  assert.ok(err instanceof AgentsecConnectionError, String(err));
  assert.equal(err.attempts, 1);
  assert.match(err.message, /timed out \(no answer within 50 ms\)/);
});

test('bad transport options are TypeErrors', async () => {
  await assert.rejects(createSecurityStack({ url: 'not a url', token: 't' }), TypeError);
  await assert.rejects(createSecurityStack({ url: 'ftp://x', token: 't' }), TypeError);
  await assert.rejects(createSecurityStack({ url: 'http://127.0.0.1:1', token: '' }), TypeError);
  await assert.rejects(createSecurityStack({ url: 'http://127.0.0.1:1', token: 't', retry: { maxAttempts: 0 } }), TypeError);
  await assert.rejects(createSecurityStack({ url: 'http://127.0.0.1:1', token: 't', timeoutMs: -1 }), TypeError);
});
