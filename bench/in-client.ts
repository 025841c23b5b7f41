/**
 * In-client approval against the file (`npm run bench:in-client`): how long from the human's decision
 * to the result at the agent's client, when the decision is the answer to the question the server
 * asks in the client (elicitation, approve_in_client) and when it is a save of the approval file.
 * The built server over stdio, one MCP SDK client that can show forms, the real Postgres; the two
 * paths interleaved, beside a floor measured in the same run (a transaction with the same small DDL).
 *
 *   npm run bench:in-client
 *   npm run bench:in-client -- --decisions 100
 *
 * The in-client clock runs from just before the client returns its answer; the file clock from just
 * before the editor's write. Both end when the execute_migration result reaches the client. No target:
 * the figures say what the in-client path costs or saves. Exit code: 0 when every decision ran, 1
 * otherwise, 2 for bad arguments.
 */
import { randomBytes } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { ElicitRequestSchema, type ElicitResult } from '@modelcontextprotocol/sdk/types.js';
import pg from 'pg';
import { updateFrontMatter } from '../src/approvals/frontmatter.js';
import { saveAs } from '../src/approvals/human-edit.js';
import { ToolOutcome } from '../src/server/outcome.js';
import { integerOption, loopbackDatabaseUrl, percentile, runMain, say, table } from './common.js';
import {
  buildServer,
  createWorkspace,
  humanPause,
  RequestFiles,
  requestArgs,
  spawnServer,
  type Build,
  type Spawned,
  type Workspace,
} from './harness.js';
import { TransactionFloor } from './latency.js';

const ENVIRONMENT = 'dev';
const REVIEWER = 'Bench Reviewer';
/** How long one decision may take before it counts as failed. */
const DECISION_DEADLINE_MS = 30_000;

type Path = 'client' | 'file';

function readOptions(): { decisions: number } {
  const { values } = parseArgs({ options: { decisions: { type: 'string' } }, strict: true });
  return {
    decisions: integerOption('decisions', values.decisions ?? process.env.BENCH_DECISIONS, 60, 10, 10_000),
  };
}

/**
 * The person at the client: for a request of the 'client' path, reads for a moment and approves (the
 * clock starts as the answer leaves); for the 'file' path, says "decide in the file".
 */
class Person {
  readonly #paths = new Map<string, Path>();
  readonly #answeredAt = new Map<string, number>();

  constructor(server: Spawned) {
    server.client.setRequestHandler(ElicitRequestSchema, async (request): Promise<ElicitResult> => {
      const token = /bench_token_([a-z0-9_]+?)_end/.exec(request.params.message)?.[1] ?? '';
      if (this.#paths.get(token) !== 'client')
        return { action: 'accept', content: { decision: 'decide_in_file' } };
      await humanPause(20, 60);
      this.#answeredAt.set(token, performance.now());
      return { action: 'accept', content: { decision: 'approve' } };
    });
  }

  expect(token: string, path: Path): void {
    this.#paths.set(token, path);
  }

  answeredAt(token: string): number | undefined {
    const at = this.#answeredAt.get(token);
    this.#paths.delete(token);
    this.#answeredAt.delete(token);
    return at;
  }
}

async function decideOnce(
  server: Spawned,
  files: RequestFiles,
  person: Person,
  schema: string,
  token: string,
  path: Path,
): Promise<{ latencyMs: number | null; failure: string | null }> {
  person.expect(token, path);
  const call = server.client
    .callTool({ name: 'execute_migration', arguments: requestArgs(schema, token, ENVIRONMENT) }, undefined, {
      timeout: DECISION_DEADLINE_MS,
    })
    .then((result) => ({ at: performance.now(), result }));
  let startedAt: number | undefined;
  if (path === 'file') {
    const file = await files.fileOf(token, DECISION_DEADLINE_MS);
    files.forget(token);
    if (file === null) return { latencyMs: null, failure: `${token}: no approval file` };
    await humanPause(20, 60);
    const edited = updateFrontMatter(await readFile(file, 'utf8'), {
      status: 'APPROVED',
      decided_by: REVIEWER,
      gate_error: undefined,
    });
    startedAt = performance.now();
    await saveAs(file, edited, 'rename');
  }
  let settled: Awaited<typeof call>;
  try {
    settled = await call;
  } catch (error) {
    return { latencyMs: null, failure: `${token}: execute_migration failed: ${String(error)}` };
  }
  if (path === 'client') {
    files.forget(token);
    startedAt = person.answeredAt(token);
  }
  const outcome = ToolOutcome.parse(settled.result.structuredContent);
  if (!outcome.final || outcome.execution !== 'succeeded' || startedAt === undefined) {
    return {
      latencyMs: null,
      failure: `${token}: ${outcome.status}/${outcome.execution}: ${outcome.message}`,
    };
  }
  return { latencyMs: settled.at - startedAt, failure: null };
}

async function main(): Promise<number> {
  const { decisions } = readOptions();
  const databaseUrl = loopbackDatabaseUrl().href;
  const suffix = randomBytes(4).toString('hex');
  const schema = `bench_in_client_${suffix}`;
  const ledger = `${schema}_ledger`;
  say('approval-gate: the decision answered in the client against the file, the built server over stdio');
  say(`node ${process.version}; ${decisions} decisions each way, interleaved; real Postgres`);
  const admin = new pg.Client({ connectionString: databaseUrl });
  await admin.connect();
  await admin.query(`CREATE SCHEMA ${schema}`);
  let build: Build | null = null;
  let workspace: Workspace | null = null;
  let server: Spawned | null = null;
  let files: RequestFiles | null = null;
  let floor: TransactionFloor | null = null;
  try {
    build = await buildServer();
    workspace = await createWorkspace(ledger, DECISION_DEADLINE_MS / 1000, {
      local_user: REVIEWER,
      environments: { [ENVIRONMENT]: { databases: ['main_db'], approve_in_client: true } },
    });
    server = await spawnServer(build, workspace, databaseUrl, { elicitation: { form: {} } });
    files = new RequestFiles(workspace.approvalsDir);
    floor = await TransactionFloor.open(databaseUrl, schema);
    const person = new Person(server);
    const latencies: Record<Path, number[]> = { client: [], file: [] };
    const floorSamples: number[] = [];
    const failures: string[] = [];
    // One of each first, not counted: the first decision pays for lazy loading.
    for (let i = -1; i < decisions; i += 1) {
      const order: Path[] = i % 2 === 0 ? ['client', 'file'] : ['file', 'client'];
      for (const path of order) {
        floorSamples.push(await floor.sample());
        const token = `${suffix}_${i + 1}_${path}`;
        const { latencyMs, failure } = await decideOnce(server, files, person, schema, token, path);
        if (failure !== null) failures.push(failure);
        else if (latencyMs !== null && i >= 0) latencies[path].push(latencyMs);
      }
    }
    const sorted = (values: readonly number[]) => [...values].sort((a, b) => a - b);
    const ms = (value: number) => (Number.isNaN(value) ? '-' : `${value.toFixed(1)} ms`);
    const floorP50 = percentile(sorted(floorSamples), 50);
    const row = (label: string, values: readonly number[]) => {
      const p50 = percentile(sorted(values), 50);
      return [
        label,
        String(values.length),
        ms(p50),
        ms(percentile(sorted(values), 99)),
        `${(p50 / floorP50).toFixed(2)}×`,
      ];
    };
    say();
    for (const line of table(
      [
        ['path', 'n', 'p50', 'p99', 'p50 / floor'],
        row('answer in the client → result', latencies.client),
        row('save of the file → result', latencies.file),
        row('floor: BEGIN; DDL; INSERT; COMMIT', floorSamples),
      ],
      new Set([1, 2, 3, 4]),
    )) {
      say(line);
    }
    const ratio =
      percentile(sorted(latencies.client), 50) /
      Math.max(percentile(sorted(latencies.file), 50), Number.EPSILON);
    say();
    say(`In the client / in the file, p50: ${ratio.toFixed(2)}×. Percentiles are nearest-rank.`);
    for (const failure of failures) say(`  FAILED ${failure}`);
    if (failures.length > 0) say(`stderr of the server:\n${server.stderrTail()}`);
    return failures.length === 0 ? 0 : 1;
  } finally {
    files?.close();
    await floor?.close();
    await server?.close().catch(() => undefined);
    if (workspace) await rm(workspace.dir, { recursive: true, force: true });
    await build?.remove();
    await admin.query(`DROP SCHEMA IF EXISTS ${schema}, ${ledger}, ${ledger}_backup CASCADE`);
    await admin.end();
  }
}

runMain('bench:in-client', main);
