/**
 * Local mode: finds the agentsec binary, writes a configuration, and runs
 * `agentsec serve` on 127.0.0.1 as a child process.
 *
 * @packageDocumentation
 */

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { accessSync, constants, statSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { AgentsecBinaryNotFoundError, AgentsecError, AgentsecStartError } from './errors.js';
import type { LocalStackOptions } from './types.js';

/** How to get a binary, said by every {@link AgentsecBinaryNotFoundError}. */
export const installHint = 'go install github.com/agentsec/agentsec/cmd/agentsec@latest, or set AGENTSEC_BIN';

const startTimeoutMs = 15_000;
const stopTimeoutMs = 10_000;
const stderrKeep = 32 << 10;
/** How long an exited server's stderr may take to deliver its last bytes. */
const stderrDrainMs = 2000;

/**
 * Finds the agentsec binary: `AGENTSEC_BIN` if set (it must exist), else
 * `agentsec` on `PATH`.
 *
 * @param env - the environment to look in; `process.env` by default
 * @returns the binary's absolute path
 * @throws {@link AgentsecBinaryNotFoundError} if there is none.
 */
export function findBinary(env: Record<string, string | undefined> = process.env): string {
  const explicit = env.AGENTSEC_BIN;
  if (explicit) {
    if (isExecutable(explicit)) return resolve(explicit);
    throw new AgentsecBinaryNotFoundError(
      `AGENTSEC_BIN is ${JSON.stringify(explicit)}, which is not an executable file. Install agentsec: ${installHint}`,
    );
  }
  const names = process.platform === 'win32' ? ['agentsec.exe', 'agentsec'] : ['agentsec'];
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    for (const name of names) {
      const p = join(dir, name);
      if (isExecutable(p)) return resolve(p);
    }
  }
  throw new AgentsecBinaryNotFoundError(
    `local mode runs the agentsec binary, and there is no agentsec on PATH. Install it: ${installHint}`,
  );
}

function isExecutable(p: string): boolean {
  try {
    if (!statSync(p).isFile()) return false;
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * A running local server and the tokens the client holds for it. The tokens
 * are `#private` fields, so that printing or serializing a server (or a
 * stack holding one) never shows them.
 */
export class LocalServer {
  /** The server's base URL (`http://127.0.0.1:PORT`). */
  readonly url: string;
  /** The data directory. */
  readonly dataDir: string;
  /** Every agent's bearer token, by agent id, in configuration order. */
  readonly #agentTokens: Map<string, string>;
  /** The admin operator's bearer token. */
  readonly #operatorToken: string;
  readonly #close: () => Promise<void>;

  constructor(url: string, dataDir: string, agentTokens: Map<string, string>, operatorToken: string, close: () => Promise<void>) {
    this.url = url;
    this.dataDir = dataDir;
    this.#agentTokens = agentTokens;
    this.#operatorToken = operatorToken;
    this.#close = close;
  }

  /** The configured agents' ids, in configuration order. */
  agentIds(): string[] {
    return [...this.#agentTokens.keys()];
  }

  /** An agent's bearer token; the first agent's if `agentId` is undefined; undefined if there is no such agent. */
  agentToken(agentId: string | undefined): string | undefined {
    if (agentId === undefined) return this.#agentTokens.values().next().value;
    return this.#agentTokens.get(agentId);
  }

  /** The admin operator's bearer token. */
  operatorToken(): string {
    return this.#operatorToken;
  }

  /** Stops the server (it drains and signs its last checkpoint) and removes a temporary data dir. */
  close(): Promise<void> {
    return this.#close();
  }
}

/** The identifier of the operator a local stack configures. */
export const localOperator = 'local-operator';

/** Checks the seed's configuration, with clear TypeErrors for what is missing or mistyped. */
export function validateLocalOptions(o: LocalStackOptions): void {
  if (!o || typeof o !== 'object') throw new TypeError('agentsec: createSecurityStack needs options');
  const tg = o.trustGate;
  if (!tg || typeof tg !== 'object') throw new TypeError('agentsec: local mode needs trustGate: { agents: [...], ... }');
  if (!Array.isArray(tg.agents) || tg.agents.length === 0) {
    throw new TypeError('agentsec: trustGate.agents must list at least one agent ({ agentId, level }): the client acts as them');
  }
  tg.agents.forEach((a, i) => {
    if (!a || typeof a.agentId !== 'string' || a.agentId === '') throw new TypeError(`agentsec: trustGate.agents[${i}].agentId must be a non-empty string`);
    if (typeof a.level !== 'string' || a.level === '') throw new TypeError(`agentsec: trustGate.agents[${i}].level must be a non-empty string`);
    if (a.scope !== undefined && typeof a.scope !== 'string') throw new TypeError(`agentsec: trustGate.agents[${i}].scope must be a string`);
  });
  if ((tg.toolName === undefined) !== (tg.requiredLevel === undefined)) {
    throw new TypeError('agentsec: trustGate.toolName and trustGate.requiredLevel go together: the tool and the level it requires');
  }
  for (const [k, v] of [['toolName', tg.toolName], ['requiredLevel', tg.requiredLevel], ['defaultLevel', tg.defaultLevel]] as const) {
    if (v !== undefined && (typeof v !== 'string' || v === '')) throw new TypeError(`agentsec: trustGate.${k} must be a non-empty string`);
  }
  if (tg.rules !== undefined) {
    if (!Array.isArray(tg.rules)) throw new TypeError('agentsec: trustGate.rules must be a list of { tool, level }');
    tg.rules.forEach((r, i) => {
      if (!r || typeof r.tool !== 'string' || typeof r.level !== 'string') throw new TypeError(`agentsec: trustGate.rules[${i}] must be { tool: string, level: string }`);
    });
  }
  if (tg.ladder !== undefined && typeof tg.ladder !== 'string' && !(Array.isArray(tg.ladder) && tg.ladder.every((l) => typeof l === 'string'))) {
    throw new TypeError('agentsec: trustGate.ladder must be a ladder name or a list of level names');
  }
  const b = o.budget;
  if (!b || typeof b !== 'object') throw new TypeError('agentsec: local mode needs budget: { tokenLimit, callLimit }');
  for (const [k, v] of [['tokenLimit', b.tokenLimit], ['callLimit', b.callLimit]] as const) {
    if (!Number.isSafeInteger(v) || v <= 0) throw new TypeError(`agentsec: budget.${k} must be a positive integer, not ${String(v)}`);
  }
  if (b.callTokenLimit !== undefined && (!Number.isSafeInteger(b.callTokenLimit) || b.callTokenLimit <= 0)) {
    throw new TypeError(`agentsec: budget.callTokenLimit must be a positive integer, not ${String(b.callTokenLimit)}`);
  }
  if (typeof o.auditNamespace !== 'string' || o.auditNamespace === '') {
    throw new TypeError("agentsec: auditNamespace must name the application, such as 'my-agent.production'");
  }
  if (o.dataDir !== undefined && (typeof o.dataDir !== 'string' || o.dataDir === '')) {
    throw new TypeError('agentsec: dataDir must be a directory path');
  }
}

/** The configuration file a local stack writes (JSON, which is YAML). */
export function localConfig(o: LocalStackOptions, dir: string, agentTokens: Map<string, string>, operatorToken: string): object {
  const tg = o.trustGate;
  const trust: Record<string, unknown> = {};
  if (tg.ladder !== undefined) trust.ladder = tg.ladder;
  if (tg.defaultLevel !== undefined) trust.default_level = tg.defaultLevel;
  const rules: { tool: string; level: string }[] = [];
  if (tg.toolName !== undefined && tg.requiredLevel !== undefined) rules.push({ tool: tg.toolName, level: tg.requiredLevel });
  for (const r of tg.rules ?? []) rules.push({ tool: r.tool, level: r.level });
  trust.rules = rules;
  trust.agents = tg.agents.map((a) => {
    const entry: Record<string, string> = { id: a.agentId, level: a.level };
    if (a.scope !== undefined) entry.scope = a.scope;
    entry.token_sha256 = sha256(agentTokens.get(a.agentId)!);
    return entry;
  });
  const budget: Record<string, number> = { tokens: o.budget.tokenLimit, calls: o.budget.callLimit };
  if (o.budget.callTokenLimit !== undefined) budget.call_tokens = o.budget.callTokenLimit;
  return {
    namespace: o.auditNamespace,
    listen: '127.0.0.1:0',
    trust,
    budget,
    audit: { path: join(dir, 'audit.db'), key_file: join(dir, 'local.key') },
    operators: [{ id: localOperator, role: 'admin', token_sha256: sha256(operatorToken) }],
  };
}

function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

function newToken(): string {
  return randomBytes(32).toString('hex');
}

/** Starts a local server for the seed's configuration. */
export async function startLocal(o: LocalStackOptions): Promise<LocalServer> {
  validateLocalOptions(o);
  const bin = findBinary();
  const temporary = o.dataDir === undefined;
  let dir: string;
  if (temporary) {
    dir = await mkdtemp(join(tmpdir(), 'agentsec-'));
  } else {
    dir = resolve(o.dataDir!);
    await mkdir(dir, { recursive: true, mode: 0o700 });
  }
  try {
    return await startIn(o, bin, dir, temporary);
  } catch (err) {
    if (temporary) await rm(dir, { recursive: true, force: true }).catch(() => {});
    throw err;
  }
}

async function startIn(o: LocalStackOptions, bin: string, dir: string, temporary: boolean): Promise<LocalServer> {
  if (!(await exists(join(dir, 'local.key')))) {
    await keygen(bin, dir);
  }
  const agentTokens = new Map<string, string>();
  for (const a of o.trustGate.agents) if (!agentTokens.has(a.agentId)) agentTokens.set(a.agentId, newToken());
  const operatorToken = newToken();
  const configPath = join(dir, 'agentsec.yaml');
  const config = JSON.stringify(localConfig(o, dir, agentTokens, operatorToken), null, 2) + '\n';
  await writeFile(configPath, config, { mode: 0o600 });
  await chmod(configPath, 0o600);
  const addrPath = join(dir, 'addr');
  await unlink(addrPath).catch(() => {});

  const child = spawn(bin, ['serve', '-config', configPath, '-addr-file', addrPath, '-stop-on-stdin-eof'], {
    stdio: ['pipe', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => {
    stderr += chunk;
    if (stderr.length > stderrKeep * 2) stderr = stderr.slice(-stderrKeep);
  });
  // A write to a server that has gone must not crash the parent.
  child.stdin!.on('error', () => {});
  const exited = new Promise<Exit>((res) => {
    child.once('exit', (code, signal) => {
      // 'exit' can come before the last of stderr is read — often the
      // line that says why. Wait for its end, briefly: a process the
      // server started may hold stderr open after it.
      const done = () => res({ code, signal });
      const errStream = child.stderr!;
      if (errStream.readableEnded || errStream.destroyed) return done();
      const t = setTimeout(done, stderrDrainMs);
      t.unref();
      errStream.once('close', () => {
        clearTimeout(t);
        done();
      });
    });
    child.once('error', (error) => res({ code: null, signal: null, error }));
  });
  let exit: Exit | undefined;
  void exited.then((e) => {
    exit = e;
  });

  const addr = await waitForAddr(addrPath, () => exit !== undefined);
  if (addr === undefined) {
    const e = exit;
    if (!e) {
      await stop(child, exited, 0);
      throw new AgentsecStartError(`agentsec serve did not write its address to ${addrPath} within ${startTimeoutMs / 1000} s`, stderr);
    }
    throw new AgentsecStartError(
      e.error ? `could not run ${bin}: ${e.error.message}` : `agentsec serve exited (${e.signal ?? 'code ' + e.code}) before it was ready`,
      stderr,
    );
  }
  // The parent may exit without closing the stack: the server then sees
  // its stdin end, drains and exits by itself.
  child.unref();
  unrefStream(child.stdin);
  unrefStream(child.stderr);

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      const e = exit ?? (await stop(child, exited, stopTimeoutMs));
      if (temporary) await rm(dir, { recursive: true, force: true });
      if (e.killed) {
        throw new AgentsecError({
          code: 'server_exit',
          detail: `agentsec serve did not stop within ${stopTimeoutMs / 1000} s of its stdin closing and SIGTERM and was killed:\n${stderr.trim()}`,
        });
      }
      if (e.code !== 0 && e.code !== null) {
        throw new AgentsecError({ code: 'server_exit', detail: `agentsec serve exited with code ${e.code}:\n${stderr.trim()}` });
      }
      if (e.signal !== null) {
        throw new AgentsecError({ code: 'server_exit', detail: `agentsec serve was killed by ${e.signal}:\n${stderr.trim()}` });
      }
    })();
    return closing;
  };
  return new LocalServer(`http://${addr}`, dir, agentTokens, operatorToken, close);
}

/** How the server process ended. */
interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** It could not be run at all. */
  error?: Error;
  /** It did not stop when asked and was killed. */
  killed?: boolean;
}

/**
 * Closes the child's stdin and sends it SIGTERM (on either it drains and
 * exits cleanly), waits up to `ms` for it to exit, then kills it.
 */
async function stop(child: ChildProcess, exited: Promise<Exit>, ms: number): Promise<Exit> {
  child.stdin?.end();
  try {
    child.kill('SIGTERM');
  } catch {
    // already gone
  }
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((res) => {
    timer = setTimeout(res, ms, undefined);
  });
  const e = await Promise.race([exited, timeout]);
  clearTimeout(timer);
  if (e) return e;
  child.kill('SIGKILL');
  return { ...(await exited), killed: ms > 0 };
}

/** Waits for the server to write its address; undefined if it exits first or takes too long. */
async function waitForAddr(path: string, exited: () => boolean): Promise<string | undefined> {
  const deadline = Date.now() + startTimeoutMs;
  for (;;) {
    try {
      const text = (await readFile(path, 'utf8')).trim();
      if (/^\S+:\d+$/.test(text)) return text;
    } catch {
      // not yet written
    }
    if (exited()) return undefined;
    if (Date.now() > deadline) return undefined;
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function keygen(bin: string, dir: string): Promise<void> {
  await new Promise<void>((res, rej) => {
    execFile(bin, ['keygen', '-name', 'local', '-dir', dir], { timeout: 30_000 }, (err, _stdout, stderr) => {
      if (err) rej(new AgentsecStartError(`agentsec keygen failed in ${dir}: ${err.message.split('\n')[0]}`, String(stderr)));
      else res();
    });
  });
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

function unrefStream(s: unknown): void {
  const u = (s as { unref?: () => void } | null)?.unref;
  if (typeof u === 'function') u.call(s);
}
