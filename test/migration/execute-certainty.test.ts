import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, type Database, type PooledSession } from '../../src/db/index.js';
import { analyseSql } from '../../src/migration/analyse.js';
import { ExecutionAborted, Executor, type MigrationJob } from '../../src/migration/execute.js';
import { openTestDatabase, uniqueName } from '../helpers/postgres.js';

/*
 * What the executor knows about how far a job got when it ends without a result: `sent` decided by
 * the executor from where it stopped, never guessed from an error code by the caller.
 */

let admin: Database;
let database: Database;
let executor: Executor;
const ledgerSchema = uniqueName('gate_certainty');
const table = uniqueName('certainty');
let serial = 0;

async function job(sql: string): Promise<MigrationJob> {
  serial += 1;
  const approvalId = `APR-20260401-${String(serial).padStart(3, '0')}`;
  const { statements } = await analyseSql(sql);
  return { approvalId, requestHash: `sha256:${approvalId}`, sql, statements, dryRun: false };
}

async function rows(): Promise<number> {
  const { rows: found } = await admin.withClient((s) => s.query(`select count(*)::int as n from ${table}`));
  return Number(found[0]?.n);
}

/** Ends the backend running a query that contains `marker` as soon as it is waiting there. */
async function terminateWhenRunning(marker: string, waitEventType: string | null = null): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const { rows: ended } = await admin.withClient((s) =>
      s.query(
        `select pg_catalog.pg_terminate_backend(pid) as ended from pg_catalog.pg_stat_activity
          where pid <> pg_catalog.pg_backend_pid() and position($1 in query) > 0
            and ($2::text is null or wait_event_type = $2::text)`,
        [marker, waitEventType],
      ),
    );
    if (ended.length > 0) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`no backend ran ${marker} within 20 s`);
}

async function aborted(run: Promise<unknown>): Promise<ExecutionAborted> {
  const error = await run.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ExecutionAborted);
  return error as ExecutionAborted;
}

beforeAll(async () => {
  admin = openTestDatabase();
  database = openTestDatabase();
  executor = new Executor(database, { ledgerSchema, lockTimeoutMs: 30_000, statementTimeoutMs: 60_000 });
  await executor.prepare();
  await admin.withClient((s) =>
    s.query(`create table ${table} (x int, constraint ${table}_x unique (x) deferrable initially deferred)`),
  );
});

afterAll(async () => {
  await admin.withClient(async (s) => {
    await s.query(`drop table if exists ${table}`);
    await s.query(`drop schema if exists "${ledgerSchema}" cascade`);
  });
  await database.close();
  await admin.close();
});

describe('what the executor knows about how far a job got', () => {
  it('no connection at all (ECONNREFUSED): nothing was sent', async () => {
    const down = openDatabase(
      'down',
      { client: 'pg', connection_env: 'DOWN_URL' },
      { DOWN_URL: 'postgres://postgres@127.0.0.1:1/none' },
    );
    try {
      const unreachable = new Executor(down, { ledgerSchema, lockTimeoutMs: 300, statementTimeoutMs: 5000 });
      const error = await aborted(unreachable.run(await job(`INSERT INTO ${table} VALUES (1)`)));
      expect(error).toMatchObject({ sent: 'nothing', code: 'DATABASE_UNREACHABLE' });
    } finally {
      await down.close();
    }
  });

  it('a connection killed in the middle of the transaction: nothing was sent that can have taken effect', async () => {
    const marker = uniqueName('killed_in_transaction');
    const analysed = await job(`INSERT INTO ${table} VALUES (1); SELECT pg_sleep(30), '${marker}'`);
    const running = aborted(executor.run(analysed));
    await terminateWhenRunning(marker);
    expect(await running).toMatchObject({ sent: 'nothing', code: 'EXECUTION_NOT_COMMITTED' });
    expect(await rows()).toBe(0);
    expect(await executor.lookup(analysed.approvalId, analysed.requestHash)).toBeNull();
  });

  it('a killed statement of a step-by-step run (CREATE INDEX CONCURRENTLY): maybe sent', async () => {
    const index = uniqueName('killed_concurrently');
    const analysed = await job(`CREATE INDEX CONCURRENTLY ${index} ON ${table} (x)`);
    // Another session's SHARE lock makes the index build wait, long enough to be killed while it runs.
    await admin.withClient(async (holder) => {
      await holder.query('begin');
      await holder.query(`lock table ${table} in share mode`);
      try {
        const running = aborted(executor.run(analysed));
        await terminateWhenRunning(index, 'Lock');
        expect(await running).toMatchObject({ sent: 'maybe', code: 'EXECUTION_OUTCOME_UNKNOWN' });
      } finally {
        await holder.query('rollback');
      }
    });
    // The ledger agrees: the run is unknown, never retried.
    expect((await executor.lookup(analysed.approvalId, analysed.requestHash))?.state).toBe('unknown');
  });

  it('COMMIT sent and its answer lost: maybe sent (and here it did commit)', async () => {
    const lostReply = answerLost(database);
    const losing = new Executor(lostReply, { ledgerSchema, lockTimeoutMs: 300, statementTimeoutMs: 5000 });
    const analysed = await job(`INSERT INTO ${table} VALUES (2)`);
    const error = await aborted(losing.run(analysed));
    expect(error).toMatchObject({ sent: 'maybe', code: 'COMMIT_OUTCOME_UNKNOWN' });
    expect(error.message).toContain(`"${ledgerSchema}".ledger`);
    expect((await executor.lookup(analysed.approvalId, analysed.requestHash))?.state).toBe('succeeded');
    await admin.withClient((s) => s.query(`delete from ${table}`));
  });

  it('COMMIT refused by Postgres (a deferred unique constraint): nothing was sent that took effect', async () => {
    const analysed = await job(`INSERT INTO ${table} VALUES (3); INSERT INTO ${table} VALUES (3)`);
    const error = await aborted(executor.run(analysed));
    expect(error).toMatchObject({ sent: 'nothing', code: 'EXECUTION_NOT_COMMITTED' });
    expect(await rows()).toBe(0);
    expect(await executor.lookup(analysed.approvalId, analysed.requestHash)).toBeNull();
  });
});

/** `database`, except that the answer to COMMIT is lost: COMMIT reaches Postgres, the reply never comes back. */
function answerLost(database: Database): Database {
  return {
    ...database,
    name: database.name,
    client: database.client,
    withClient: (work) =>
      database.withClient((session) => {
        const losing: PooledSession = {
          async query(text, params) {
            const result = await session.query(text, params);
            if (text === 'commit') throw new Error('Connection terminated unexpectedly');
            return result;
          },
          dispose: (reason) => session.dispose(reason),
        };
        return work(losing);
      }),
    withKnex: (work) => database.withKnex(work),
    close: () => Promise.resolve(),
  };
}
