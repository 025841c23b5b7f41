import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { analyseSql } from '../../src/migration/analyse.js';
import { Executor, retryDelayMs, type MigrationJob } from '../../src/migration/execute.js';
import type { ExecutionResult } from '../../src/migration/result.js';
import type { Database } from '../../src/db/index.js';
import { columnsOf, connectTestDatabase, openTestDatabase, uniqueName } from '../helpers/postgres.js';

let knex: Knex;
let database: Database;
let executor: Executor;
const ledgerSchema = uniqueName('gate_exec_test');
const table = uniqueName('customers');

async function resultOf(on: Executor, j: MigrationJob): Promise<ExecutionResult> {
  return (await on.run(j)).result;
}

async function job(approvalId: string, sql: string, dryRun = false): Promise<MigrationJob> {
  const { statements } = await analyseSql(sql);
  return { approvalId, requestHash: `sha256:${approvalId}`, sql, statements, dryRun };
}

beforeAll(async () => {
  knex = await connectTestDatabase();
  database = openTestDatabase();
  executor = new Executor(database, { ledgerSchema, lockTimeoutMs: 300, statementTimeoutMs: 5000 });
  await knex.schema.createTable(table, (t) => {
    t.increments('id');
    t.text('name');
  });
  await knex(table).insert([{ name: 'a' }, { name: 'b' }, { name: 'c' }]);
});

afterAll(async () => {
  await knex.schema.dropTableIfExists(table);
  await knex.raw('drop schema if exists ?? cascade', [ledgerSchema]);
  await database.close();
  await knex.destroy();
});

describe('executor on the real Postgres server', () => {
  it('migrates its ledger with knex only when a migration is missing', async () => {
    await executor.prepare();
    // A second process on the same, up-to-date ledger never loads knex.
    const other = openTestDatabase();
    try {
      const withKnex = vi.spyOn(other, 'withKnex');
      await new Executor(other, { ledgerSchema, lockTimeoutMs: 300, statementTimeoutMs: 5000 }).prepare();
      expect(withKnex).not.toHaveBeenCalled();
      // A new ledger schema is migrated.
      const fresh = uniqueName('gate_exec_fresh');
      try {
        await new Executor(other, {
          ledgerSchema: fresh,
          lockTimeoutMs: 300,
          statementTimeoutMs: 5000,
        }).prepare();
        expect(withKnex).toHaveBeenCalledTimes(1);
      } finally {
        await knex.raw('drop schema if exists ?? cascade', [fresh]);
      }
    } finally {
      await other.close();
    }
  });

  it('runs a migration in one transaction and records it in the ledger', async () => {
    const result = await resultOf(
      executor,
      await job(
        'APR-20260101-001',
        `ALTER TABLE ${table} ADD COLUMN tier text; UPDATE ${table} SET tier = 'bronze'`,
      ),
    );
    expect(result.state).toBe('succeeded');
    expect(result.rows_affected).toBe(3);
    expect(result.statements.map((s) => s.kind)).toEqual(['AlterTableStmt', 'UpdateStmt']);
    expect(await columnsOf(knex, table)).toContain('tier');
    const rows = await knex
      .withSchema(ledgerSchema)
      .table('ledger')
      .where({ approval_id: 'APR-20260101-001' });
    expect(rows).toHaveLength(1);
    expect(rows[0].state).toBe('succeeded');
  });

  it('never runs the same approval twice: a second run returns the recorded result', async () => {
    const second = await resultOf(
      executor,
      await job(
        'APR-20260101-001',
        `ALTER TABLE ${table} ADD COLUMN tier text; UPDATE ${table} SET tier = 'bronze'`,
      ),
    );
    expect(second.state).toBe('succeeded');
    const count = await knex
      .withSchema(ledgerSchema)
      .table('ledger')
      .count<{ count: string }[]>('* as count');
    expect(Number(count[0]?.count)).toBe(1);
  });

  it('two concurrent runs of one approval execute it once', async () => {
    const sql = `UPDATE ${table} SET name = name || '!'`;
    const otherDatabase = openTestDatabase();
    const other = new Executor(otherDatabase, { ledgerSchema, lockTimeoutMs: 300, statementTimeoutMs: 5000 });
    try {
      const [a, b] = await Promise.all([
        resultOf(executor, await job('APR-20260101-002', sql)),
        resultOf(other, await job('APR-20260101-002', sql)),
      ]);
      expect(a).toEqual(b);
    } finally {
      await otherDatabase.close();
    }
    const names = await knex(table).orderBy('id').pluck('name');
    expect(names).toEqual(['a!', 'b!', 'c!']);
  });

  it('rolls everything back when a statement fails, and reports Postgres message and position', async () => {
    const sql = `ALTER TABLE ${table} ADD COLUMN doomed int;\nUPDATE ${table}\n  SET doomed = nosuchcolumn;`;
    const result = await resultOf(executor, await job('APR-20260101-003', sql));
    expect(result.state).toBe('failed');
    expect(result.error).toMatchObject({ sqlstate: '42703', statement: 2, line: 3, column: 16 });
    expect(result.error?.message).toContain('nosuchcolumn');
    expect(await columnsOf(knex, table)).not.toContain('doomed');
  });

  it('dry run executes and rolls back: the schema is unchanged', async () => {
    const result = await resultOf(
      executor,
      await job('APR-20260101-004', `ALTER TABLE ${table} ADD COLUMN rehearsed int`, true),
    );
    expect(result.state).toBe('rolled_back');
    expect(result.dry_run).toBe(true);
    expect(await columnsOf(knex, table)).not.toContain('rehearsed');
  });

  it('a dry run rehearses the rollback too, reports a broken one, and changes nothing', async () => {
    const sql = `ALTER TABLE ${table} ADD COLUMN rehearsed2 int`;
    const broken = `ALTER TABLE ${table} DROP COLUMN rehearsed_typo`;
    const { statements } = await analyseSql(broken);
    const withBroken = {
      ...(await job('APR-20260101-009', sql, true)),
      rollback: { sql: broken, statements },
    };
    const { result } = await executor.run(withBroken);
    expect(result.state).toBe('rolled_back');
    expect(result.rollback_rehearsal).toMatchObject({
      state: 'failed',
      error: { sqlstate: '42703', statement: 1, line: 1 },
    });
    expect(await columnsOf(knex, table)).not.toContain('rehearsed2');

    const good = `ALTER TABLE ${table} DROP COLUMN rehearsed2`;
    const fine = {
      ...(await job('APR-20260101-010', sql, true)),
      rollback: { sql: good, statements: (await analyseSql(good)).statements },
    };
    expect((await executor.run(fine)).result.rollback_rehearsal).toEqual({ state: 'succeeded', error: null });
    expect(await columnsOf(knex, table)).not.toContain('rehearsed2');
  });

  it('passes SQL verbatim: question marks are not turned into bind parameters', async () => {
    const result = await resultOf(
      executor,
      await job(
        'APR-20260101-005',
        `UPDATE ${table} SET name = 'why?' WHERE '{"a":1}'::jsonb ? 'a' AND id = 1`,
      ),
    );
    expect(result.state).toBe('succeeded');
    expect(await knex(table).where({ id: 1 }).first('name')).toEqual({ name: 'why?' });
  });

  it('gives up on a lock held by another session after lock_timeout, changing nothing', async () => {
    const holder = await knex.transaction();
    try {
      await holder.raw(`LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE`);
      const result = await resultOf(
        executor,
        await job('APR-20260101-006', `ALTER TABLE ${table} ADD COLUMN blocked int`),
      );
      expect(result.state).toBe('failed');
      expect(result.error?.sqlstate).toBe('55P03');
    } finally {
      await holder.rollback();
    }
    expect(await columnsOf(knex, table)).not.toContain('blocked');
  });

  it('retries a transaction that timed out on a lock, and succeeds once the lock is released', async () => {
    const patient = new Executor(database, {
      ledgerSchema,
      lockTimeoutMs: 200,
      statementTimeoutMs: 5000,
      lockRetry: { retries: 10, initialDelayMs: 100, maxDelayMs: 400 },
    });
    const holder = await knex.transaction();
    await holder.raw(`LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE`);
    const notes: string[] = [];
    const running = patient.run(
      await job('APR-20260101-007', `ALTER TABLE ${table} ADD COLUMN waited int`),
      (n) => notes.push(n),
    );
    await new Promise((resolve) => setTimeout(resolve, 1200));
    await holder.rollback();
    const { result } = await running;
    expect(result.state).toBe('succeeded');
    expect(notes.some((n) => n.includes('gave up waiting for a lock'))).toBe(true);
    expect(await columnsOf(knex, table)).toContain('waited');
    const [row] = await knex
      .withSchema(ledgerSchema)
      .table('ledger')
      .where({ approval_id: 'APR-20260101-007' });
    expect(row.attempts).toBeGreaterThan(1);
  });

  it('fails cleanly after the last retry when the lock is never released, changing nothing', async () => {
    const patient = new Executor(database, {
      ledgerSchema,
      lockTimeoutMs: 100,
      statementTimeoutMs: 5000,
      lockRetry: { retries: 2, initialDelayMs: 50, maxDelayMs: 100 },
    });
    const holder = await knex.transaction();
    try {
      await holder.raw(`LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE`);
      const { result } = await patient.run(
        await job('APR-20260101-008', `ALTER TABLE ${table} ADD COLUMN never int`),
      );
      expect(result.state).toBe('failed');
      expect(result.error?.sqlstate).toBe('55P03');
    } finally {
      await holder.rollback();
    }
    expect(await columnsOf(knex, table)).not.toContain('never');
    const [row] = await knex
      .withSchema(ledgerSchema)
      .table('ledger')
      .where({ approval_id: 'APR-20260101-008' });
    expect(row.attempts).toBe(3);
  });

  it('backs off exponentially with jitter, capped', () => {
    const policy = { retries: 5, initialDelayMs: 500, maxDelayMs: 3000 };
    expect([1, 2, 3, 4].map((n) => retryDelayMs(policy, n, () => 1))).toEqual([500, 1000, 2000, 3000]);
    expect(retryDelayMs(policy, 1, () => 0)).toBe(250);
  });

  it('refuses an approval id already in the ledger for a different request', async () => {
    const conflicting = { ...(await job('APR-20260101-001', 'SELECT 1')), requestHash: 'sha256:other' };
    await expect(executor.run(conflicting)).rejects.toMatchObject({
      code: 'LEDGER_CONFLICT',
      sent: 'nothing',
    });
  });
});
