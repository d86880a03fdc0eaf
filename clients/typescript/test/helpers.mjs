// Shared by the tests: a fake HTTP server, and what the integration tests
// need to find the real one. (node --test runs every file under test/, so
// this one shows up as a file with no tests.)

import { createServer } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The real agentsec binary, from AGENTSEC_BIN; the integration tests need it. */
export const BIN = process.env.AGENTSEC_BIN;

/** The skip option of an integration test: false, or why it is skipped. */
export const needsServer = BIN
  ? false
  : 'AGENTSEC_BIN is not set: it must point at an agentsec binary ' +
    '(cd /work/main && go build -o /tmp/agentsec-bin ./cmd/agentsec; AGENTSEC_BIN=/tmp/agentsec-bin npm test)';

/** Fast retries for tests. */
export const fastRetry = { retry: { baseDelayMs: 1, maxDelayMs: 2 } };

/**
 * Starts a fake decision API on 127.0.0.1. `handler(req, body)` returns
 * `{ status, body, headers }` or 'destroy' (drop the connection), and every
 * request is kept in `requests` as { method, url, headers, body }.
 */
export async function fakeServer(handler) {
  const requests = [];
  const server = createServer((req, res) => {
    let data = '';
    req.setEncoding('utf8');
    req.on('data', (c) => (data += c));
    req.on('end', async () => {
      const body = data ? JSON.parse(data) : undefined;
      const r = { method: req.method, url: req.url, headers: req.headers, body };
      requests.push(r);
      const out = await handler(r, requests.length);
      if (out === 'destroy') {
        req.socket.destroy();
        return;
      }
      const status = out.status ?? 200;
      const headers = { ...(out.headers ?? {}) };
      let text = '';
      if (typeof out.body === 'string') {
        text = out.body;
      } else if (out.body !== undefined) {
        text = JSON.stringify(out.body);
        headers['content-type'] ??= status >= 400 ? 'application/problem+json' : 'application/json';
      }
      res.writeHead(status, headers);
      res.end(text);
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    async close() {
      server.closeAllConnections?.();
      await new Promise((r) => server.close(r));
    },
  };
}

/** A problem document as the server writes it. */
export function problem(code, status, extra = {}) {
  return {
    status,
    body: { type: `tag:agentsec.dev,2026:problem:${code}`, title: code, status, code, detail: `${code} detail`, ...extra },
  };
}

/** Makes a temporary directory; the test removes it with `cleanup`. */
export async function tempDir(t, prefix = 'agentsec-ts-test-') {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs fn with some environment variables set, then restores them. */
export async function withEnv(vars, fn) {
  const saved = {};
  for (const k of Object.keys(vars)) {
    saved[k] = process.env[k];
    if (vars[k] === undefined) delete process.env[k];
    else process.env[k] = vars[k];
  }
  try {
    return await fn();
  } finally {
    for (const k of Object.keys(saved)) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  }
}
