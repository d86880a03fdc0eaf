// Local mode's process handling against a fake agentsec binary, so that it
// is tested without the real server: finding the binary, the files it
// writes, the tokens it picks, start failures, and close.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, readFile, stat, writeFile, access } from 'node:fs/promises';
import { join } from 'node:path';
import {
  createSecurityStack,
  findBinary,
  AgentsecBinaryNotFoundError,
  AgentsecStartError,
  AgentsecError,
} from '../dist/index.js';
import { tempDir, withEnv, fastRetry } from './helpers.mjs';

// The fake: keygen writes the two key files; serve reads the config, answers
// every request with who the token is (by its hash) and what was asked,
// writes its address, and exits when its stdin ends or on SIGTERM (writing
// DIR/stopped, and what stopped it to DIR/stop-signals).
const fakeSource = String.raw`
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const crypto = require('node:crypto');
const [cmd, ...args] = process.argv.slice(2);
const flag = (f) => args[args.indexOf(f) + 1];
if (cmd === 'keygen') {
  if (process.env.FAKE_KEYGEN_FAIL) { console.error('keygen: no entropy today'); process.exit(1); }
  const dir = flag('-dir');
  fs.writeFileSync(path.join(dir, flag('-name') + '.key'), 'secret\n', { mode: 0o600 });
  fs.writeFileSync(path.join(dir, flag('-name') + '.pub'), 'public\n');
  fs.appendFileSync(path.join(dir, 'keygens'), 'x');
  process.exit(0);
}
if (cmd !== 'serve') { console.error('unknown command ' + cmd); process.exit(2); }
if (!args.includes('-stop-on-stdin-eof')) { console.error('missing -stop-on-stdin-eof'); process.exit(2); }
const cfgPath = flag('-config');
const cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
if (process.env.FAKE_SERVE_FAIL) { console.error('serve: ' + cfgPath + ': line 3: a made-up problem'); process.exit(1); }
const who = {};
for (const a of cfg.trust.agents) who[a.token_sha256] = 'agent:' + a.id;
for (const o of cfg.operators) who[o.token_sha256] = 'operator:' + o.id;
const server = http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    const token = (req.headers.authorization || '').replace(/^Bearer /, '');
    const sum = crypto.createHash('sha256').update(token).digest('hex');
    res.setHeader('content-type', 'application/json');
    if (req.url.startsWith('/v1/audit/records')) {
      res.end(JSON.stringify({ records: [{ seq: 1, time: new Date().toISOString(), namespace: cfg.namespace, event: 'echo',
        attrs: { who: who[sum] || 'nobody', url: req.url } }] }));
      return;
    }
    res.end(JSON.stringify({ allowed: true, reason: who[sum] || 'nobody', agent: '', tool: body, scope: '',
      required_level: '', assigned_level: '', session: req.url, used: {}, limits: {}, remaining: {} }));
  });
});
server.listen(0, '127.0.0.1', () => {
  if (process.env.FAKE_STDERR_FLOOD) process.stderr.write('x'.repeat(1 << 20) + '\n');
  fs.writeFileSync(flag('-addr-file'), '127.0.0.1:' + server.address().port + '\n');
});
let stopping = false;
const stop = (why) => {
  if (stopping) return;
  stopping = true;
  const code = Number(process.env.FAKE_EXIT_CODE || 0);
  if (code) console.error('serve: could not sign the last checkpoint');
  fs.writeFileSync(path.join(path.dirname(cfgPath), 'stopped'), 'yes');
  fs.appendFileSync(path.join(path.dirname(cfgPath), 'stop-signals'), why + '\n');
  server.close();
  process.exit(code);
};
process.stdin.resume();
process.stdin.on('end', () => stop('stdin-eof'));
process.on('SIGTERM', () => stop('SIGTERM'));
if (process.env.FAKE_STOP_ON_SIGTERM_ONLY) process.stdin.removeAllListeners('end');
`;

async function fakeBinary(t) {
  const dir = await tempDir(t, 'agentsec-fake-bin-');
  const js = join(dir, 'fake.cjs');
  await writeFile(js, fakeSource);
  const bin = join(dir, 'agentsec');
  await writeFile(bin, `#!/bin/sh\nexec "${process.execPath}" "${js}" "$@"\n`);
  await chmod(bin, 0o755);
  return { bin, dir };
}

const seed = {
  trustGate: {
    requiredLevel: 'verified',
    toolName: 'file-reader',
    agents: [
      { agentId: 'agent-7', level: 'verified' },
      { agentId: 'agent-8', level: 'public' },
      { agentId: 'agent-7', level: 'privileged', scope: 'ops' },
    ],
  },
  budget: { tokenLimit: 10_000, callLimit: 100 },
  auditNamespace: 'my-agent.production',
  ...fastRetry,
};

test('binary missing: AGENTSEC_BIN names a nonexistent path → the install hint', async () => {
  await withEnv({ AGENTSEC_BIN: '/nonexistent/agentsec', PATH: '/nonexistent-dir' }, async () => {
    const err = await createSecurityStack(seed).catch((e) => e);
    assert.ok(err instanceof AgentsecBinaryNotFoundError, String(err));
    assert.ok(err instanceof AgentsecError);
    assert.equal(err.code, 'binary_not_found');
    assert.match(err.message, /\/nonexistent\/agentsec/);
    assert.match(err.message, /go install github\.com\/agentsec\/agentsec\/cmd\/agentsec@latest, or set AGENTSEC_BIN/);
  });
});

test('binary missing: no AGENTSEC_BIN and no agentsec on PATH → the install hint', async () => {
  await withEnv({ AGENTSEC_BIN: undefined, PATH: '/nonexistent-dir:/another-one' }, async () => {
    assert.throws(() => findBinary(), AgentsecBinaryNotFoundError);
    const err = await createSecurityStack(seed).catch((e) => e);
    assert.ok(err instanceof AgentsecBinaryNotFoundError, String(err));
    assert.match(err.message, /no agentsec on PATH/);
    assert.match(err.message, /go install github\.com\/agentsec\/agentsec\/cmd\/agentsec@latest, or set AGENTSEC_BIN/);
  });
});

test('agentsec on PATH is found when AGENTSEC_BIN is unset', async (t) => {
  const { bin, dir } = await fakeBinary(t);
  await withEnv({ AGENTSEC_BIN: undefined, PATH: `/nonexistent-dir:${dir}` }, async () => {
    assert.equal(findBinary(), bin);
  });
});

test('local mode writes the configuration, keeps a dataDir, and picks tokens per agent', async (t) => {
  const { bin } = await fakeBinary(t);
  const dataDir = join(await tempDir(t), 'data', 'nested');
  await withEnv({ AGENTSEC_BIN: bin }, async () => {
    const stack = await createSecurityStack({
      ...seed,
      trustGate: { ...seed.trustGate, rules: [{ tool: 'admin-*', level: 'privileged' }], defaultLevel: 'public', ladder: 'default' },
      budget: { ...seed.budget, callTokenLimit: 500 },
      dataDir,
    });
    assert.equal(stack.mode, 'local');
    assert.equal(stack.dataDir, dataDir);
    assert.match(stack.url, /^http:\/\/127\.0\.0\.1:\d+$/);
    const cfgPath = join(dataDir, 'agentsec.yaml');
    assert.equal((await stat(cfgPath)).mode & 0o777, 0o600);
    const cfg = JSON.parse(await readFile(cfgPath, 'utf8'));
    const hashes = cfg.trust.agents.map((a) => a.token_sha256);
    assert.deepEqual(cfg, {
      namespace: 'my-agent.production',
      listen: '127.0.0.1:0',
      trust: {
        ladder: 'default',
        default_level: 'public',
        rules: [
          { tool: 'file-reader', level: 'verified' },
          { tool: 'admin-*', level: 'privileged' },
        ],
        agents: [
          { id: 'agent-7', level: 'verified', token_sha256: hashes[0] },
          { id: 'agent-8', level: 'public', token_sha256: hashes[1] },
          { id: 'agent-7', level: 'privileged', scope: 'ops', token_sha256: hashes[0] },
        ],
      },
      budget: { tokens: 10000, calls: 100, call_tokens: 500 },
      audit: { path: join(dataDir, 'audit.db'), key_file: join(dataDir, 'local.key') },
      operators: [{ id: 'local-operator', role: 'admin', token_sha256: cfg.operators[0].token_sha256 }],
    });
    for (const h of [hashes[0], hashes[1], cfg.operators[0].token_sha256]) assert.match(h, /^[0-9a-f]{64}$/);
    assert.equal(new Set([hashes[0], hashes[1], cfg.operators[0].token_sha256]).size, 3);

    // The agent's token by request.agentId, else the first agent's; the log as the operator.
    assert.equal((await stack.trustGate.check({ sessionId: 's', agentId: 'agent-8' })).reason, 'agent:agent-8');
    const d = await stack.trustGate.check({ sessionId: 's' });
    assert.equal(d.reason, 'agent:agent-7');
    assert.deepEqual(JSON.parse(d.tool), { tool: 'file-reader' }, 'toolName defaults to trustGate.toolName');
    assert.equal((await stack.budget.checkBudget('s1', { agentId: 'agent-8' })).reason, 'agent:agent-8');
    assert.equal((await stack.budget.checkBudget('s1')).sessionId, '/v1/budget/sessions/s1', 'no ?agent= in local mode');
    const q = await stack.audit.query({ sessionId: 's1', agentId: 'agent-8' });
    assert.equal(q.records[0].attrs.who, 'operator:local-operator');
    assert.equal(decodeURIComponent(q.records[0].attrs.url), '/v1/audit/records?agent=agent-8&session=agent-8/s1');
    const q2 = await stack.audit.query({ sessionId: 's1' });
    assert.equal(decodeURIComponent(q2.records[0].attrs.url), '/v1/audit/records?session=agent-7/s1', 'the first agent’s session');
    await assert.rejects(stack.trustGate.check({ sessionId: 's', agentId: 'stranger' }), /not in this local stack's trustGate\.agents/);

    await stack.close();
    assert.equal(await readFile(join(dataDir, 'stopped'), 'utf8'), 'yes', 'the server saw its stdin end');
    await access(join(dataDir, 'local.key'));
    await assert.rejects(stack.budget.checkBudget('s1'), /closed/);

    // A kept dataDir is reused: its key is not made again.
    const again = await createSecurityStack({ ...seed, dataDir });
    await again.close();
    assert.equal(await readFile(join(dataDir, 'keygens'), 'utf8'), 'x', 'keygen ran once');
  });
});

test('without dataDir, a temporary directory is made and removed on close', async (t) => {
  const { bin } = await fakeBinary(t);
  await withEnv({ AGENTSEC_BIN: bin }, async () => {
    const stack = await createSecurityStack(seed);
    const dir = stack.dataDir;
    await access(join(dir, 'agentsec.yaml'));
    await access(join(dir, 'local.pub'));
    await stack[Symbol.asyncDispose]();
    await assert.rejects(access(dir), /ENOENT/);
    await stack.close(); // twice is fine
  });
});

test('a server that fails to start → AgentsecStartError with its stderr; the temp dir is removed', async (t) => {
  const { bin } = await fakeBinary(t);
  await withEnv({ AGENTSEC_BIN: bin, FAKE_SERVE_FAIL: '1' }, async () => {
    const err = await createSecurityStack(seed).catch((e) => e);
    assert.ok(err instanceof AgentsecStartError, String(err));
    assert.equal(err.code, 'start_failed');
    assert.match(err.message, /exited \(code 1\) before it was ready/);
    assert.match(err.message, /line 3: a made-up problem/);
    assert.match(err.stderr, /a made-up problem/);
    const dir = err.message.match(/serve: (\S+)\/agentsec\.yaml/)[1];
    await assert.rejects(access(dir), /ENOENT/);
  });
  await withEnv({ AGENTSEC_BIN: bin, FAKE_KEYGEN_FAIL: '1' }, async () => {
    const err = await createSecurityStack(seed).catch((e) => e);
    assert.ok(err instanceof AgentsecStartError, String(err));
    assert.match(err.message, /keygen failed/);
    assert.match(err.message, /no entropy today/);
  });
});

test('a server that exits with an error on close makes close throw; a flood of stderr does not block it', async (t) => {
  const { bin } = await fakeBinary(t);
  await withEnv({ AGENTSEC_BIN: bin, FAKE_EXIT_CODE: '3', FAKE_STDERR_FLOOD: '1' }, async () => {
    const stack = await createSecurityStack(seed);
    const dir = stack.dataDir;
    const err = await stack.close().catch((e) => e);
    assert.ok(err instanceof AgentsecError);
    assert.equal(err.code, 'server_exit');
    assert.match(err.message, /exited with code 3/);
    assert.match(err.message, /could not sign the last checkpoint/);
    await assert.rejects(access(dir), /ENOENT/, 'the temp dir is removed all the same');
  });
});

test('invalid local options are TypeErrors, before anything runs', async () => {
  await withEnv({ AGENTSEC_BIN: '/nonexistent/agentsec' }, async () => {
    const bad = [
      { ...seed, trustGate: { ...seed.trustGate, agents: [] } },
      { ...seed, trustGate: { ...seed.trustGate, agents: [{ agentId: '', level: 'x' }] } },
      { ...seed, trustGate: { toolName: 'x', agents: seed.trustGate.agents } },
      { ...seed, budget: { tokenLimit: 0, callLimit: 1 } },
      { ...seed, budget: { tokenLimit: 10, callLimit: 1.5 } },
      { ...seed, auditNamespace: '' },
      { ...seed, trustGate: { ...seed.trustGate, ladder: 7 } },
      { ...seed, url: 'http://127.0.0.1:1' },
      { ...seed, retry: { maxAttempts: 0 } },
    ];
    for (const o of bad) await assert.rejects(createSecurityStack(o), TypeError, JSON.stringify(o));
  });
});

test('close sends SIGTERM as well as closing stdin; a server that only heeds SIGTERM stops promptly', async (t) => {
  const { bin } = await fakeBinary(t);
  const dataDir = await tempDir(t);
  await withEnv({ AGENTSEC_BIN: bin, FAKE_STOP_ON_SIGTERM_ONLY: '1' }, async () => {
    const stack = await createSecurityStack({ ...seed, dataDir });
    const t0 = Date.now();
    await stack.close();
    assert.ok(Date.now() - t0 < 5000, 'stopped by SIGTERM, not by the 10 s kill');
    assert.equal(await readFile(join(dataDir, 'stopped'), 'utf8'), 'yes');
    assert.equal(await readFile(join(dataDir, 'stop-signals'), 'utf8'), 'SIGTERM\n');
  });
});
