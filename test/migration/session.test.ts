import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Database } from '../../src/db/index.js';
import { analyseSql } from '../../src/migration/analyse.js';
import { Executor, type MigrationJob } from '../../src/migration/execute.js';
import { settingsBreach, type WatchedSettings } from '../../src/migration/session.js';
import { connectTestDatabase, openTestDatabase, uniqueName } from '../helpers/postgres.js';

/*
 * The executor against the agent: SQL that tries to run a statement the file does not list, to leave
 * state behind for a later job, to lift the gate's limits, or to break the gate's own ledger write.
 * Executor-level on purpose: the request layer refuses most of these SQL texts before any file is
 * written; these tests prove the executor holds even for SQL that got past it.
 */

let admin: Knex;
/** One pooled connection, so a later job gets exactly the session an earlier one left behind. */
let single: Database;
let executor: Executor;
const ledgerSchema = uniqueName('gate_session');
const otherSchema = uniqueName('elsewhere');
const sentinel = uniqueName('sentinel');
const role = uniqueName('gate_nobody');
let serial = 0;

async function job(sql: string, extra: Partial<MigrationJob> = {}): Promise<MigrationJob> {
  serial += 1;
  const approvalId = `APR-20260301-${String(serial).padStart(3, '0')}`;
  const { statements } = await analyseSql(sql);
  return { approvalId, requestHash: `sha256:${approvalId}`, sql, statements, dryRun: false, ...extra };
}

async function tableExists(name: string, schema = 'public'): Promise<boolean> {
  const { rows } = await admin.raw<{ rows: unknown[] }>(
    'select 1 from pg_catalog.pg_tables where schemaname = ? and tablename = ?',
    [schema, name],
  );
  return rows.length > 0;
}

beforeAll(async () => {
  admin = await connectTestDatabase();
  single = openTestDatabase({ maxConnections: 1 });
  executor = new Executor(single, { ledgerSchema, lockTimeoutMs: 300, statementTimeoutMs: 5000 });
  await executor.prepare();
  await admin.raw(`create schema ${otherSchema}`);
  await admin.raw(`create table ${sentinel} (id int)`);
  await admin.raw(`create role ${role} nologin`);
});

afterAll(async () => {
  await single?.close();
  await admin.raw(`drop table if exists ${sentinel}`);
  await admin.raw(`drop schema if exists ${otherSchema} cascade`);
  await admin.raw('drop schema if exists ?? cascade', [ledgerSchema]);
  await admin.raw(`drop owned by ${role}`).catch(() => undefined);
  await admin.raw(`drop role if exists ${role}`);
  await admin.destroy();
});

describe('security: Postgres runs exactly the statements the file lists', () => {
  it('refuses a second command hidden in one statement text (extended protocol)', async () => {
    await expect(
      single.withClient((session) => session.query(`select 1; drop table ${sentinel}`)),
    ).rejects.toMatchObject({ code: '42601' });
    expect(await tableExists(sentinel)).toBe(true);
  });

  it('the standard_conforming_strings desync cannot run a DROP the parser saw inside a string', async () => {
    // libpg-query (standard_conforming_strings on) reads statement 2 as one SELECT of one string;
    // Postgres with the setting off would read a SELECT and then a DROP TABLE.
    const sql = `SET standard_conforming_strings = off; SELECT 'a\\'' ; DROP TABLE ${sentinel}; --'`;
    const analysed = await job(sql);
    expect(analysed.statements.map((s) => s.kind)).toEqual(['VariableSetStmt', 'SelectStmt']);
    const { result } = await executor.run(analysed);
    expect(result.state).toBe('failed');
    expect(result.error?.message).toContain('standard_conforming_strings');
    expect(await tableExists(sentinel)).toBe(true);
  });

  it('even with the lexer desynchronised, the hidden DROP is refused by Postgres itself', async () => {
    // The settings guard stops the job before statement 2 is sent; here it is sent on purpose.
    await single.withClient(async (session) => {
      await session.query('set standard_conforming_strings = off');
      try {
        await expect(session.query(`SELECT 'a\\'' ; DROP TABLE ${sentinel}; --'`)).rejects.toMatchObject({
          code: '42601',
        });
      } finally {
        await session.query('discard all');
      }
    });
    expect(await tableExists(sentinel)).toBe(true);
  });
});

describe('security: a job leaves nothing behind and cannot lift the gate limits', () => {
  it('a session-level SET search_path does not redirect a later, separately approved job', async () => {
    const first = await executor.run(await job(`SET search_path = ${otherSchema}`));
    expect(first.result.state).toBe('succeeded');
    const probe = uniqueName('probe');
    const second = await executor.run(await job(`CREATE TABLE ${probe} (x int)`));
    expect(second.result.state).toBe('succeeded');
    expect(await tableExists(probe, 'public')).toBe(true);
    expect(await tableExists(probe, otherSchema)).toBe(false);
    await admin.raw(`drop table ${probe}`);
  });

  it('a job starts clean even on a connection another caller left dirty', async () => {
    await single.withClient((session) => session.query(`set search_path = ${otherSchema}`));
    const probe = uniqueName('probe');
    const ran = await executor.run(await job(`CREATE TABLE ${probe} (x int)`));
    expect(ran.result.state).toBe('succeeded');
    expect(await tableExists(probe, 'public')).toBe(true);
    await admin.raw(`drop table ${probe}`);
    await single.withClient((session) => session.query('discard all'));
  });

  it('a SET ROLE, a temporary table and a session advisory lock do not survive the job', async () => {
    const ran = await executor.run(
      await job(
        `SET ROLE ${role}; CREATE TEMP TABLE leftover (x int); SELECT pg_advisory_lock(4242); RESET ROLE`,
      ),
    );
    expect(ran.result.state).toBe('succeeded');
    await single.withClient(async (session) => {
      const { rows } = await session.query(
        `select current_user = session_user as same_user,
                pg_catalog.to_regclass('pg_temp.leftover') is null as no_temp,
                (select count(*) from pg_catalog.pg_locks where locktype = 'advisory' and pid = pg_catalog.pg_backend_pid()) as locks`,
      );
      expect(rows[0]).toEqual({ same_user: true, no_temp: true, locks: '0' });
    });
  });

  it('stops a migration that lifts lock_timeout through set_config when no finding told the reviewer', async () => {
    const sql = `SELECT set_config('lock_timeout', '0', true); INSERT INTO ${sentinel} VALUES (1)`;
    const { result } = await executor.run(await job(sql));
    expect(result.state).toBe('failed');
    expect(result.error?.statement).toBe(1);
    expect(result.error?.message).toContain('lock_timeout');
    expect((await admin(sentinel).count<{ count: string }[]>('* as count'))[0]?.count).toBe('0');
  });

  it('lets the timeout change run where the reviewer saw it flagged', async () => {
    const sql = `SELECT set_config('lock_timeout', '5s', true); INSERT INTO ${sentinel} VALUES (2)`;
    const { result } = await executor.run(await job(sql, { timeoutsMayChange: new Set([0]) }));
    expect(result.state).toBe('succeeded');
    await admin(sentinel).where({ id: 2 }).del();
  });

  it('a migration that ends under a role without rights still gets its ledger row', async () => {
    const probe = uniqueName('owned');
    const ran = await executor.run(await job(`CREATE TABLE ${probe} (x int); SET ROLE ${role}`));
    expect(ran.result.state).toBe('succeeded');
    expect(await tableExists(probe)).toBe(true);
    await admin.raw(`drop table ${probe}`);
  });

  it('a migration that breaks the ledger write is recorded as rolled back, never left running', async () => {
    const probe = uniqueName('broken');
    const breaker = uniqueName('refuse_ledger');
    const sql = `CREATE TABLE ${probe} (x int);
      CREATE FUNCTION ${breaker}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no ledger'; END $$;
      CREATE TRIGGER ${breaker} BEFORE INSERT ON ${ledgerSchema}.ledger FOR EACH ROW EXECUTE FUNCTION ${breaker}()`;
    const analysed = await job(sql);
    const { result, ranHere } = await executor.run(analysed);
    expect(ranHere).toBe(true);
    expect(result.state).toBe('failed');
    expect(result.error?.message).toMatch(/could not record the result.*no ledger.*nothing changed/s);
    expect(await tableExists(probe)).toBe(false);
    // Recorded: a lookup (as after a restart) finds the final outcome, not "running".
    expect((await executor.lookup(analysed.approvalId, analysed.requestHash))?.state).toBe('failed');
  });

  it('step-by-step bookkeeping runs as the session user when a statement changed the role', async () => {
    const owned = `${otherSchema}.${uniqueName('owned_by_role')}`;
    await admin.raw(`grant usage, create on schema ${otherSchema} to ${role}`);
    await admin.raw(`create table ${owned} (x int)`);
    await admin.raw(`alter table ${owned} owner to ${role}`);
    const ran = await executor.run(await job(`SET ROLE ${role}; CREATE INDEX CONCURRENTLY ON ${owned} (x)`));
    expect(ran.result.state, ran.result.error?.message).toBe('succeeded');
    const steps = await admin
      .withSchema(ledgerSchema)
      .table('ledger_steps')
      .where({ approval_id: `APR-20260301-${String(serial).padStart(3, '0')}` });
    expect(steps.map((s: { state: string }) => s.state)).toEqual(['done', 'done']);
    await admin.raw(`drop table ${owned}`);
  });
});

describe('the settings guard, as a pure rule', () => {
  const base: WatchedSettings = {
    standard_conforming_strings: 'on',
    client_encoding: 'UTF8',
    lock_timeout: '2s',
    statement_timeout: '10min',
    idle_in_transaction_session_timeout: '0',
    session_user: 'gate',
    current_user: 'gate',
  };
  it('never lets the lexer settings or the session user change, flagged or not', () => {
    for (const change of [
      { standard_conforming_strings: 'off' },
      { client_encoding: 'SJIS' },
      { session_user: 'postgres' },
    ]) {
      expect(settingsBreach(base, { ...base, ...change }, { timeoutsMayChange: true })).not.toBeNull();
    }
  });
  it('lets timeouts change only where the statement was flagged', () => {
    const lifted = { ...base, lock_timeout: '0' };
    expect(settingsBreach(base, lifted, { timeoutsMayChange: false })).toContain('lock_timeout');
    expect(settingsBreach(base, lifted, { timeoutsMayChange: true })).toBeNull();
    expect(settingsBreach(base, base, { timeoutsMayChange: false })).toBeNull();
  });
});

describe('what the executor knows about how far it got', () => {
  it('a connection lost before COMMIT is certain: nothing changed, not "unknown"', async () => {
    const probe = uniqueName('lost');
    const analysed = await job(
      `CREATE TABLE ${probe} (x int); SELECT pg_terminate_backend(pg_backend_pid())`,
    );
    await expect(executor.run(analysed)).rejects.toMatchObject({
      code: 'EXECUTION_NOT_COMMITTED',
      sent: 'nothing',
    });
    expect(await tableExists(probe)).toBe(false);
    expect(await executor.lookup(analysed.approvalId, analysed.requestHash)).toBeNull();
  });
});
