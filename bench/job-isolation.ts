/**
 * Per-job isolation: what the executor's clean session per job costs, as ratios against floors
 * measured in the same run on the same Postgres.
 *
 * One small transactional migration (K−1 INSERTs and an UPDATE by primary key) runs as N jobs in
 * three configurations, interleaved round-robin so that noise on the machine hits all of them alike:
 *
 *   raw         BEGIN; the K statements; COMMIT — on one plain pg.Client, simple protocol
 *   raw+ledger  the same plus pg_advisory_xact_lock and one INSERT into a ledger-shaped table
 *   executor    Executor.run(job) on the gate's pg.Pool: DISCARD ALL before and after, lexer settings set
 *               and checked, the watched settings read after every statement, savepoint, ledger
 *
 *   npm run bench:jobs
 *   npm run bench:jobs -- --jobs 1000 --statements 10
 *   BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test npm run bench:jobs
 *
 * Creates and drops the schemas bench_jobs_<random> and bench_jobs_<random>_ledger.
 * Exit code: 0 when every executor job succeeded, 1 when one did not (or the bench could not run),
 * 2 for bad arguments, 130 when interrupted.
 */
import { randomBytes } from 'node:crypto';
import { availableParallelism, loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { openPgDatabase } from '../src/db/index.js';
import { analyseSql } from '../src/migration/analyse.js';
import { ADVISORY_LOCK_NAMESPACE, advisoryLockKey } from '../src/migration/advisory-locks.js';
import { Executor } from '../src/migration/execute.js';
import { integerOption, loopbackDatabaseUrl, percentile, runMain, say, table, UsageError } from './common.js';

/** The real server on this machine, as in the tests. */
/** Jobs per configuration run first and not counted: connections, plans and caches warm up. */
const WARM_UP = 10;
const CONFIGURATIONS = ['raw', 'raw+ledger', 'executor'] as const;
type Configuration = (typeof CONFIGURATIONS)[number];

interface Options {
  readonly jobs: number;
  readonly statements: number;
  readonly databaseUrl: URL;
}

function readOptions(): Options {
  let values: { jobs?: string | undefined; statements?: string | undefined };
  try {
    ({ values } = parseArgs({
      options: { jobs: { type: 'string' }, statements: { type: 'string' } },
      strict: true,
    }));
  } catch (error) {
    // Unknown option, missing value: a usage error (exit 2), not a crash.
    throw new UsageError(error instanceof Error ? error.message : String(error));
  }
  const env = process.env;
  const databaseUrl = loopbackDatabaseUrl(env);
  return {
    // Approval ids have 6 digits, and every job of the run needs its own.
    jobs: integerOption('jobs', values.jobs ?? env.BENCH_JOBS, 200, 1, 100_000),
    statements: integerOption('statements', values.statements ?? env.BENCH_STATEMENTS, 5, 1, 100),
    databaseUrl,
  };
}

/**
 * Counts the queries every pg.Client sends (the executor's pool connections use the same class), so the
 * report can show how many round trips a job costs in each configuration. One increment per query.
 */
let queriesSent = 0;
function countQueries(): () => void {
  const prototype = pg.Client.prototype as unknown as { query: (...args: unknown[]) => unknown };
  const original = prototype.query;
  prototype.query = function (this: unknown, ...args: unknown[]): unknown {
    queriesSent += 1;
    return Reflect.apply(original, this, args);
  };
  return () => {
    prototype.query = original;
  };
}

/** The migration: K−1 INSERTs and one UPDATE by primary key, each its own statement. */
function migrationSql(table: string, statements: number): string[] {
  const sql: string[] = [];
  for (let i = 1; i < statements; i += 1) sql.push(`INSERT INTO ${table} (n) VALUES (${i});`);
  sql.push(`UPDATE ${table} SET n = n + 1 WHERE id = 1;`);
  return sql;
}

const quote = (text: string) => `'${text.replaceAll("'", "''")}'`;

interface Sample {
  readonly ms: number[];
  readonly queries: number[];
}

interface Row {
  readonly name: Configuration;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly mean: number;
  readonly queries: number;
}

function summarise(name: Configuration, sample: Sample): Row {
  const sorted = [...sample.ms].sort((a, b) => a - b);
  const mean = sorted.reduce((a, b) => a + b, 0) / sorted.length;
  const queries = [...sample.queries].sort((a, b) => a - b);
  return {
    name,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    mean,
    queries: percentile(queries, 50),
  };
}

function median(values: readonly number[]): number {
  return percentile(
    [...values].sort((a, b) => a - b),
    50,
  );
}

const ms = (value: number) => (Number.isNaN(value) ? '-' : value.toFixed(3));
const ratio = (value: number) => (Number.isFinite(value) ? `${value.toFixed(2)}×` : '-');

/** 1-minute load average against CPUs: a busy machine inflates every latency here. */
function machineLoad(): string {
  const [load] = loadavg();
  const cpus = availableParallelism();
  const busy = (load ?? 0) > cpus ? ' — busier than its CPUs: latencies are inflated' : '';
  return `load average ${(load ?? 0).toFixed(1)} on ${cpus} CPUs${busy}`;
}

async function main(): Promise<number> {
  const options = readOptions();
  const started = performance.now();
  let interrupted = false;
  const stop = () => {
    interrupted = true;
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);

  const runId = randomBytes(4).toString('hex');
  const schema = `bench_jobs_${runId}`;
  const ledgerSchema = `${schema}_ledger`;
  const target = `"${schema}".t`;
  const rawLedger = `"${schema}".ledger`;
  const url = options.databaseUrl;
  const appName = `bench_jobs_${runId}`;

  const database = openPgDatabase('bench', url.href, { applicationName: appName });
  const raw = new pg.Client({ connectionString: url.href, application_name: `${appName}_raw` });
  const restoreQuery = countQueries();
  let created = false;
  try {
    await raw.connect();
    const { rows: version } = await raw.query<{ v: string }>("select current_setting('server_version') as v");
    say('approval-gate per-job isolation: executor jobs against raw floors, real Postgres');
    say(
      `Postgres ${version[0]?.v ?? '?'} at ${url.hostname}:${url.port || '5432'}; node ${process.version}; ` +
        `${options.jobs} jobs per configuration (+ ${WARM_UP} warm-up, not counted), ` +
        `${options.statements} statement${options.statements === 1 ? '' : 's'} per job; ${machineLoad()}`,
    );

    created = true;
    await raw.query(`create schema "${schema}"`);
    await raw.query(`create table ${target} (id bigserial primary key, n integer not null)`);
    // The UPDATE's row: every job, in every configuration, finds exactly one.
    await raw.query(`insert into ${target} (n) values (0)`);
    // Shaped like the gate's ledger (migrations/), so the floor's INSERT costs what the executor's does.
    await raw.query(
      `create table ${rawLedger} (approval_id text primary key, request_hash text not null,
         state text not null, dry_run boolean not null, transactional boolean not null default true,
         attempts integer not null default 1, started_at timestamptz not null, finished_at timestamptz not null,
         duration_ms integer not null, rows_affected bigint, statements jsonb not null, error jsonb,
         executed_by text not null, rollback_rehearsal jsonb, backup jsonb)`,
    );

    const statementsSql = migrationSql(target, options.statements);
    const sql = `${statementsSql.join('\n')}\n`;
    // The gate analyses SQL when the request is made, long before execution: not part of the timing.
    const { statements } = await analyseSql(sql);
    if (statements.length !== options.statements) {
      throw new Error(`analyseSql found ${statements.length} statements, not ${options.statements}.`);
    }
    const executor = new Executor(database, {
      ledgerSchema,
      lockTimeoutMs: 2000,
      statementTimeoutMs: 60_000,
    });
    // One-time creation of the ledger tables: the server does it at start, not per job.
    await executor.prepare();

    let serial = 0;
    const nextId = () => {
      serial += 1;
      return `APR-20260101-${String(serial).padStart(6, '0')}`;
    };
    /** Executor jobs that did not end `succeeded`, and the end-of-run consistency check's finding. */
    const failures: string[] = [];
    const problems: string[] = [];

    const jobs: Record<Configuration, () => Promise<void>> = {
      raw: async () => {
        await raw.query('begin');
        for (const statement of statementsSql) await raw.query(statement);
        await raw.query('commit');
      },
      'raw+ledger': async () => {
        const id = nextId();
        const startedAt = new Date().toISOString();
        await raw.query('begin');
        await raw.query(
          `select pg_catalog.pg_advisory_xact_lock(${ADVISORY_LOCK_NAMESPACE}, ${advisoryLockKey(id)})`,
        );
        const outcomes: { statement: number; kind: string; rows_affected: number | null }[] = [];
        for (const [index, statement] of statementsSql.entries()) {
          const { rowCount } = await raw.query(statement);
          outcomes.push({
            statement: index + 1,
            kind: statements[index]?.kind ?? '',
            rows_affected: rowCount,
          });
        }
        const rows = outcomes.reduce((sum, o) => sum + (o.rows_affected ?? 0), 0);
        await raw.query(
          `insert into ${rawLedger} (approval_id, request_hash, state, dry_run, transactional, attempts,
             started_at, finished_at, duration_ms, rows_affected, statements, error, executed_by)
           values (${quote(id)}, ${quote(`sha256:bench-${id}`)}, 'succeeded', false, true, 1,
             ${quote(startedAt)}, ${quote(new Date().toISOString())}, 0, ${rows},
             ${quote(JSON.stringify(outcomes))}, null, ${quote(appName)})`,
        );
        await raw.query('commit');
      },
      executor: async () => {
        const id = nextId();
        const { result } = await executor.run({
          approvalId: id,
          requestHash: `sha256:bench-${id}`,
          sql,
          statements,
          dryRun: false,
        });
        if (result.state !== 'succeeded') {
          failures.push(`executor job ${id} ended ${result.state}: ${result.error?.message ?? '(no error)'}`);
        }
      },
    };

    const samples: Record<Configuration, Sample> = {
      raw: { ms: [], queries: [] },
      'raw+ledger': { ms: [], queries: [] },
      executor: { ms: [], queries: [] },
    };
    /** Per round, executor time over each floor's: back to back, so the machine's drift cancels. */
    const paired = { raw: [] as number[], ledger: [] as number[] };
    for (let round = 0; round < WARM_UP + options.jobs && !interrupted; round += 1) {
      const times = new Map<Configuration, number>();
      // Round-robin, and the starting configuration rotates, so none is always first after a pause.
      for (let k = 0; k < CONFIGURATIONS.length; k += 1) {
        const name = CONFIGURATIONS[(round + k) % CONFIGURATIONS.length] as Configuration;
        const before = queriesSent;
        const start = performance.now();
        await jobs[name]();
        const elapsed = performance.now() - start;
        times.set(name, elapsed);
        if (round >= WARM_UP) {
          samples[name].ms.push(elapsed);
          samples[name].queries.push(queriesSent - before);
        }
      }
      if (round >= WARM_UP) {
        const executorMs = times.get('executor') ?? Number.NaN;
        paired.raw.push(executorMs / (times.get('raw') ?? Number.NaN));
        paired.ledger.push(executorMs / (times.get('raw+ledger') ?? Number.NaN));
      }
    }
    if (interrupted) {
      process.stderr.write('job-isolation: interrupted; cleaning up\n');
      return 130;
    }

    // The executor really ran every job once, and committed it: its ledger and the table agree.
    const total = WARM_UP + options.jobs;
    const { rows: check } = await raw.query<{ ledger: number; succeeded: number; rows: number }>(
      `select (select count(*)::int from "${ledgerSchema}".ledger) as ledger,
              (select count(*)::int from "${ledgerSchema}".ledger where state = 'succeeded') as succeeded,
              (select count(*)::int from ${target}) as rows`,
    );
    const expectedRows = 1 + CONFIGURATIONS.length * total * (options.statements - 1);
    const counted = check[0];
    if (
      !counted ||
      counted.ledger !== total ||
      counted.succeeded !== total ||
      counted.rows !== expectedRows
    ) {
      problems.push(
        `ledger holds ${counted?.succeeded ?? '?'} succeeded of ${counted?.ledger ?? '?'} rows (expected ${total}); ` +
          `table holds ${counted?.rows ?? '?'} rows (expected ${expectedRows})`,
      );
    }

    const rows = CONFIGURATIONS.map((name) => summarise(name, samples[name]));
    const [rawRow, ledgerRow, executorRow] = rows as [Row, Row, Row];
    say();
    const lines: string[][] = [['configuration', 'queries/job', 'p50 ms', 'p90 ms', 'p99 ms', 'mean ms']];
    for (const r of rows) {
      lines.push([r.name, String(r.queries), ms(r.p50), ms(r.p90), ms(r.p99), ms(r.mean)]);
    }
    for (const line of table(lines, new Set([1, 2, 3, 4, 5]))) say(line);
    say();
    const ratioLines: string[][] = [['executor /', 'p50', 'mean', 'median of per-round ratios']];
    ratioLines.push([
      'raw',
      ratio(executorRow.p50 / rawRow.p50),
      ratio(executorRow.mean / rawRow.mean),
      ratio(median(paired.raw)),
    ]);
    ratioLines.push([
      'raw+ledger',
      ratio(executorRow.p50 / ledgerRow.p50),
      ratio(executorRow.mean / ledgerRow.mean),
      ratio(median(paired.ledger)),
    ]);
    for (const line of table(ratioLines, new Set([1, 2, 3]))) say(line);
    const extraQueries = executorRow.queries - ledgerRow.queries;
    if (extraQueries > 0) {
      say(
        `Isolation and the executor's other bookkeeping: ${extraQueries} more queries per job than raw+ledger, ` +
          `${ms((executorRow.p50 - ledgerRow.p50) / extraQueries)} ms each at p50 ` +
          `(one query on raw: ${ms(rawRow.p50 / rawRow.queries)} ms).`,
      );
    }
    say(
      `${options.jobs} jobs per configuration, percentiles nearest-rank. The executor sends every query ` +
        `with the extended protocol, the floors with the simple one.`,
    );
    say();
    for (const failure of failures.slice(0, 10)) say(`FAILED ${failure}`);
    if (failures.length > 10) say(`FAILED … and ${failures.length - 10} more executor jobs`);
    for (const problem of problems) say(`FAILED ${problem}`);
    say(
      `${failures.length === 0 ? 'PASS' : 'FAIL'}  every executor job succeeded` +
        ` (${total - failures.length} of ${total}, warm-up included)`,
    );
    say(
      `${problems.length === 0 ? 'PASS' : 'FAIL'}  the executor's ledger and the table hold what the jobs wrote`,
    );
    say(
      `Total wall time ${((performance.now() - started) / 1000).toFixed(1)} s; at the end ${machineLoad()}`,
    );
    return failures.length === 0 && problems.length === 0 ? 0 : 1;
  } finally {
    restoreQuery();
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    if (created) {
      const drop = `drop schema if exists "${schema}" cascade; drop schema if exists "${ledgerSchema}" cascade`;
      // A job that failed mid-transaction leaves the raw connection's transaction aborted.
      await raw.query('rollback').catch(() => undefined);
      await raw.query(drop).catch(async () => {
        // The raw connection may be what failed: try once more on the pool.
        // One statement per query there: the gate's sessions use the extended protocol.
        await database
          .withClient(async (session) => {
            await session.query(`drop schema if exists "${schema}" cascade`);
            await session.query(`drop schema if exists "${ledgerSchema}" cascade`);
          })
          .catch(() => {
            process.stderr.write(
              `job-isolation: cleanup failed; drop schemas ${schema}, ${ledgerSchema} by hand\n`,
            );
          });
      });
    }
    await raw.end().catch(() => undefined);
    await database.close();
  }
}

runMain('job-isolation', main);
