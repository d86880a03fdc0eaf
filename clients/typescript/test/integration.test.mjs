// Integration tests against the real agentsec server (AGENTSEC_BIN). The
// README's quick start runs in readme.test.mjs.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import {
  createSecurityStack,
  BudgetExceededError,
  TrustDeniedError,
  ConflictError,
  UnauthenticatedError,
  ForbiddenError,
  InvalidRequestError,
  NotFoundError,
} from '../dist/index.js';
import { BIN, needsServer, tempDir, fastRetry } from './helpers.mjs';

const run = promisify(execFile);

function seed(extra = {}) {
  return {
    trustGate: {
      requiredLevel: 'verified',
      toolName: 'file-reader',
      agents: [
        { agentId: 'agent-7', level: 'verified' },
        { agentId: 'agent-low', level: 'public' },
      ],
    },
    budget: { tokenLimit: 10_000, callLimit: 100 },
    auditNamespace: 'my-agent.test',
    ...fastRetry,
    ...extra,
  };
}

async function all(iter) {
  const out = [];
  for await (const x of iter) out.push(x);
  return out;
}

test('exactness: 200 concurrent guards on a 50-call budget → 50 run, 150 refused, 200 records, a log that verifies', { skip: needsServer }, async (t) => {
  const dataDir = await tempDir(t);
  const stack = await createSecurityStack(seed({ budget: { tokenLimit: 1_000_000, callLimit: 50 }, dataDir }));
  let closed = false;
  t.after(() => (closed ? undefined : stack.close()));
  const request = { agentId: 'agent-7', sessionId: 'exact', toolName: 'file-reader' };
  let ran = 0;
  const settled = await Promise.allSettled(
    Array.from({ length: 200 }, (_, i) =>
      stack.guard(request, async () => {
        ran++;
        return { i, tokensUsed: 3 };
      }),
    ),
  );
  const ok = settled.filter((s) => s.status === 'fulfilled');
  const refused = settled.filter((s) => s.status === 'rejected');
  assert.equal(ok.length, 50);
  assert.equal(ran, 50);
  assert.equal(refused.length, 150);
  const denialIds = new Set();
  for (const r of refused) {
    assert.ok(r.reason instanceof BudgetExceededError, String(r.reason));
    assert.equal(r.reason.status, 429);
    assert.equal(typeof r.reason.decisionId, 'number', 'each refusal carries its decision id');
    denialIds.add(r.reason.decisionId);
  }
  assert.equal(denialIds.size, 150);

  const b = await stack.budget.checkBudget('exact');
  assert.deepEqual([b.allowed, b.used.calls, b.used.tokens, b.remaining.calls], [false, 50, 150, 0]);

  // Small pages, to follow the cursor.
  const records = await all(stack.audit.queryAll({ agentId: 'agent-7', sessionId: 'exact', event: 'tool.call', limit: 37 }));
  assert.equal(records.length, 200);
  const allowed = records.filter((r) => r.outcome === 'allow');
  const denied = records.filter((r) => r.outcome === 'deny');
  assert.equal(allowed.length, 50);
  assert.equal(denied.length, 150);
  assert.deepEqual(new Set(denied.map((r) => r.seq)), denialIds, 'the refusals’ decision ids are the deny records');
  for (const r of records) {
    assert.equal(r.agentId, 'agent-7');
    assert.equal(r.sessionId, 'exact');
    assert.equal(r.sessionKey, 'agent-7/exact');
    assert.equal(r.toolName, 'file-reader');
    assert.ok(r.time instanceof Date && !Number.isNaN(r.time.getTime()));
  }
  assert.equal(allowed.reduce((n, r) => n + (r.tokens ?? 0), 0), 150);

  // A proof of one refusal, checked by the binary.
  const proof = await stack.audit.proof([...denialIds][0]);
  assert.equal(proof.record.outcome, 'deny');

  await stack.close();
  closed = true;
  const { stdout, stderr } = await run(BIN, ['audit', 'verify', '-db', join(dataDir, 'audit.db'), '-pubkey', join(dataDir, 'local.pub')]);
  t.diagnostic(`audit verify: ${(stdout + stderr).trim().split('\n').at(-1)}`);
  const proofFile = join(dataDir, 'proof.txt');
  await writeFile(proofFile, proof.proof);
  // Exits 0 only if the proof holds (execFile rejects otherwise).
  await run(BIN, ['audit', 'check-proof', '-pubkey', join(dataDir, 'local.pub'), proofFile]);
});

test('a reservation left open expires as spent; a released one gives its slot back', { skip: needsServer }, async (t) => {
  const stack = await createSecurityStack(seed());
  t.after(() => stack.close());
  const before = await stack.budget.checkBudget('ttl');
  assert.equal(before.used.calls, 0);

  const res = await stack.budget.reserve('ttl', { ttlSeconds: 1 });
  assert.equal(res.sessionId, 'ttl');
  assert.equal(typeof res.decisionId, 'number');
  assert.ok(res.expiresAt instanceof Date && res.expiresAt.getTime() > Date.now() - 5000);
  assert.equal((await stack.budget.checkBudget('ttl')).used.calls, 1);

  // Wait for the server to record the expiry (its timer fires at expires_at).
  let expiry;
  const deadline = Date.now() + 6000;
  await new Promise((r) => setTimeout(r, 1500));
  while (!expiry && Date.now() < deadline) {
    const { records } = await stack.audit.query({ sessionId: 'ttl', event: 'budget.expire' });
    expiry = records.find((r) => r.attrs?.reservation === res.id) ?? records[0];
    if (!expiry) await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(expiry, 'a budget.expire record');
  assert.equal(expiry.event, 'budget.expire');
  assert.equal(expiry.sessionId, 'ttl');
  const after = await stack.budget.checkBudget('ttl');
  assert.equal(after.used.calls, 1, 'the expired reservation counts as spent');
  const err = await res.commit(10).catch((e) => e);
  assert.ok(err instanceof ConflictError, String(err));
  assert.equal(err.status, 409);
  await assert.rejects(res.release(), ConflictError);

  const res2 = await stack.budget.reserve('ttl');
  assert.equal((await stack.budget.checkBudget('ttl')).used.calls, 2);
  const rel = await res2.release();
  assert.equal(rel.reservationId, res2.id);
  assert.equal(typeof rel.decisionId, 'number');
  assert.equal(rel.used.calls, 1);
  assert.equal((await stack.budget.checkBudget('ttl')).used.calls, 1, 'the released slot is given back');

  const res3 = await stack.budget.reserve('ttl');
  const c = await res3.commit(120);
  assert.equal(c.tokens, 120);
  assert.deepEqual([c.used.calls, c.used.tokens], [2, 120]);
  await assert.rejects(res3.commit(1), ConflictError);
});

test('typed errors: trust denials carry decision ids; an unknown tool is denied', { skip: needsServer }, async (t) => {
  const stack = await createSecurityStack(seed());
  t.after(() => stack.close());
  const low = { agentId: 'agent-low', sessionId: 's1', toolName: 'file-reader' };

  const q = await stack.trustGate.check(low);
  assert.equal(q.allowed, false, 'a question answered no is not an error');
  assert.equal(q.requiredLevel, 'verified');
  assert.equal(q.assignedLevel, 'public');

  let ran = false;
  const err = await stack.guard(low, () => (ran = true)).catch((e) => e);
  assert.ok(err instanceof TrustDeniedError, String(err));
  assert.equal(ran, false);
  assert.equal(err.status, 403);
  assert.equal(err.code, 'trust_denied');
  assert.equal(typeof err.decisionId, 'number');
  assert.equal(err.requiredLevel, 'verified');
  assert.equal(err.assignedLevel, 'public');
  const { record } = await stack.audit.get(err.decisionId);
  assert.deepEqual([record.event, record.outcome, record.agentId, record.sessionId], ['tool.call', 'deny', 'agent-low', 's1']);

  const unknown = await stack.guard({ agentId: 'agent-7', sessionId: 's1', toolName: 'no-such-tool' }, () => 1).catch((e) => e);
  assert.ok(unknown instanceof TrustDeniedError, String(unknown));
  assert.equal(typeof unknown.decisionId, 'number');

  const bad = await stack.budget.reserve('s1', { ttlSeconds: 99999 }).catch((e) => e);
  assert.ok(bad instanceof InvalidRequestError, String(bad));
  await assert.rejects(stack.budget.checkBudget('a/b'), InvalidRequestError);
  await assert.rejects(stack.audit.get(10 ** 9), NotFoundError);
  await assert.rejects(stack.audit.log({ event: 'budget.spend' }), InvalidRequestError);
});

/** Runs agentsec serve with a configuration whose tokens the test knows. */
async function serveWithTokens(t) {
  const dir = await tempDir(t);
  await run(BIN, ['keygen', '-name', 'k', '-dir', dir]);
  const token = { a: randomBytes(16).toString('hex'), b: randomBytes(16).toString('hex'), auditor: randomBytes(16).toString('hex') };
  const sha = (s) => createHash('sha256').update(s).digest('hex');
  const cfg = {
    namespace: 'connect.test',
    listen: '127.0.0.1:0',
    trust: {
      rules: [{ tool: 'file-reader', level: 'verified' }],
      agents: [
        { id: 'agent-a', level: 'verified', token_sha256: sha(token.a) },
        { id: 'agent-b', level: 'verified', token_sha256: sha(token.b) },
      ],
    },
    budget: { tokens: 1000, calls: 10 },
    audit: { path: join(dir, 'audit.db'), key_file: join(dir, 'k.key') },
    operators: [{ id: 'aud', role: 'auditor', token_sha256: sha(token.auditor) }],
  };
  await writeFile(join(dir, 'agentsec.yaml'), JSON.stringify(cfg), { mode: 0o600 });
  const child = spawn(BIN, ['serve', '-config', join(dir, 'agentsec.yaml'), '-addr-file', join(dir, 'addr'), '-stop-on-stdin-eof'], {
    stdio: ['pipe', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (c) => (stderr += c));
  const exited = new Promise((r) => child.once('exit', r));
  t.after(async () => {
    child.stdin.end();
    await exited;
  });
  for (let i = 0; ; i++) {
    const addr = await readFile(join(dir, 'addr'), 'utf8').catch(() => '');
    if (addr.trim()) return { url: `http://${addr.trim()}`, token };
    if (i > 1500 || child.exitCode !== null) throw new Error(`agentsec serve did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('connect mode: an agent token acts as its agent; another name is forbidden; a bad token is unauthenticated', { skip: needsServer }, async (t) => {
  const { url, token } = await serveWithTokens(t);
  const a = await createSecurityStack({ url, token: token.a, ...fastRetry });
  const d = await a.trustGate.check({ agentId: 'agent-a', sessionId: 's', toolName: 'file-reader' });
  assert.deepEqual([d.allowed, d.agent], [true, 'agent-a']);
  const err = await a.trustGate.check({ agentId: 'agent-b', sessionId: 's', toolName: 'file-reader' }).catch((e) => e);
  assert.ok(err instanceof ForbiddenError, String(err));
  assert.equal(err.status, 403);

  const out = await a.guard({ sessionId: 'work', toolName: 'file-reader' }, () => ({ tokensUsed: 7 }));
  assert.equal(out.tokensUsed, 7);
  const mine = await a.audit.query({ sessionId: 'work' });
  assert.deepEqual(mine.records.map((r) => [r.event, r.agentId, r.sessionId, r.tokens]), [['tool.call', 'agent-a', 'work', 7]]);

  // Two agents naming the same session get two budgets.
  const b = await createSecurityStack({ url, token: token.b, ...fastRetry });
  assert.equal((await b.budget.checkBudget('work')).used.calls, 0);
  assert.equal((await a.budget.checkBudget('work')).used.calls, 1);
  await assert.rejects(b.audit.query({ agentId: 'agent-a' }), ForbiddenError);

  // An auditor reads any session, naming its agent.
  const auditor = await createSecurityStack({ url, token: token.auditor, ...fastRetry });
  assert.equal((await auditor.budget.checkBudget('work', { agentId: 'agent-a' })).used.calls, 1);
  const seen = await auditor.audit.query({ agentId: 'agent-a', sessionId: 'agent-a/work' });
  assert.equal(seen.records.length, 1);
  await assert.rejects(auditor.budget.recordSpending('work', 1, { agentId: 'agent-a' }), ForbiddenError);

  const nobody = await createSecurityStack({ url, token: 'not-a-token', ...fastRetry });
  const unauth = await nobody.trustGate.check({ sessionId: 's', toolName: 'file-reader' }).catch((e) => e);
  assert.ok(unauth instanceof UnauthenticatedError, String(unauth));
  assert.equal(unauth.status, 401);
  await assert.rejects(nobody.guard({ sessionId: 's', toolName: 'file-reader' }, () => 1), UnauthenticatedError);
  await assert.rejects(nobody.audit.query(), UnauthenticatedError);
  for (const s of [a, b, auditor, nobody]) await s.close();
});

/**
 * A proxy in front of the server that loses the answer to the first
 * request of each route `drop` picks: the server acted, the client never
 * heard.
 */
async function lossyProxy(t, target, drop) {
  const seen = new Set();
  const log = [];
  const server = createServer(async (req, res) => {
    let body = '';
    for await (const c of req) body += c;
    const headers = { ...req.headers };
    for (const h of ['host', 'connection', 'content-length', 'keep-alive']) delete headers[h];
    const up = await fetch(target + req.url, { method: req.method, headers, body: body || undefined });
    const text = await up.text();
    const route = `${req.method} ${req.url.replace(/\/(c|r)_[^/]+/, '/$1_ID')}`;
    log.push({ route, key: req.headers['idempotency-key'], replayed: up.headers.get('idempotent-replayed') === 'true' });
    if (drop(route) && !seen.has(route)) {
      seen.add(route);
      req.socket.destroy(); // the answer is lost
      return;
    }
    res.writeHead(up.status, { 'content-type': up.headers.get('content-type') ?? 'application/json' });
    res.end(text);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => {
    server.closeAllConnections();
    return new Promise((r) => server.close(r));
  });
  return { url: `http://127.0.0.1:${server.address().port}`, log };
}

test('a change whose answer was lost is retried with its Idempotency-Key and takes effect once', { skip: needsServer }, async (t) => {
  const { url, token } = await serveWithTokens(t);
  const proxy = await lossyProxy(t, url, (route) => route.startsWith('POST'));
  const stack = await createSecurityStack({ url: proxy.url, token: token.a, ...fastRetry });
  t.after(() => stack.close());

  const spent = await stack.budget.recordSpending('once', 5);
  assert.deepEqual([spent.used.calls, spent.used.tokens], [1, 5]);
  const out = await stack.guard({ sessionId: 'once', toolName: 'file-reader' }, () => ({ tokensUsed: 7 }));
  assert.equal(out.tokensUsed, 7);
  const res = await stack.budget.reserve('once');
  await res.commit(11);

  const b = await stack.budget.checkBudget('once');
  assert.deepEqual([b.used.calls, b.used.tokens], [3, 23], 'each change counted once');
  const { records } = await stack.audit.query({ sessionId: 'once' });
  assert.deepEqual(records.map((r) => r.event), ['budget.spend', 'tool.call', 'budget.reserve', 'budget.commit']);

  // Every POST went twice, with one key, and the second was a replay.
  const posts = proxy.log.filter((l) => l.route.startsWith('POST'));
  assert.equal(posts.length, 10);
  for (let i = 0; i < posts.length; i += 2) {
    assert.equal(posts[i].route, posts[i + 1].route);
    assert.equal(posts[i].key, posts[i + 1].key);
    assert.ok(posts[i].key);
    assert.deepEqual([posts[i].replayed, posts[i + 1].replayed], [false, true], posts[i].route);
  }
});
