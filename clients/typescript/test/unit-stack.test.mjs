// The stack's methods against a fake server: what they send, and how they
// read the answers.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { inspect } from 'node:util';
import { createSecurityStack, BudgetExceededError, TrustDeniedError, AuditUnavailableError, ConflictError, AgentsecError } from '../dist/index.js';
import { fakeServer, problem, fastRetry } from './helpers.mjs';

const usage = { used: { tokens: 3, calls: 1 }, limits: { tokens: 100, calls: 5 } };

/** A fake server answering the guard's two requests, with overrides by path. */
function guardServer(over = {}) {
  return (r) => {
    if (r.method === 'POST' && r.url === '/v1/calls') {
      return over.begin ?? {
        status: 201,
        body: { call_id: 'c_1', session: r.body.session, tool: r.body.tool, expires_at: '2026-12-04T10:00:00Z', required_level: 'verified', assigned_level: 'verified' },
      };
    }
    if (r.method === 'POST' && r.url === '/v1/calls/c_1/end') {
      return over.end ?? { body: { call_id: 'c_1', decision_id: 9, outcome: 'allow', reason: 'ok', tokens: r.body.tokens ?? 0, ...usage } };
    }
    return problem('not_found', 404);
  };
}

async function connect(t, handler) {
  const srv = await fakeServer(handler);
  t.after(() => srv.close());
  const stack = await createSecurityStack({ url: srv.url + '/', token: 'tok', ...fastRetry });
  return { srv, stack };
}

test('guard begins, runs fn with the call, ends with result.tokensUsed, returns the result', async (t) => {
  const { srv, stack } = await connect(t, guardServer());
  assert.equal(stack.mode, 'connect');
  assert.equal(stack.url, srv.url);
  assert.equal(stack.dataDir, undefined);
  let seen;
  const result = await stack.guard({ sessionId: 's1', toolName: 'file-reader', scope: 'x', attrs: { k: 'v' } }, async (call) => {
    seen = call;
    return { text: 'hi', tokensUsed: 42 };
  }, { ttlSeconds: 30 });
  assert.deepEqual(result, { text: 'hi', tokensUsed: 42 });
  assert.deepEqual(seen, {
    callId: 'c_1',
    sessionId: 's1',
    toolName: 'file-reader',
    expiresAt: new Date('2026-12-04T10:00:00Z'),
    requiredLevel: 'verified',
    assignedLevel: 'verified',
  });
  assert.equal(srv.requests.length, 2);
  const [begin, end] = srv.requests;
  assert.deepEqual(begin.body, { tool: 'file-reader', session: 's1', scope: 'x', attrs: { k: 'v' }, ttl_seconds: 30 });
  assert.deepEqual(end.body, { tokens: 42 });
  assert.ok(begin.headers['idempotency-key']);
  assert.ok(end.headers['idempotency-key']);
  assert.notEqual(begin.headers['idempotency-key'], end.headers['idempotency-key']);
});

test('guard counts tokens with options.tokens, or 0 when the result has no tokensUsed', async (t) => {
  const { srv, stack } = await connect(t, guardServer());
  assert.equal(await stack.guard({ sessionId: 's1', toolName: 'x' }, () => 'plain'), 'plain');
  assert.deepEqual(srv.requests[1].body, { tokens: 0 });
  await stack.guard({ sessionId: 's1', toolName: 'x' }, () => ({ usage: 17 }), { tokens: (r) => r.usage });
  assert.deepEqual(srv.requests[3].body, { tokens: 17 });
});

test('guard: a denied begin throws the typed error and fn does not run', async (t) => {
  const { srv, stack } = await connect(
    t,
    guardServer({ begin: problem('trust_denied', 403, { decision_id: 5, reason: 'level public is below verified', required_level: 'verified', assigned_level: 'public' }) }),
  );
  let ran = false;
  const err = await stack.guard({ sessionId: 's1', toolName: 'x' }, () => (ran = true)).catch((e) => e);
  assert.ok(err instanceof TrustDeniedError);
  assert.equal(err.decisionId, 5);
  assert.equal(err.assignedLevel, 'public');
  assert.equal(ran, false);
  assert.equal(srv.requests.length, 1);
});

test('guard: fn throws → the call ends with {error, ran: true} and fn’s error is rethrown', async (t) => {
  const { srv, stack } = await connect(t, guardServer());
  const boom = new Error('disk on fire');
  await assert.rejects(stack.guard({ sessionId: 's1', toolName: 'x' }, async () => { throw boom; }), (e) => e === boom);
  assert.deepEqual(srv.requests[1].body, { error: 'Error: disk on fire', ran: true });
});

test('guard: fn’s error is rethrown even if ending the call fails', async (t) => {
  const { stack } = await connect(t, guardServer({ end: problem('conflict', 409) }));
  const boom = new RangeError('nope');
  await assert.rejects(stack.guard({ sessionId: 's1', toolName: 'x' }, () => { throw boom; }), (e) => e === boom);
});

test('guard: an end refused as over budget or unrecorded throws, and the result is withheld', async (t) => {
  const { stack } = await connect(t, guardServer({ end: problem('budget_exceeded', 429, { decision_id: 11 }) }));
  const err = await stack.guard({ sessionId: 's1', toolName: 'x' }, () => ({ tokensUsed: 1e6 })).catch((e) => e);
  assert.ok(err instanceof BudgetExceededError);
  assert.equal(err.decisionId, 11);

  const { srv: srv2, stack: stack2 } = await connect(t, guardServer({ end: problem('audit_unavailable', 503) }));
  await assert.rejects(stack2.guard({ sessionId: 's1', toolName: 'x' }, () => 1), AuditUnavailableError);
  assert.equal(srv2.requests.length, 1 + 4, 'the end was retried with backoff');
  const keys = new Set(srv2.requests.slice(1).map((r) => r.headers['idempotency-key']));
  assert.equal(keys.size, 1, 'with one Idempotency-Key');
});

test('guard: a bad token count ends the call as failed and throws a TypeError', async (t) => {
  const { srv, stack } = await connect(t, guardServer());
  await assert.rejects(stack.guard({ sessionId: 's1', toolName: 'x' }, () => ({ tokensUsed: -1 })), TypeError);
  assert.equal(srv.requests[1].body.ran, true);
  assert.match(srv.requests[1].body.error, /token count/);
});

test('guard: a present tokensUsed that is not a safe non-negative integer is a TypeError, never 0', async (t) => {
  const bad = ['12', 12n, 1.5, NaN, -1, 2 ** 53, Infinity, null, { n: 1 }];
  for (const v of bad) {
    const { srv, stack } = await connect(t, guardServer());
    await assert.rejects(stack.guard({ sessionId: 's1', toolName: 'x' }, () => ({ tokensUsed: v })), TypeError, `tokensUsed ${typeof v} ${String(v)}`);
    assert.equal(srv.requests.length, 2);
    assert.equal(srv.requests[1].body.ran, true);
    assert.match(srv.requests[1].body.error, /token count/);
    assert.equal(srv.requests[1].body.tokens, undefined);
  }
  // options.tokens returning a bad count is refused the same way.
  const { srv, stack } = await connect(t, guardServer());
  await assert.rejects(stack.guard({ sessionId: 's1', toolName: 'x' }, () => 'r', { tokens: () => '7' }), TypeError);
  assert.equal(srv.requests[1].body.ran, true);
  // Absent (no property, or undefined) means 0.
  const ok = await connect(t, guardServer());
  await ok.stack.guard({ sessionId: 's1', toolName: 'x' }, () => ({ tokensUsed: undefined }));
  await ok.stack.guard({ sessionId: 's1', toolName: 'x' }, () => ({ other: 1 }));
  assert.deepEqual(ok.srv.requests[1].body, { tokens: 0 });
  assert.deepEqual(ok.srv.requests[3].body, { tokens: 0 });
});

test('reserve, commit and release', async (t) => {
  const { srv, stack } = await connect(t, (r) => {
    if (r.url === '/v1/budget/sessions/s%2F1%20x/reservations' || r.url === '/v1/budget/sessions/s1/reservations') {
      return { status: 201, body: { reservation_id: 'r_1', session: 's1', expires_at: '2026-12-04T10:00:00Z', decision_id: 17, ...usage } };
    }
    if (r.url === '/v1/budget/reservations/r_1/commit') return { body: { reservation_id: 'r_1', decision_id: 18, tokens: r.body.tokens, ...usage } };
    if (r.url === '/v1/budget/reservations/r_1/release') return problem('conflict', 409, { detail: 'already committed' });
    return problem('not_found', 404);
  });
  const res = await stack.budget.reserve('s1', { ttlSeconds: 60 });
  assert.equal(res.id, 'r_1');
  assert.equal(res.sessionId, 's1');
  assert.equal(res.decisionId, 17);
  assert.deepEqual(res.expiresAt, new Date('2026-12-04T10:00:00Z'));
  assert.deepEqual(res.used, usage.used);
  assert.deepEqual(srv.requests[0].body, { ttl_seconds: 60 });
  assert.deepEqual(await res.commit(120), { reservationId: 'r_1', decisionId: 18, tokens: 120, ...usage });
  assert.deepEqual(srv.requests[1].body, { tokens: 120 });
  const err = await res.release().catch((e) => e);
  assert.ok(err instanceof ConflictError);
  assert.equal(err.message, 'already committed');
  assert.deepEqual(srv.requests[2].body, {});
  await stack.budget.reserve('s/1 x');
  assert.equal(srv.requests[3].url, '/v1/budget/sessions/s%2F1%20x/reservations', 'the session is escaped in the path');
  assert.deepEqual(srv.requests[3].body, {});
});

test('audit.query sends the filters and converts records; queryAll follows the cursor', async (t) => {
  const rec = (seq) => ({
    seq,
    time: '2026-12-04T09:00:00.123456Z',
    namespace: 'ns',
    event: 'tool.call',
    agent: 'agent-7',
    session: 'agent-7/s1',
    tool: 'file-reader',
    outcome: 'allow',
    reason: 'ok',
    required_level: 'verified',
    assigned_level: 'verified',
    tokens: 120,
    attrs: { some_key: 'v' },
    future_field: 1,
  });
  const { srv, stack } = await connect(t, (r) => {
    const u = new URL(r.url, 'http://x');
    if (u.searchParams.get('cursor') === 'p2') return { body: { records: [rec(3)] } };
    return { body: { records: [rec(1), rec(2)], next_cursor: 'p2' } };
  });
  const since = new Date('2026-01-01T00:00:00Z');
  const page = await stack.audit.query({ agentId: 'agent-7', sessionId: 's1', toolName: 'file-reader', event: 'tool.call', outcome: 'allow', since, until: '2027-01-01T00:00:00Z', limit: 2 });
  const q = new URL(srv.requests[0].url, 'http://x');
  assert.equal(q.pathname, '/v1/audit/records');
  assert.deepEqual(Object.fromEntries(q.searchParams), {
    agent: 'agent-7',
    session: 's1',
    tool: 'file-reader',
    event: 'tool.call',
    outcome: 'allow',
    since: '2026-01-01T00:00:00.000Z',
    until: '2027-01-01T00:00:00Z',
    limit: '2',
  });
  assert.equal(page.nextCursor, 'p2');
  assert.deepEqual(page.records[0], {
    seq: 1,
    time: new Date('2026-12-04T09:00:00.123Z'),
    namespace: 'ns',
    event: 'tool.call',
    agentId: 'agent-7',
    sessionId: 's1',
    sessionKey: 'agent-7/s1',
    toolName: 'file-reader',
    outcome: 'allow',
    reason: 'ok',
    requiredLevel: 'verified',
    assignedLevel: 'verified',
    tokens: 120,
    attrs: { some_key: 'v' },
    futureField: 1,
  });
  const all = [];
  for await (const r of stack.audit.queryAll({ sessionId: 's1', limit: 2 })) all.push(r.seq);
  assert.deepEqual(all, [1, 2, 3]);
  assert.equal(new URL(srv.requests[2].url, 'http://x').searchParams.get('cursor'), 'p2');
  const last = await stack.audit.query();
  assert.equal(srv.requests.at(-1).url, '/v1/audit/records');
  assert.equal(last.nextCursor, 'p2');
});

test('audit.log, checkpoint, proof and get', async (t) => {
  const record = { seq: 42, time: '2026-12-04T09:00:00Z', namespace: 'ns', event: 'tool-call-complete', agent: 'a', session: 'a/s1', attrs: { source: 'client' } };
  const { srv, stack } = await connect(t, (r) => {
    if (r.url === '/v1/audit/events') return { status: 201, body: { decision_id: 42, record } };
    if (r.url === '/v1/audit/checkpoint') return { body: { origin: 'o', size: 43, root_hash: 'aGk=', checkpoint: 'note' } };
    if (r.url === '/v1/audit/records/42/proof') return { body: { seq: 42, record, leaf_hash: 'bGY=', checkpoint: 'note', proof: 'pf' } };
    if (r.url === '/v1/audit/records/42') return { body: { record, leaf_hash: 'bGY=' } };
    return problem('not_found', 404);
  });
  const logged = await stack.audit.log({ event: 'tool-call-complete', sessionId: 's1', toolName: 't', outcome: 'allow', reason: 'r', tokens: 3, attrs: { a: 'b' }, agentId: 'ignored-in-connect-mode' });
  assert.deepEqual(srv.requests[0].body, { event: 'tool-call-complete', session: 's1', tool: 't', outcome: 'allow', reason: 'r', tokens: 3, attrs: { a: 'b' } });
  assert.equal(logged.decisionId, 42);
  assert.equal(logged.record.sessionId, 's1');
  assert.equal(logged.record.agentId, 'a');
  assert.deepEqual(logged.record.attrs, { source: 'client' });
  assert.deepEqual(await stack.audit.checkpoint(), { origin: 'o', size: 43, rootHash: 'aGk=', checkpoint: 'note' });
  const p = await stack.audit.proof(42);
  assert.equal(p.seq, 42);
  assert.equal(p.leafHash, 'bGY=');
  assert.equal(p.proof, 'pf');
  assert.equal(p.record.event, 'tool-call-complete');
  const g = await stack.audit.get(42);
  assert.equal(g.leafHash, 'bGY=');
  assert.equal(g.record.seq, 42);
});

test('connect mode: checkBudget names the agent when asked (operators read any session)', async (t) => {
  const { srv, stack } = await connect(t, () => ({ body: { session: 's1', allowed: true, reason: '', used: {}, limits: {}, remaining: {} } }));
  await stack.budget.checkBudget('s1', { agentId: 'agent-7' });
  assert.equal(srv.requests[0].url, '/v1/budget/sessions/s1?agent=agent-7');
});

test('mistakes are TypeErrors, made before any request', async (t) => {
  const { srv, stack } = await connect(t, guardServer());
  await assert.rejects(stack.budget.checkBudget(''), TypeError);
  await assert.rejects(stack.budget.checkBudget(7), TypeError);
  await assert.rejects(stack.budget.recordSpending('s1', 1.5), TypeError);
  await assert.rejects(stack.budget.recordSpending('s1', -1), TypeError);
  await assert.rejects(stack.budget.recordSpending('s1', 2 ** 53), TypeError);
  await assert.rejects(stack.budget.reserve('s1', { ttlSeconds: 1.5 }), TypeError);
  await assert.rejects(stack.trustGate.check({ sessionId: 's1' }), /toolName/);
  await assert.rejects(stack.guard({ sessionId: 's1' }, () => 1), /toolName/);
  await assert.rejects(stack.guard({ sessionId: 's1', toolName: 'x' }), TypeError);
  await assert.rejects(stack.audit.log({}), TypeError);
  await assert.rejects(stack.audit.query({ since: 'x', until: new Date(NaN) }), TypeError);
  await assert.rejects(stack.audit.proof(-1), TypeError);
  assert.equal(srv.requests.length, 0);
});

test('a closed stack refuses calls; close is idempotent; Symbol.asyncDispose closes', async (t) => {
  const { srv, stack } = await connect(t, guardServer());
  assert.equal(typeof stack[Symbol.asyncDispose], 'function');
  await stack[Symbol.asyncDispose]();
  await stack.close();
  const err = await stack.budget.checkBudget('s1').catch((e) => e);
  assert.ok(err instanceof AgentsecError);
  assert.equal(err.code, 'closed');
  await assert.rejects(stack.guard({ sessionId: 's1', toolName: 'x' }, () => 1), /closed/);
  assert.equal(srv.requests.length, 0);
});

test('tokens are never printed: inspect and JSON.stringify of the stack, its parts and a reservation', async (t) => {
  const secret = 'SECRET-TOKEN-123';
  const srv = await fakeServer((r) =>
    r.url === '/v1/budget/sessions/s1/reservations'
      ? { status: 201, body: { reservation_id: 'r_1', session: 's1', expires_at: '2026-12-04T10:00:00Z', decision_id: 17, ...usage } }
      : problem('not_found', 404),
  );
  t.after(() => srv.close());
  const stack = await createSecurityStack({ url: srv.url, token: secret, ...fastRetry });
  const reservation = await stack.budget.reserve('s1');
  assert.equal(srv.requests[0].headers.authorization, `Bearer ${secret}`, 'the token is still sent');
  const shown = {
    'inspect(stack)': inspect(stack, { depth: Infinity, showHidden: true }),
    'inspect(stack.trustGate)': inspect(stack.trustGate, { depth: Infinity, showHidden: true }),
    'inspect(stack.budget)': inspect(stack.budget, { depth: Infinity }),
    'JSON.stringify(stack.budget)': JSON.stringify(stack.budget),
    'JSON.stringify(stack.audit)': JSON.stringify(stack.audit),
    'inspect(reservation)': inspect(reservation, { depth: Infinity, showHidden: true }),
    'JSON.stringify(reservation)': JSON.stringify(reservation),
  };
  for (const [what, text] of Object.entries(shown)) assert.ok(!text.includes(secret), `${what} shows the token: ${text}`);
  await stack.close();
});

test('connect mode refuses a token that is not printable ASCII without spaces, without quoting it', async () => {
  const url = 'http://127.0.0.1:1';
  for (const token of ['', 'has space', 'tab\there', 'new\nline', 'nul\0x', 'del\x7f', 'café-tok', ' lead', 'trail ']) {
    await assert.rejects(createSecurityStack({ url, token }), (err) => {
      assert.ok(err instanceof TypeError, `token ${JSON.stringify(token)}: ${err}`);
      if (token.trim() !== '') assert.ok(!err.message.includes(token.trim()), `the message quotes the token: ${err.message}`);
      return true;
    });
  }
  for (const token of [42, null]) await assert.rejects(createSecurityStack({ url, token }), TypeError);
  const ok = await createSecurityStack({ url, token: 'abc.DEF-123_~!' });
  await ok.close();
});

test('the published types give a session name’s length as docs/api.md does (1–200 bytes)', async () => {
  const { readFile } = await import('node:fs/promises');
  const dts = await readFile(new URL('../dist/types.d.ts', import.meta.url), 'utf8');
  const api = await readFile(new URL('../../../docs/api.md', import.meta.url), 'utf8').catch(() => undefined);
  assert.match(dts, /budget session \(1–200 bytes/);
  assert.doesNotMatch(dts, /1–256 bytes/);
  if (api !== undefined) assert.match(api, /session\s+name is 1–200 bytes/);
});
