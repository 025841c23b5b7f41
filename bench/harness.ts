/**
 * What the performance benchmarks share: the server built as users run it, a workspace on the real
 * Postgres, the server spawned over stdio with the MCP SDK client, and one decision measured from the
 * editor's save to the result at the client.
 */
import { spawn } from 'node:child_process';
import { watch, type FSWatcher } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport, getDefaultEnvironment } from '@modelcontextprotocol/sdk/client/stdio.js';
import type { ClientCapabilities } from '@modelcontextprotocol/sdk/types.js';
import { stringify } from 'yaml';
import { updateFrontMatter } from '../src/approvals/frontmatter.js';
import { saveAs, type SaveStyle } from '../src/approvals/human-edit.js';
import { parseConfig, type ConfigInput } from '../src/config.js';
import { ToolOutcome } from '../src/server/outcome.js';
import { sleep } from './common.js';

export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The environment variable the benchmark configs name for the connection string. */
export const DATABASE_URL_ENV = 'BENCH_GATE_DATABASE_URL';

/**
 * The current sources compiled with the project's own build config (tsconfig.build.json) into
 * `dist/` of a temporary directory, run with plain node as users run `dist/`: the bench measures the
 * code as it is now without touching the project's `dist/`. The directory gets the project's
 * package.json and a link to its node_modules, so the built code finds both where it expects them.
 */
export interface Build {
  readonly dir: string;
  readonly cli: string;
  remove(): Promise<void>;
}

/** An existing build's cli.js (`dist/src/cli.js` after `npm run build`), as it is; never removed. */
export function existingBuild(cli: string): Build {
  const absolute = path.resolve(cli);
  return { dir: path.dirname(path.dirname(absolute)), cli: absolute, remove: () => Promise.resolve() };
}

export async function buildServer(): Promise<Build> {
  const dir = await mkdtemp(path.join(tmpdir(), 'approval-gate-bench-build-'));
  const remove = () => rm(dir, { recursive: true, force: true });
  try {
    const tsc = path.join(PROJECT_ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    const output = await new Promise<{ code: number | null; text: string }>((resolve, reject) => {
      const child = spawn(
        process.execPath,
        [tsc, '-p', 'tsconfig.build.json', '--outDir', path.join(dir, 'dist')],
        {
          cwd: PROJECT_ROOT,
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      let text = '';
      child.stdout.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
      child.stderr.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, text }));
    });
    if (output.code !== 0) throw new Error(`the build failed (tsc -p tsconfig.build.json):\n${output.text}`);
    await copyFile(path.join(PROJECT_ROOT, 'package.json'), path.join(dir, 'package.json'));
    await symlink(path.join(PROJECT_ROOT, 'node_modules'), path.join(dir, 'node_modules'), 'dir');
  } catch (error) {
    await remove();
    throw error;
  }
  return { dir, cli: path.join(dir, 'dist', 'src', 'cli.js'), remove };
}

export interface Workspace {
  readonly dir: string;
  readonly configPath: string;
  readonly approvalsDir: string;
}

/**
 * A temporary workspace whose one database is the real Postgres (connection string from
 * DATABASE_URL_ENV), with its own ledger schema; requests never expire during a run.
 */
export async function createWorkspace(
  ledgerSchema: string,
  maxWaitSeconds: number,
  overrides: Partial<ConfigInput> = {},
): Promise<Workspace> {
  const dir = await mkdtemp(path.join(tmpdir(), 'approval-gate-bench-'));
  const week = 7 * 24 * 60;
  const input: ConfigInput = {
    approvals_dir: 'approvals',
    state_dir: 'state',
    ledger_schema: ledgerSchema,
    databases: { main_db: { client: 'pg', connection_env: DATABASE_URL_ENV } },
    environments: { production: { databases: ['main_db'] } },
    expiry_minutes: { critical: week, high: week, medium: week, low: week },
    // The agent's execute_migration call itself waits for the decision and the result; gate and
    // everything else keep their defaults (a 5 s safety-net recheck, file-system events).
    wait: { max_wait_seconds: maxWaitSeconds, progress_interval_seconds: 5 },
    ...overrides,
  };
  const configPath = path.join(dir, 'approval-gate.yaml');
  try {
    // Fail here, with the config's own message, rather than as a server that exits on start.
    parseConfig(input, dir, configPath);
    await writeFile(configPath, stringify(input));
    await mkdir(path.join(dir, 'approvals'));
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
  return { dir, configPath, approvalsDir: path.join(dir, 'approvals') };
}

/** A spawned process (server or bare baseline) with the SDK client connected to it. */
export interface Spawned {
  readonly client: Client;
  readonly pid: number;
  /** Spawn → the `initialize` result at the client (ms). */
  readonly initializeMs: number;
  /** The last lines the process wrote to stderr, for failures. */
  stderrTail(): string;
  close(): Promise<void>;
}

const STDERR_TAIL_CHARS = 4000;

/**
 * Spawns `node <args>` over stdio and connects the SDK client. The clock runs from just before the
 * spawn until `initialize` has been answered (connect() resolves right after the result).
 */
export async function spawnOverStdio(
  args: readonly string[],
  env: Record<string, string> = {},
  capabilities?: ClientCapabilities,
): Promise<Spawned> {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [...args],
    cwd: PROJECT_ROOT,
    env: { ...getDefaultEnvironment(), ...env },
    stderr: 'pipe',
  });
  let stderr = '';
  transport.stderr?.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString('utf8')).slice(-STDERR_TAIL_CHARS);
  });
  const client = new Client(
    { name: 'approval-gate-bench', version: '0.1.0' },
    capabilities ? { capabilities } : undefined,
  );
  const started = performance.now();
  try {
    await client.connect(transport);
  } catch (error) {
    await transport.close().catch(() => undefined);
    throw new Error(`the server did not start: ${String(error)}\n${stderr}`);
  }
  const initializeMs = performance.now() - started;
  const pid = transport.pid;
  if (pid === null) throw new Error('the spawned process has no pid');
  return { client, pid, initializeMs, stderrTail: () => stderr, close: () => client.close() };
}

/** The real server, built, in stdio mode on `workspace`; `capabilities`: what the client declares. */
export function spawnServer(
  build: Build,
  workspace: Workspace,
  databaseUrl: string,
  capabilities?: ClientCapabilities,
): Promise<Spawned> {
  return spawnOverStdio(
    [build.cli, 'serve', '--config', workspace.configPath],
    { [DATABASE_URL_ENV]: databaseUrl },
    capabilities,
  );
}

/**
 * New approval files as the server creates them, by a token the bench puts into each request's SQL:
 * the bench learns a request's file the way a human does, from the directory.
 */
export class RequestFiles {
  readonly #dir: string;
  readonly #watcher: FSWatcher;
  readonly #seen = new Set<string>();
  readonly #byToken = new Map<string, string>();
  readonly #waiting = new Map<string, (file: string | null) => void>();
  #scanning: Promise<void> | null = null;

  constructor(dir: string) {
    this.#dir = dir;
    this.#watcher = watch(dir, (_event, name) => {
      if (name !== null && /^APR-\d{8}-\d+\.md$/.test(name.toString())) void this.#look(name.toString());
    });
  }

  async #look(name: string): Promise<void> {
    if (this.#seen.has(name)) return;
    this.#seen.add(name);
    // The server creates the file in one step (link of a complete temp file): it is whole when seen.
    const text = await readFile(path.join(this.#dir, name), 'utf8').catch(() => '');
    const token = /bench_token_([a-z0-9_]+?)_end/.exec(text)?.[1];
    if (token === undefined) {
      this.#seen.delete(name);
      return;
    }
    const file = path.join(this.#dir, name);
    this.#byToken.set(token, file);
    this.#waiting.get(token)?.(file);
  }

  /** Looks at every file once more: a safety net in case an event was lost. */
  #scan(): Promise<void> {
    this.#scanning ??= readdir(this.#dir)
      .then((names) => Promise.all(names.filter((n) => n.startsWith('APR-')).map((n) => this.#look(n))))
      .then(() => undefined)
      .finally(() => {
        this.#scanning = null;
      });
    return this.#scanning;
  }

  /**
   * The file of the request whose SQL carries `token`, once the server has written it; null after
   * `deadlineMs` or once the token is forgotten.
   */
  fileOf(token: string, deadlineMs: number): Promise<string | null> {
    const known = this.#byToken.get(token);
    if (known !== undefined) return Promise.resolve(known);
    const started = performance.now();
    return new Promise<string | null>((resolve) => {
      const done = (file: string | null) => {
        clearInterval(rescan);
        this.#waiting.delete(token);
        resolve(file);
      };
      this.#waiting.set(token, done);
      const rescan = setInterval(() => {
        if (performance.now() - started > deadlineMs) done(null);
        else void this.#scan();
      }, 1000);
    });
  }

  /** Forget a token once its request is done (or failed), so the maps stay small. */
  forget(token: string): void {
    this.#byToken.delete(token);
    this.#waiting.get(token)?.(null);
  }

  close(): void {
    this.#watcher.close();
  }
}

/** SQL of a harmless migration carrying `token`, so its approval file can be found. */
export function migrationSql(schema: string, token: string): string {
  return `CREATE TABLE ${schema}.bench_token_${token}_end (id int);`;
}

/** The agent's request: the same for every migration the benches make. */
export function requestArgs(
  schema: string,
  token: string,
  environment = 'production',
): Record<string, unknown> {
  return {
    environment,
    database: 'main_db',
    sql: migrationSql(schema, token),
    title: `Bench: create ${token}`,
    reason: 'Performance benchmark: a tiny, harmless table, so execution itself takes almost no time.',
  };
}

/** A tool result or error, shortened for a failure line. */
function describe(value: unknown): string {
  if (value instanceof Error) return value.message;
  return JSON.stringify(value)?.slice(0, 500) ?? String(value);
}

export interface Decision {
  /** The editor's save (just before the write) → the final result at the client, ms. */
  readonly latencyMs: number | null;
  readonly failure: string | null;
}

/** How long a decision may take before it counts as failed, so a lost one cannot hang the bench. */
const DECISION_DEADLINE_MS = 30_000;

/**
 * One full decision as an agent and a human make it: the agent calls execute_migration and waits in
 * that call; the human finds the new approval file, saves APPROVED, and the clock runs from just
 * before the save's write until the call's result reaches the client. `beforeSave` runs after the
 * file has appeared (a floor sample, a pause): the human is not as fast as the server.
 */
export async function decide(
  server: Spawned,
  files: RequestFiles,
  schema: string,
  token: string,
  style: SaveStyle,
  beforeSave: () => Promise<void>,
): Promise<Decision> {
  const call = server.client
    .callTool({ name: 'execute_migration', arguments: requestArgs(schema, token) }, undefined, {
      timeout: DECISION_DEADLINE_MS + 5000,
    })
    .then((result) => ({ at: performance.now(), result }));
  // Not awaited yet: a refusal would return before any file appears.
  const early = call.then(
    () => null,
    () => null,
  );
  const file = await Promise.race([files.fileOf(token, DECISION_DEADLINE_MS), early]);
  files.forget(token);
  if (file === null) {
    const settled = await call.catch((error: unknown) => error);
    return { latencyMs: null, failure: `no approval file: ${describe(settled)}` };
  }
  const edited = updateFrontMatter(await readFile(file, 'utf8'), {
    status: 'APPROVED',
    decided_by: 'Bench Reviewer',
    gate_error: undefined,
  });
  await beforeSave();
  const savedAt = performance.now();
  await saveAs(file, edited, style);
  let settled: { at: number; result: Awaited<ReturnType<Client['callTool']>> };
  try {
    settled = await call;
  } catch (error) {
    return { latencyMs: null, failure: `execute_migration failed: ${String(error)}` };
  }
  // Validated, not cast: a changed result shape should stop the bench, not skew its numbers.
  const outcome = ToolOutcome.parse(settled.result.structuredContent);
  if (!outcome.final || outcome.execution !== 'succeeded') {
    return { latencyMs: null, failure: `${outcome.status}/${outcome.execution}: ${outcome.message}` };
  }
  return { latencyMs: settled.at - savedAt, failure: null };
}

/**
 * Makes a request and leaves it pending: the agent's call is cancelled once the approval file exists
 * (cancelling the call does not withdraw the request; only cancel_approval does).
 */
export async function requestAndLeavePending(
  server: Spawned,
  files: RequestFiles,
  schema: string,
  token: string,
): Promise<void> {
  const abort = new AbortController();
  const call = server.client
    .callTool({ name: 'execute_migration', arguments: requestArgs(schema, token) }, undefined, {
      signal: abort.signal,
      timeout: DECISION_DEADLINE_MS + 5000,
    })
    .catch((error: unknown) => error);
  const early = call.then(() => null);
  const file = await Promise.race([files.fileOf(token, DECISION_DEADLINE_MS), early]);
  files.forget(token);
  if (file === null) throw new Error(`request ${token} was not created: ${describe(await call)}`);
  abort.abort();
  await call;
}

/** Runs `work(i)` for i in [0, n) with at most `concurrency` at a time. */
export async function inParallel(
  n: number,
  concurrency: number,
  work: (i: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next;
      next += 1;
      await work(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, concurrency) }, worker));
}

/** A random pause, so that a save's phase against anything periodic in the server is uniform. */
export const humanPause = (minMs: number, maxMs: number): Promise<void> =>
  sleep(minMs + Math.random() * (maxMs - minMs));
