// The README's runnable examples — fenced blocks marked ```js quickstart or
// ```js example — run as written (with '@agentsec/client' pointing at
// ../dist/index.js), and must print exactly the ```text output block that
// follows each.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { BIN, needsServer, tempDir } from './helpers.mjs';

const run = promisify(execFile);
const here = fileURLToPath(new URL('.', import.meta.url));
const readme = join(here, '..', 'README.md');
const dist = pathToFileURL(join(here, '..', 'dist', 'index.js')).href;

/** The fenced blocks of a Markdown text: { info, code, line }. */
function fences(md) {
  const out = [];
  const lines = md.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const open = lines[i].match(/^```(.*)$/);
    if (!open) continue;
    const start = i;
    const body = [];
    for (i++; i < lines.length && lines[i] !== '```'; i++) body.push(lines[i]);
    out.push({ info: open[1].trim(), code: body.join('\n') + '\n', line: start + 1 });
  }
  return out;
}

/** The runnable examples, each with the output it promises. */
async function examples() {
  const blocks = fences(await readFile(readme, 'utf8'));
  const out = [];
  blocks.forEach((b, i) => {
    const [lang, mark] = b.info.split(/\s+/);
    if (lang !== 'js' || (mark !== 'quickstart' && mark !== 'example')) return;
    const next = blocks[i + 1];
    assert.ok(next && next.info === 'text output', `README.md:${b.line}: a runnable block must be followed by a \`\`\`text output block`);
    out.push({ name: `${mark} (README.md:${b.line})`, code: b.code, expected: next.code });
  });
  return out;
}

test('the README has a quick start that imports @agentsec/client, with its output', async () => {
  const ex = await examples();
  assert.ok(ex.length >= 2, 'a quick start and a guard example');
  assert.match(ex[0].name, /^quickstart/);
  for (const e of ex) {
    assert.match(e.code, /from '@agentsec\/client';/);
    assert.match(e.code, /await stack\.close\(\)/);
  }
  // The seed's calls, nearly word for word.
  const q = ex[0].code;
  for (const call of [
    "trustGate: { requiredLevel: 'verified', toolName: 'file-reader',",
    "agents: [{ agentId: 'agent-7', level: 'verified' }] },",
    'budget: { tokenLimit: 10_000, callLimit: 100 },',
    "auditNamespace: 'my-agent.production',",
    "const request = { agentId: 'agent-7', sessionId: 'session-1', toolName: 'file-reader' };",
    'const trustDecision = await stack.trustGate.check(request);',
    'const budgetDecision = await stack.budget.checkBudget(request.sessionId);',
    'await stack.budget.recordSpending(request.sessionId, result.tokensUsed);',
    "await stack.audit.log({ event: 'tool-call-complete', sessionId: request.sessionId });",
    'await stack.audit.query(filter);',
    'await stack.close();',
  ]) {
    assert.ok(q.includes(call), `the quick start has ${call}`);
  }
});

test('the README examples run and print what the README says', { skip: needsServer }, async (t) => {
  const dir = await tempDir(t);
  for (const [i, e] of (await examples()).entries()) {
    await t.test(e.name, async () => {
      const file = join(dir, `example-${i}.mjs`);
      const code = e.code.replaceAll("from '@agentsec/client'", `from '${dist}'`);
      assert.notEqual(code, e.code, 'the import was rewritten');
      await writeFile(file, code);
      const { stdout } = await run(process.execPath, [file], {
        env: { ...process.env, AGENTSEC_BIN: BIN },
        timeout: 30_000,
      });
      assert.equal(stdout, e.expected);
    });
  }
});
