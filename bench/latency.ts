/**
 * Save → result at the client on the real Postgres, beside its floors measured in the same run and
 * interleaved with the decisions: how long a save takes to reach a file-system watcher, and what a
 * transaction with a small DDL and a ledger-like INSERT costs on the same Postgres.
 */
import { watch } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { saveAs, type SaveStyle } from '../src/approvals/human-edit.js';
import { decide, humanPause, RequestFiles, type Spawned, type Workspace } from './harness.js';

/** A file the gate ignores (not an approval id), saved next to the approval files. */
const PROBE_NAME = 'floor-probe.md';

/**
 * Floor 1: a save of an approval-sized file in the approvals directory, the way the human saves,
 * from just before the write until this process's own fs.watch reports it.
 */
export class WatchFloor {
  readonly #file: string;
  readonly #watcher;
  #waiting: (() => void) | null = null;

  constructor(approvalsDir: string) {
    this.#file = path.join(approvalsDir, PROBE_NAME);
    this.#watcher = watch(approvalsDir, (_event, name) => {
      if (name?.toString() === PROBE_NAME) this.#waiting?.();
    });
  }

  async sample(text: string, style: SaveStyle): Promise<number> {
    const seen = new Promise<number>((resolve) => {
      this.#waiting = () => {
        this.#waiting = null;
        resolve(performance.now());
      };
    });
    const started = performance.now();
    await saveAs(this.#file, text, style);
    return (await seen) - started;
  }

  close(): void {
    this.#watcher.close();
  }
}

/**
 * Floor 2: BEGIN; CREATE TABLE (the same small DDL the migrations run); INSERT of a row shaped like
 * the gate's ledger row; COMMIT, each a round trip on an open connection to the same Postgres.
 */
export class TransactionFloor {
  readonly #client: pg.Client;
  readonly #schema: string;
  #n = 0;

  private constructor(client: pg.Client, schema: string) {
    this.#client = client;
    this.#schema = schema;
  }

  static async open(databaseUrl: string, schema: string): Promise<TransactionFloor> {
    const client = new pg.Client({ connectionString: databaseUrl, application_name: 'approval-gate-bench' });
    await client.connect();
    await client.query(
      `CREATE TABLE ${schema}.floor_ledger (approval_id text PRIMARY KEY, request_hash text NOT NULL, ` +
        `state text NOT NULL, started_at timestamptz NOT NULL, finished_at timestamptz, result jsonb)`,
    );
    return new TransactionFloor(client, schema);
  }

  async sample(): Promise<number> {
    this.#n += 1;
    const started = performance.now();
    await this.#client.query('BEGIN');
    await this.#client.query(`CREATE TABLE ${this.#schema}.floor_${this.#n} (id int)`);
    await this.#client.query(
      `INSERT INTO ${this.#schema}.floor_ledger (approval_id, request_hash, state, started_at, finished_at, result) ` +
        `VALUES ($1, $2, 'succeeded', now(), now(), $3)`,
      [`FLOOR-${this.#n}`, 'sha256:floor', JSON.stringify({ statements: 1, rows_affected: 0 })],
    );
    await this.#client.query('COMMIT');
    return performance.now() - started;
  }

  close(): Promise<void> {
    return this.#client.end();
  }
}

export interface LatencyResult {
  /** Save → result at the client, ms, per successful decision. */
  readonly latencies: number[];
  readonly byStyle: Record<SaveStyle, number[]>;
  readonly watchFloor: number[];
  readonly transactionFloor: number[];
  warmUpMs: number | null;
  readonly failures: string[];
}

/**
 * `decisions` decisions on one server (save styles alternating), each preceded by one sample of each
 * floor while the human pauses. The first decision pays for lazy loading: shown, not counted.
 */
export async function measureLatency(
  server: Spawned,
  workspace: Workspace,
  files: RequestFiles,
  options: { readonly schema: string; readonly databaseUrl: string; readonly decisions: number },
): Promise<LatencyResult> {
  const watchFloor = new WatchFloor(workspace.approvalsDir);
  const transactionFloor = await TransactionFloor.open(options.databaseUrl, options.schema);
  const result: LatencyResult = {
    latencies: [],
    byStyle: { 'in-place': [], rename: [] },
    watchFloor: [],
    transactionFloor: [],
    warmUpMs: null,
    failures: [],
  };
  try {
    const warmUp = await decide(server, files, options.schema, 'latency_warmup', 'rename', () =>
      humanPause(50, 100),
    );
    if (warmUp.failure !== null) result.failures.push(`warm-up: ${warmUp.failure}`);
    result.warmUpMs = warmUp.latencyMs;
    for (let i = 0; i < options.decisions; i += 1) {
      const style: SaveStyle = i % 2 === 0 ? 'in-place' : 'rename';
      const decision = await decide(server, files, options.schema, `latency_${i}`, style, async () => {
        await humanPause(20, 60);
        result.watchFloor.push(await watchFloor.sample(probeText(i), style));
        result.transactionFloor.push(await transactionFloor.sample());
        // Let the probe's own events pass before the real save.
        await humanPause(20, 60);
      });
      if (decision.latencyMs === null) {
        result.failures.push(`latency_${i} (${style}): ${decision.failure ?? ''}`);
        continue;
      }
      result.latencies.push(decision.latencyMs);
      result.byStyle[style].push(decision.latencyMs);
    }
  } finally {
    watchFloor.close();
    await transactionFloor.close();
  }
  return result;
}

/** About the size of an approval file, different on every save. */
function probeText(i: number): string {
  return `---\nstatus: "APPROVED"\nprobe: ${i}\n---\n${'An approval file is a few kilobytes of Markdown.\n'.repeat(80)}`;
}
