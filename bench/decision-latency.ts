/**
 * Decision latency: how long from the moment a human saves APPROVED in an approval file until the
 * executor starts the migration. Measured end to end through the real server (spawned over stdio,
 * driven by the MCP SDK client, PGlite database), for both ways editors save a file, and against a
 * polling-only gate, which stands in for the reference format's "Agent checks every 30 seconds".
 *
 *   npm run bench:embedded
 *   npm run bench:embedded -- --decisions 100 --poll-decisions 20 --poll-interval-ms 500
 *   BENCH_DECISIONS=100 BENCH_POLL_DECISIONS=20 BENCH_POLL_INTERVAL_MS=500 npm run bench:embedded
 *
 * Exit code: 0 when every decision executed successfully, 1 otherwise, 2 for bad arguments.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport, getDefaultEnvironment } from '@modelcontextprotocol/sdk/client/stdio.js';
import { stringify } from 'yaml';
import { decideInFile, type SaveStyle } from '../src/approvals/human-edit.js';
import { parseConfig, type ConfigInput } from '../src/config.js';
import { seedCustomers } from '../src/demo.js';
import { stdioServerCommand } from '../src/server/launch.js';
import { ToolOutcome } from '../src/server/outcome.js';
import { integerOption, percentile, runMain, say, sleep } from './common.js';

/** Below this, p99 of a sample is little more than its single worst value. */
const MIN_DECISIONS = 50;
/** The reference approval format: "Agent checks every 30 seconds". */
const REFERENCE_POLL_MS = 30_000;
/** Our target for the watcher gate. */
const TARGET_P50_MS = 50;
/** How long one decision may take before it counts as failed, so a lost decision cannot hang the bench. */
const DECISION_DEADLINE_MS = 30_000;

interface Options {
  readonly decisions: number;
  readonly pollDecisions: number;
  readonly pollIntervalMs: number;
}

function readOptions(): Options {
  const { values } = parseArgs({
    options: {
      decisions: { type: 'string' },
      'poll-decisions': { type: 'string' },
      'poll-interval-ms': { type: 'string' },
    },
    strict: true,
  });
  const env = process.env;
  return {
    decisions: integerOption('decisions', values.decisions ?? env.BENCH_DECISIONS, 60, MIN_DECISIONS, 10_000),
    pollDecisions: integerOption(
      'poll-decisions',
      values['poll-decisions'] ?? env.BENCH_POLL_DECISIONS,
      15,
      1,
      1000,
    ),
    // The config accepts 100 ms … 600 s for recheck_interval_ms.
    pollIntervalMs: integerOption(
      'poll-interval-ms',
      values['poll-interval-ms'] ?? env.BENCH_POLL_INTERVAL_MS,
      1000,
      100,
      10_000,
    ),
  };
}

interface Workspace {
  readonly dir: string;
  readonly configPath: string;
}

async function createWorkspace(gate: NonNullable<ConfigInput['gate']>): Promise<Workspace> {
  const dir = await mkdtemp(path.join(tmpdir(), 'approval-gate-bench-'));
  const week = 7 * 24 * 60;
  const input: ConfigInput = {
    approvals_dir: 'approvals',
    state_dir: 'state',
    databases: { main_db: { client: 'pglite', path: 'pgdata' } },
    environments: { production: { databases: ['main_db'] } },
    // No request may expire during the run.
    expiry_minutes: { critical: week, high: week, medium: week, low: week },
    // execute_migration returns PENDING after 0.2 s instead of holding the call for the usual bound,
    // so the bench can save the decision right after; await_approval then polls in 0.2 s calls.
    wait: { max_wait_seconds: 0.2, progress_interval_seconds: 0.2 },
    gate,
  };
  const configPath = path.join(dir, 'approval-gate.yaml');
  try {
    // Fail here, with the config's own message, rather than as a server that exits on start.
    parseConfig(input, dir, configPath);
    await writeFile(configPath, stringify(input));
    // The demo's customers table: the migrations below run next to real data, not in an empty database.
    await seedCustomers(path.join(dir, 'pgdata'));
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
  return { dir, configPath };
}

interface Server {
  call(name: 'execute_migration' | 'await_approval', args: Record<string, unknown>): Promise<ToolOutcome>;
  close(): Promise<void>;
}

async function startServer(configPath: string): Promise<Server> {
  const { command, args, cwd } = stdioServerCommand(configPath);
  // The server logs every decision to stderr; the bench's output is stdout only.
  const transport = new StdioClientTransport({
    command,
    args,
    cwd,
    env: getDefaultEnvironment(),
    stderr: 'ignore',
  });
  const client = new Client({ name: 'approval-gate-bench', version: '0.1.0' });
  await client.connect(transport);
  return {
    async call(name, callArgs) {
      const result = await client.callTool({ name, arguments: callArgs });
      // Validated, not cast: a changed result shape should stop the bench, not skew its numbers.
      return ToolOutcome.parse(result.structuredContent);
    },
    close: () => client.close(),
  };
}

interface Sample {
  readonly id: string;
  readonly style: SaveStyle;
  /** Save (t0) → the executor's started_at; null when the decision did not execute successfully. */
  readonly latencyMs: number | null;
  readonly failure: string | null;
}

/**
 * One full decision: the agent requests, the human saves APPROVED, the agent awaits the result.
 * `saveDelayMs` postpones the save, so that its phase against a polling timer is random.
 */
async function decide(server: Server, table: string, style: SaveStyle, saveDelayMs: number): Promise<Sample> {
  const requested = await server.call('execute_migration', {
    environment: 'production',
    database: 'main_db',
    sql: `CREATE TABLE ${table} (id int);`,
    title: `Bench: create ${table}`,
    reason: 'Decision-latency benchmark: a tiny, harmless table so execution itself takes almost no time.',
  });
  const id = requested.approval_id;
  if (requested.status !== 'PENDING' || id === null || requested.file === null) {
    return { id: id ?? '(none)', style, latencyMs: null, failure: `not PENDING: ${requested.message}` };
  }
  if (saveDelayMs > 0) await sleep(saveDelayMs);

  const t0 = Date.now();
  await decideInFile(requested.file, { status: 'APPROVED', decidedBy: 'Bench Reviewer' }, style);

  let outcome = await server.call('await_approval', { id });
  while (!outcome.final && Date.now() - t0 < DECISION_DEADLINE_MS) {
    outcome = await server.call('await_approval', { id });
  }
  if (!outcome.final)
    return { id, style, latencyMs: null, failure: `not final after ${DECISION_DEADLINE_MS} ms` };
  if (outcome.execution !== 'succeeded' || outcome.result === null) {
    return {
      id,
      style,
      latencyMs: null,
      failure: `${outcome.status}/${outcome.execution}: ${outcome.message}`,
    };
  }
  // started_at is the executor's own clock reading (same machine, ms precision), taken after the
  // decision is recorded and the transaction has begun: the moment the SQL is about to run.
  return { id, style, latencyMs: Date.parse(outcome.result.started_at) - t0, failure: null };
}

interface Run {
  readonly styles: readonly SaveStyle[];
  readonly decisions: number;
  readonly gate: NonNullable<ConfigInput['gate']>;
  /** Upper bound of the random delay before each save (0: save at once). */
  readonly saveJitterMs: number;
}

interface RunResult {
  readonly samples: Sample[];
  readonly warmUpMs: number | null;
}

/** One workspace and one server; `decisions` per style, styles interleaved so drift hits each alike. */
async function runGate(run: Run): Promise<RunResult> {
  const workspace = await createWorkspace(run.gate);
  let server: Server | null = null;
  try {
    server = await startServer(workspace.configPath);
    const prefix = run.gate.watch_files === false ? 'bench_poll' : 'bench_watch';
    // The first decision pays for lazy loading and JIT in the server; it is reported, not counted.
    const warmUp = await decide(server, `${prefix}_warmup`, run.styles[0] ?? 'rename', 0);
    const samples: Sample[] = [];
    for (let i = 0; i < run.decisions; i += 1) {
      for (const style of run.styles) {
        const table = `${prefix}_${style.replace('-', '_')}_${i}`;
        samples.push(await decide(server, table, style, Math.random() * run.saveJitterMs));
      }
    }
    return { samples, warmUpMs: warmUp.latencyMs };
  } finally {
    await server?.close();
    await rm(workspace.dir, { recursive: true, force: true });
  }
}

interface Stats {
  readonly n: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly max: number;
}

function statsOf(samples: readonly Sample[]): Stats | null {
  const sorted = samples
    .map((s) => s.latencyMs)
    .filter((ms): ms is number => ms !== null)
    .sort((a, b) => a - b);
  if (sorted.length === 0) return null;
  return {
    n: sorted.length,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: percentile(sorted, 100),
  };
}

/**
 * Standard deviation of the nearest-rank median of n uniform(0, 1) phases (the k-th order statistic
 * is Beta(k, n + 1 - k)): how far measured p50 / P may stray from 0.5 by chance alone.
 */
function medianSpread(n: number): number {
  const k = Math.ceil(n / 2);
  return Math.sqrt((k * (n + 1 - k)) / ((n + 1) ** 2 * (n + 2)));
}

const ms = (value: number) => `${Math.round(value).toLocaleString('en-US')} ms`;

/** "1/1250 (0.0008×)": how our latency compares with the baseline's. */
function ratio(ours: number, baseline: number): string {
  if (ours <= 0) return `< 1/${Math.round(baseline).toLocaleString('en-US')}`;
  const factor = ours / baseline;
  return `1/${Math.round(baseline / ours).toLocaleString('en-US')} (${Number(factor.toPrecision(2))}×)`;
}

function table(rows: readonly (readonly string[])[]): string[] {
  const widths =
    rows[0]?.map((_, column) => Math.max(...rows.map((row) => (row[column] ?? '').length))) ?? [];
  // Text left, numbers right: the first two columns are labels.
  return rows.map((row) =>
    row
      .map((cell, column) =>
        column < 2 ? cell.padEnd(widths[column] ?? 0) : cell.padStart(widths[column] ?? 0),
      )
      .join('  ')
      .trimEnd(),
  );
}

async function main(): Promise<number> {
  const options = readOptions();
  const styles: readonly SaveStyle[] = ['in-place', 'rename'];
  const P = options.pollIntervalMs;

  say('approval-gate decision latency: human saves APPROVED → executor starts the SQL');
  say(
    `node ${process.version} ${process.platform}/${process.arch}; real server over stdio (MCP SDK client), ` +
      `PGlite; ${options.decisions} decisions per save style, interleaved; ${options.pollDecisions} polling decisions`,
  );
  say();

  const started = Date.now();
  // Run one after the other, never together: two servers would compete for the CPU.
  const watched = await runGate({
    styles,
    decisions: options.decisions,
    gate: { watch_files: true, recheck_interval_ms: 5000 },
    saveJitterMs: 0,
  });
  // A human's save is not synchronised with the poll timer: a random delay of up to one interval
  // spreads the saves uniformly over its phase, as the P/2 expectation assumes.
  const polled = await runGate({
    styles: ['rename'],
    decisions: options.pollDecisions,
    gate: { watch_files: false, recheck_interval_ms: P },
    saveJitterMs: P,
  });

  const byStyle = styles.map((style) => ({
    style,
    stats: statsOf(watched.samples.filter((s) => s.style === style)),
  }));
  const pollStats = statsOf(polled.samples);
  const failures = [...watched.samples, ...polled.samples].filter((s) => s.failure !== null);

  const rows: string[][] = [['gate', 'save style', 'n', 'p50', 'p90', 'p99', 'max']];
  for (const { style, stats } of byStyle) {
    rows.push(
      stats
        ? [
            'fs events (watcher)',
            style,
            String(stats.n),
            ms(stats.p50),
            ms(stats.p90),
            ms(stats.p99),
            ms(stats.max),
          ]
        : ['fs events (watcher)', style, '0', '-', '-', '-', '-'],
    );
  }
  rows.push(
    pollStats
      ? [
          `polling only, every ${ms(P)}`,
          'rename',
          String(pollStats.n),
          ms(pollStats.p50),
          ms(pollStats.p90),
          ms(pollStats.p99),
          ms(pollStats.max),
        ]
      : [`polling only, every ${ms(P)}`, 'rename', '0', '-', '-', '-', '-'],
  );
  for (const line of table(rows)) say(line);
  say(
    `Percentiles are nearest-rank; with fewer than 100 decisions p99 is the slowest one. ` +
      `Warm-up decisions (excluded): watcher ${watched.warmUpMs === null ? 'failed' : ms(watched.warmUpMs)}, ` +
      `polling ${polled.warmUpMs === null ? 'failed' : ms(polled.warmUpMs)}.`,
  );
  for (const { style } of byStyle) {
    const slowest = watched.samples
      .filter((s) => s.style === style && s.latencyMs !== null)
      .sort((a, b) => (b.latencyMs ?? 0) - (a.latencyMs ?? 0))
      .slice(0, 3)
      .map((s) => `${s.id} ${ms(s.latencyMs ?? 0)}`);
    say(`Slowest ${style}: ${slowest.join(', ')}`);
  }
  say();

  if (pollStats) {
    const p50Ratio = pollStats.p50 / P;
    const p99Ratio = pollStats.p99 / P;
    say(
      `Polling check: measured p50 / P = ${ms(pollStats.p50)} / ${ms(P)} = ${p50Ratio.toFixed(2)} ` +
        `(uniform save phase predicts 0.50 ± ${medianSpread(pollStats.n).toFixed(2)}, 1 s.d. for n = ${pollStats.n})`,
    );
    say();
    const baselineP50 = p50Ratio * REFERENCE_POLL_MS;
    const baselineP99 = p99Ratio * REFERENCE_POLL_MS;
    say(`Baseline: the reference format's "Agent checks every 30 seconds"`);
    say(
      `  expected with a uniform save phase: p50 ${ms(REFERENCE_POLL_MS * 0.5)}, p99 ${ms(REFERENCE_POLL_MS * 0.99)}`,
    );
    say(
      `  estimated from the polling run (measured ratio × ${ms(REFERENCE_POLL_MS)}): ` +
        `p50 ${p50Ratio.toFixed(3)} × 30,000 = ${ms(baselineP50)}, p99 ${p99Ratio.toFixed(3)} × 30,000 = ${ms(baselineP99)}`,
    );
    for (const { style, stats } of byStyle) {
      if (!stats) continue;
      say(
        `  ${style.padEnd(8)}  p50 ${ms(stats.p50)} vs ${ms(baselineP50)}: ${ratio(stats.p50, baselineP50)}; ` +
          `p99 ${ms(stats.p99)} vs ${ms(baselineP99)}: ${ratio(stats.p99, baselineP99)}`,
      );
    }
    say();
  }

  const verdicts = byStyle.map(({ style, stats }) => ({
    style,
    stats,
    met: stats !== null && stats.p50 < TARGET_P50_MS,
  }));
  say(
    `Target p50 < ${ms(TARGET_P50_MS)}: ` +
      verdicts
        .map((v) => `${v.style} ${v.stats ? ms(v.stats.p50) : 'no data'} ${v.met ? 'met' : 'NOT met'}`)
        .join('; ') +
      ` → ${verdicts.every((v) => v.met) ? 'MET for both styles' : 'NOT MET'}`,
  );

  const total = watched.samples.length + polled.samples.length;
  say(
    `Decisions executed successfully: ${total - failures.length}/${total} (plus 2 warm-ups); ` +
      `wall time ${((Date.now() - started) / 1000).toFixed(1)} s`,
  );
  for (const failure of failures) say(`  FAILED ${failure.id} (${failure.style}): ${failure.failure ?? ''}`);
  const warmUpsOk = watched.warmUpMs !== null && polled.warmUpMs !== null;
  return failures.length === 0 && warmUpsOk ? 0 : 1;
}

runMain('decision-latency', main);
