// Benchmark: the client's stack.guard(...) against the same two requests
// (POST /v1/calls, then POST /v1/calls/{id}/end) made with raw fetch, on
// one local agentsec server (AGENTSEC_BIN).
//
//   npm run build && AGENTSEC_BIN=/path/to/agentsec node bench/guard.mjs [rounds] [calls]
//
// The ways are interleaved in rounds: in each, every way makes `calls`
// sequential calls, taking turns 50 at a time; it prints each round's median per-call latency,
// the median of the rounds, and the ratio client/raw. "raw+key" is raw
// fetch sending an Idempotency-Key too, as the client does, so that the
// server does the same work: client/raw+key is the client's own overhead.

import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { createSecurityStack } from '../dist/index.js';

const bin = process.env.AGENTSEC_BIN;
if (!bin) {
  console.error('bench/guard.mjs: set AGENTSEC_BIN to an agentsec binary');
  process.exit(2);
}
const rounds = Number(process.argv[2] ?? 7);
const calls = Number(process.argv[3] ?? 500);
const chunk = 50;
const warmup = 300;

// A server whose agent token the benchmark knows, so that raw fetch can use it.
const dir = await mkdtemp(join(tmpdir(), 'agentsec-bench-'));
await promisify(execFile)(bin, ['keygen', '-name', 'bench', '-dir', dir]);
const token = randomBytes(32).toString('hex');
const config = {
  namespace: 'bench',
  listen: '127.0.0.1:0',
  trust: {
    rules: [{ tool: 'file-reader', level: 'verified' }],
    agents: [{ id: 'bench', level: 'verified', token_sha256: createHash('sha256').update(token).digest('hex') }],
  },
  budget: { tokens: 1e15, calls: 1e12 },
  audit: { path: join(dir, 'audit.db'), key_file: join(dir, 'bench.key') },
};
await writeFile(join(dir, 'agentsec.yaml'), JSON.stringify(config), { mode: 0o600 });
const server = spawn(bin, ['serve', '-config', join(dir, 'agentsec.yaml'), '-addr-file', join(dir, 'addr'), '-stop-on-stdin-eof'], {
  stdio: ['pipe', 'ignore', 'pipe'],
});
let stderr = '';
server.stderr.on('data', (c) => (stderr += c));
let addr = '';
for (let i = 0; !addr; i++) {
  addr = (await readFile(join(dir, 'addr'), 'utf8').catch(() => '')).trim();
  if (server.exitCode !== null || i > 1500) throw new Error(`agentsec serve did not start:\n${stderr}`);
  if (!addr) await new Promise((r) => setTimeout(r, 10));
}
const url = `http://${addr}`;

const stack = await createSecurityStack({ url, token });
const request = { sessionId: 'bench-client', toolName: 'file-reader' };
const result = { text: 'x', tokensUsed: 1 };

async function viaClient() {
  await stack.guard(request, () => result);
}

const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
async function viaFetch(withKey) {
  const h = withKey ? { ...headers, 'idempotency-key': randomUUID() } : headers;
  const begin = await fetch(`${url}/v1/calls`, {
    method: 'POST',
    headers: h,
    body: JSON.stringify({ tool: 'file-reader', session: withKey ? 'bench-rawkey' : 'bench-raw' }),
  });
  const call = await begin.json();
  if (begin.status !== 201) throw new Error(`begin: ${begin.status} ${JSON.stringify(call)}`);
  const h2 = withKey ? { ...headers, 'idempotency-key': randomUUID() } : headers;
  const end = await fetch(`${url}/v1/calls/${call.call_id}/end`, { method: 'POST', headers: h2, body: JSON.stringify({ tokens: 1 }) });
  const done = await end.json();
  if (end.status !== 200) throw new Error(`end: ${end.status} ${JSON.stringify(done)}`);
}

const ways = {
  client: viaClient,
  raw: () => viaFetch(false),
  'raw+key': () => viaFetch(true),
};

async function runOne(fn, n) {
  const times = new Array(n);
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    times[i] = performance.now() - t0;
  }
  return times;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const us = (ms) => (ms * 1000).toFixed(0).padStart(8);

try {
  for (const fn of Object.values(ways)) await runOne(fn, warmup);
  console.log(`guard benchmark: ${rounds} rounds × ${calls} sequential calls each way; per-call median latency, µs`);
  console.log(`node ${process.version}, server ${bin}`);
  console.log(`round ${Object.keys(ways).map((k) => k.padStart(8)).join(' ')}`);
  const medians = Object.fromEntries(Object.keys(ways).map((k) => [k, []]));
  for (let r = 0; r < rounds; r++) {
    // Within a round the ways take turns, `chunk` calls at a time, in a
    // rotating order, so that the machine's other load falls on all alike.
    const samples = Object.fromEntries(Object.keys(ways).map((k) => [k, []]));
    for (let done = 0, turn = 0; done < calls; done += chunk, turn++) {
      const order = Object.keys(ways);
      for (let i = 0; i < turn % order.length; i++) order.push(order.shift());
      for (const k of order) samples[k].push(...(await runOne(ways[k], Math.min(chunk, calls - done))));
    }
    for (const k of Object.keys(ways)) medians[k].push(median(samples[k]));
    console.log(`${String(r + 1).padStart(5)} ${Object.keys(ways).map((k) => us(medians[k][r])).join(' ')}`);
  }
  const m = Object.fromEntries(Object.entries(medians).map(([k, v]) => [k, median(v)]));
  console.log(`median ${Object.keys(ways).map((k) => us(m[k]).slice(1)).join(' ')}`);
  console.log(`ratio client/raw = ${(m.client / m.raw).toFixed(3)} (goal ≤ 1.2); client/raw+key = ${(m.client / m['raw+key']).toFixed(3)}`);
} finally {
  await stack.close();
  server.stdin.end();
  await new Promise((r) => (server.exitCode !== null ? r() : server.once('exit', r)));
  await rm(dir, { recursive: true, force: true });
}
