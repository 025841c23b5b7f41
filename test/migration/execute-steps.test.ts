import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { analyseSql } from '../../src/migration/analyse.js';
import type { Database } from '../../src/db/index.js';
import { executionLockKeys } from '../../src/migration/advisory-locks.js';
import { Executor, type MigrationJob } from '../../src/migration/execute.js';
import { connectTestDatabase, openTestDatabase, uniqueName } from '../helpers/postgres.js';

/* Migrations with statements Postgres refuses inside a transaction, on the real server. */

let knex: Knex;
let database: Database;
let executor: Executor;
const ledgerSchema = uniqueName('gate_steps_test');
const table = uniqueName('steps');

async function job(approvalId: string, sql: string): Promise<MigrationJob> {
  const { statements } = await analyseSql(sql);
  return { approvalId, requestHash: `sha256:${approvalId}`, sql, statements, dryRun: false };
}

/** The ledger row a step-by-step run commits before its first statement (left behind if it dies). */
async function insertRunningRow(id: string, executedBy: string): Promise<void> {
  await knex
    .withSchema(ledgerSchema)
    .table('ledger')
    .insert({
      approval_id: id,
      request_hash: `sha256:${id}`,
      state: 'running',
      dry_run: false,
      transactional: false,
      started_at: new Date(),
      finished_at: new Date(),
      duration_ms: 0,
      statements: JSON.stringify([]),
      executed_by: executedBy,
    });
}

async function rows(): Promise<number> {
  const [row] = await knex(table).count<{ count: string }[]>('* as count');
  return Number(row?.count);
}

async function indexNames(): Promise<string[]> {
  return (await knex('pg_indexes').where({ tablename: table }).pluck('indexname')) as string[];
}

beforeAll(async () => {
  knex = await connectTestDatabase();
  database = openTestDatabase();
  executor = new Executor(database, { ledgerSchema, lockTimeoutMs: 500, statementTimeoutMs: 10_000 });
  await executor.prepare();
  await knex.schema.createTable(table, (t) => {
    t.increments('id');
    t.text('note');
  });
});

afterAll(async () => {
  await knex.schema.dropTableIfExists(table);
  await knex.raw('drop schema if exists ?? cascade', [ledgerSchema]);
  await database.close();
  await knex.destroy();
});

describe('step-by-step execution of non-transactional statements', () => {
  it('runs CREATE INDEX CONCURRENTLY, recording each step as started and done', async () => {
    const { result, ranHere } = await executor.run(
      await job(
        'APR-20260102-001',
        `INSERT INTO ${table} (note) VALUES ('a'); CREATE INDEX CONCURRENTLY ${table}_note ON ${table}(note)`,
      ),
    );
    expect(ranHere).toBe(true);
    expect(result).toMatchObject({ state: 'succeeded', transactional: false, rows_affected: 1 });
    expect(await indexNames()).toContain(`${table}_note`);
    const steps = await knex
      .withSchema(ledgerSchema)
      .table('ledger_steps')
      .where({ approval_id: 'APR-20260102-001' })
      .orderBy('statement');
    expect(steps.map((s: { state: string }) => s.state)).toEqual(['done', 'done']);
    const again = await executor.run(
      await job(
        'APR-20260102-001',
        `INSERT INTO ${table} (note) VALUES ('a'); CREATE INDEX CONCURRENTLY ${table}_note ON ${table}(note)`,
      ),
    );
    expect(again.ranHere).toBe(false);
    expect(await rows()).toBe(1);
  });

  it('runs DETACH PARTITION … CONCURRENTLY outside a transaction, as Postgres requires', async () => {
    const parent = `${table}_events`;
    await knex.raw(
      `create table ?? (id int not null, happened date not null) partition by range (happened)`,
      [parent],
    );
    await knex.raw(`create table ?? partition of ?? for values from ('2024-01-01') to ('2025-01-01')`, [
      `${parent}_2024`,
      parent,
    ]);
    try {
      const { result } = await executor.run(
        await job('APR-20260102-009', `ALTER TABLE ${parent} DETACH PARTITION ${parent}_2024 CONCURRENTLY`),
      );
      expect(result).toMatchObject({ state: 'succeeded', transactional: false });
      const attached = await knex.raw(
        'select count(*)::int as n from pg_inherits where inhparent = ?::regclass',
        [parent],
      );
      expect((attached as { rows: { n: number }[] }).rows[0]?.n).toBe(0);
    } finally {
      await knex.raw('drop table if exists ??, ?? cascade', [`${parent}_2024`, parent]);
    }
  });

  it('stops at a failing statement and says which earlier statements stay applied', async () => {
    const { result } = await executor.run(
      await job(
        'APR-20260102-002',
        `INSERT INTO ${table} (note) VALUES ('b');\nCREATE INDEX CONCURRENTLY ${table}_bad ON ${table}(no_such_column)`,
      ),
    );
    expect(result).toMatchObject({ state: 'failed', transactional: false, statements: [{ statement: 1 }] });
    expect(result.error).toMatchObject({ sqlstate: '42703', statement: 2, line: 2 });
    expect(await rows()).toBe(2);
  });

  it('reports a run that died mid-statement as unknown, naming the statement, and never retries it', async () => {
    const id = 'APR-20260102-003';
    const sql = `INSERT INTO ${table} (note) VALUES ('c'); CREATE INDEX CONCURRENTLY ${table}_c ON ${table}(note)`;
    // What a crash after "started" leaves behind: a running ledger row and a started step, no lock.
    await insertRunningRow(id, 'crashed:1');
    await knex
      .withSchema(ledgerSchema)
      .table('ledger_steps')
      .insert({
        approval_id: id,
        statement: 1,
        kind: 'InsertStmt',
        sql: `INSERT INTO ${table} (note) VALUES ('c')`,
        state: 'started',
        started_at: new Date(),
      });
    const before = await rows();
    const looked = await executor.lookup(id, `sha256:${id}`);
    expect(looked?.state).toBe('unknown');
    expect(looked?.error?.message).toContain(`INSERT INTO ${table} (note) VALUES ('c')`);
    const { result, ranHere } = await executor.run(await job(id, sql));
    expect(ranHere).toBe(false);
    expect(result.state).toBe('unknown');
    expect(await rows()).toBe(before);
    expect(await indexNames()).not.toContain(`${table}_c`);
  });

  it('says "still running" (null) while another session holds the run lock', async () => {
    const id = 'APR-20260102-004';
    await insertRunningRow(id, 'alive:1');
    const holder = openTestDatabase();
    try {
      await holder.withClient(async (session) => {
        await session.query('select pg_advisory_lock($1, $2)', executionLockKeys('', id));
        expect(await executor.lookup(id, `sha256:${id}`)).toBeNull();
        await session.query('select pg_advisory_unlock($1, $2)', executionLockKeys('', id));
      });
    } finally {
      await holder.close();
    }
    expect((await executor.lookup(id, `sha256:${id}`))?.state).toBe('unknown');
  });
});
