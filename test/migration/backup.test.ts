import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { inspect } from 'node:util';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Database, QueryResult } from '../../src/db/index.js';
import { GateError } from '../../src/errors.js';
import {
  dumpTables,
  existingTables,
  libpqEnvironment,
  pgDumpAvailable,
  quoteIdentifier,
  tableCopyRecord,
  tableCopyStatements,
} from '../../src/migration/backup.js';
import { connectTestDatabase, openTestDatabase, TEST_DATABASE_URL, uniqueName } from '../helpers/postgres.js';

let knex: Knex;
let database: Database;
let dir: string;
const schema = uniqueName('backup_test');
const backupSchema = uniqueName('backup_copies');

function withPassword(url: string, password: string): string {
  const parsed = new URL(url);
  parsed.password = password;
  return parsed.toString();
}

/** pg_restore, reaching the database through the same libpq environment as the dump. */
function pgRestore(file: string): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      'pg_restore',
      [
        '--no-password',
        '--single-transaction',
        '--exit-on-error',
        `--dbname=${new URL(TEST_DATABASE_URL).pathname.slice(1)}`,
        file,
      ],
      { env: libpqEnvironment(TEST_DATABASE_URL), stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stderr }));
  });
}

/** SQL verbatim, as the gate runs it: knex.raw would read the `?` in some names below as a binding. */
function run(text: string, params?: readonly unknown[]): Promise<QueryResult> {
  return database.withClient((s) => s.query(text, params));
}

async function rowsOf(table: string): Promise<Record<string, unknown>[]> {
  return (await run(`select * from ${table} order by 1`)).rows;
}

beforeAll(async () => {
  knex = await connectTestDatabase();
  database = openTestDatabase();
  dir = await mkdtemp(path.join(tmpdir(), 'gate-backup-'));
  await run(`create schema ${schema}`);
});

afterAll(async () => {
  await run(`drop schema if exists ${schema} cascade`);
  await run(`drop schema if exists "${backupSchema}" cascade`);
  await database.close();
  await knex.destroy();
  await rm(dir, { recursive: true, force: true });
});

describe('pg_dump backup', () => {
  it('finds pg_dump on this machine', async () => {
    expect(await pgDumpAvailable()).toBe(true);
  });

  it('writes a dump that pg_restore brings back exactly, after the table was changed', async () => {
    const table = `${schema}.${uniqueName('customers')}`;
    await run(`create table ${table} (
      id serial primary key, name text not null, note text, balance numeric(12, 2),
      tags jsonb, seen timestamptz, unique (name))`);
    await run(
      `insert into ${table} (name, note, balance, tags, seen) values
        ('ann', 'it''s "quoted"', 10.50, '{"tier": "gold"}', '2026-02-13 10:00:00+00'),
        ('bob', null, -3.00, '[]', null),
        ('cé', E'tab\\there', 0, 'null', '1999-12-31 23:59:59.999999+00')`,
    );
    const original = await rowsOf(table);
    const file = path.join(dir, 'nested', 'dir', 'APR-20260213-001.dump');

    const record = await dumpTables(TEST_DATABASE_URL, [table, `${schema}.not_there_yet`], file);

    expect(record).toMatchObject({ method: 'pg_dump', location: file, tables: [table] });
    const info = await stat(file);
    expect(record.bytes).toBe(info.size);
    expect(info.mode & 0o777).toBe(0o600);
    expect(await readdir(path.dirname(file))).toEqual(['APR-20260213-001.dump']);

    await run(`delete from ${table} where name = 'bob'`);
    await run(`alter table ${table} drop column note`);
    await run(`drop table ${table}`);
    const restored = await pgRestore(file);
    expect(restored).toEqual({ code: 0, stderr: '' });
    expect(await rowsOf(table)).toEqual(original);
    // The owned sequence came back with its position: the next id follows the dumped ones.
    const { rows } = await run(`insert into ${table} (name) values ('dan') returning id`);
    expect(rows[0]?.id).toBe(4);
  });

  it('dumps a partitioned table with its partitions, and a name full of pattern characters exactly', async () => {
    const events = `${schema}.${uniqueName('events')}`;
    const odd = `Odd "name".*?$`;
    const oddSql = `${schema}."Odd ""name"".*?$"`;
    await run(`create table ${events} (id int) partition by range (id)`);
    await run(`create table ${events}_a partition of ${events} for values from (0) to (10)`);
    await run(`create table ${events}_b partition of ${events} for values from (10) to (20)`);
    await run(`insert into ${events} select generate_series(0, 19)`);
    await run(`create table ${oddSql} (id int)`);
    await run(`insert into ${oddSql} values (7)`);
    const file = path.join(dir, 'APR-20260213-002.dump');

    const record = await dumpTables(TEST_DATABASE_URL, [events, `${schema}.${odd}`], file);

    expect(record.tables).toEqual([events, `${schema}.${odd}`]);
    await run(`drop table ${events}, ${oddSql}`);
    expect((await pgRestore(file)).code).toBe(0);
    expect((await rowsOf(events)).length).toBe(20);
    expect(await rowsOf(oddSql)).toEqual([{ id: 7 }]);
  });

  it('dumps nothing and writes no file when none of the tables exists yet', async () => {
    const file = path.join(dir, 'APR-20260213-003.dump');
    const record = await dumpTables(TEST_DATABASE_URL, [`${schema}.created_by_the_migration`], file);
    expect(record).toEqual({ method: 'pg_dump', location: file, tables: [], bytes: null });
    await expect(stat(file)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('never overwrites an earlier backup', async () => {
    const table = `${schema}.${uniqueName('kept')}`;
    await run(`create table ${table} (id int)`);
    const file = path.join(dir, 'APR-20260213-004.dump');
    await writeFile(file, 'earlier backup');
    await expect(dumpTables(TEST_DATABASE_URL, [table], file)).rejects.toMatchObject({
      code: 'BACKUP_FAILED',
      message: expect.stringContaining('already exists'),
    });
  });
});

describe('security: the password never shows', () => {
  it('passes the password in the environment only, and dumps with it', async () => {
    const table = `${schema}.${uniqueName('secretive')}`;
    await run(`create table ${table} (id int)`);
    const url = withPassword(TEST_DATABASE_URL, 's3cret');
    expect(libpqEnvironment(url, {})).toMatchObject({ PGPASSWORD: 's3cret', PGHOST: '127.0.0.1' });
    const record = await dumpTables(url, [table], path.join(dir, 'APR-20260213-005.dump'));
    expect(record.tables).toEqual([table]);
  });

  it('keeps the password out of the error when the database does not exist', async () => {
    const url = new URL(withPassword(TEST_DATABASE_URL, 's3cret'));
    url.pathname = `/${uniqueName('no_such_db')}`;
    const error = await dumpTables(url.toString(), ['customers'], path.join(dir, 'never.dump')).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(GateError);
    expect(error).toMatchObject({
      code: 'BACKUP_FAILED',
      message: expect.stringContaining('does not exist'),
    });
    expect(inspect(error, { depth: 10 })).not.toContain('s3cret');
  });

  it("redacts the password from pg_dump's own stderr", async () => {
    // A password equal to the table's name, so pg_dump's error (which names the table) contains it.
    const name = uniqueName('locked');
    const table = `${schema}.${name}`;
    await run(`create table ${table} (id int)`);
    const holder = await knex.transaction();
    try {
      await holder.raw(`lock table ${table} in access exclusive mode`);
      const error = await dumpTables(
        withPassword(TEST_DATABASE_URL, name),
        [table],
        path.join(dir, 'APR-20260213-006.dump'),
        { lockWaitTimeoutMs: 200 },
      ).catch((e: unknown) => e);
      expect(error).toMatchObject({
        code: 'BACKUP_FAILED',
        message: expect.stringContaining('pg_dump failed'),
      });
      expect(inspect(error, { depth: 10 })).not.toContain(name);
      expect((error as GateError).message).toContain(`${schema}.***`);
    } finally {
      await holder.rollback();
    }
    expect(await readdir(dir)).not.toContain('APR-20260213-006.dump');
  });

  it('refuses a connection string it cannot parse without echoing it', () => {
    try {
      libpqEnvironment('postgres://user:s3cret@[not-a-host/db');
      expect.unreachable();
    } catch (error) {
      expect(error).toMatchObject({ code: 'BACKUP_FAILED' });
      expect(inspect(error, { depth: 10 })).not.toContain('s3cret');
    }
  });
});

describe('libpq environment', () => {
  it('maps the connection string to PG* variables, falling back like node-postgres', () => {
    const env = libpqEnvironment(
      'postgres://ann:p%40ss@[::1]:6543/app?sslmode=no-verify&options=-c%20search_path%3Dapp',
      { PGSERVICE: 'elsewhere', PGHOSTADDR: '10.0.0.1', PATH: '/usr/bin' },
    );
    expect(env).toMatchObject({
      PGHOST: '::1',
      PGPORT: '6543',
      PGUSER: 'ann',
      PGPASSWORD: 'p@ss',
      PGDATABASE: 'app',
      PGSSLMODE: 'require',
      PGOPTIONS: '-c search_path=app',
      PATH: '/usr/bin',
    });
    expect(env.PGSERVICE).toBeUndefined();
    expect(env.PGHOSTADDR).toBeUndefined();
    expect(libpqEnvironment('postgres:///app', {}).PGHOST).toBe('localhost');
    expect(libpqEnvironment('postgres://h/app?ssl=true', {}).PGSSLMODE).toBe('verify-full');
  });
});

describe('existing tables', () => {
  it('resolves names as the parser reports them, leaving out views and missing ones, once per table', async () => {
    const table = uniqueName('Customers');
    await run(`create table ${schema}."${table}" (id int)`);
    await run(`create view ${schema}.${table.toLowerCase()}_v as select 1`);
    const found = await database.withClient(async (s) => {
      await s.query(`select set_config('search_path', $1, false)`, [schema]);
      try {
        return await existingTables(s, [
          table,
          `${schema}.${table}`,
          `${table.toLowerCase()}_v`,
          'nowhere',
          'pg_catalog.pg_class',
        ]);
      } finally {
        await s.query('reset search_path');
      }
    });
    expect(found).toEqual([{ schema, name: table, as_written: table }]);
  });
});

describe('table copies', () => {
  it('copies the rows inside the transaction, consistent with it and rolled back with it', async () => {
    const name = uniqueName('customers');
    await run(`create table ${schema}.${name} (id int primary key, name text, tags jsonb)`);
    await run(`insert into ${schema}.${name} values (1, 'ann', '{"a": 1}'), (2, null, null)`);
    const original = await rowsOf(`${schema}.${name}`);
    const approvalId = 'APR-20260213-007';

    const copied = await database.withClient(async (s) => {
      await s.query('begin');
      try {
        const tables = await existingTables(s, [`${schema}.${name}`]);
        for (const statement of tableCopyStatements(backupSchema, approvalId, tables))
          await s.query(statement);
        // The migration itself, after the copy: the copy keeps the rows it started from.
        await s.query(`delete from ${schema}.${name}`);
        const copy = `"${backupSchema}"."${approvalId}__${schema}__${name}"`;
        const { rows } = await s.query(`select * from ${copy} order by 1`);
        expect(tableCopyRecord(backupSchema, approvalId, tables)).toEqual({
          method: 'table_copy',
          location: copy,
          tables: [`${schema}.${name}`],
          bytes: null,
        });
        return rows;
      } finally {
        await s.query('rollback');
      }
    });

    expect(copied).toEqual(original);
    expect(await rowsOf(`${schema}.${name}`)).toEqual(original);
    const { rows } = await run('select to_regclass($1) as copy', [
      `"${backupSchema}"."${approvalId}__${schema}__${name}"`,
    ]);
    expect(rows[0]?.copy).toBeNull();
  });

  it('names copies of public tables without the schema, and explains each copy in a comment', () => {
    expect(
      tableCopyStatements('gate_backup', 'APR-20260213-003', [{ schema: 'public', name: 'customers' }]),
    ).toEqual([
      'CREATE SCHEMA IF NOT EXISTS "gate_backup"',
      'CREATE TABLE "gate_backup"."APR-20260213-003__customers" AS TABLE "public"."customers"',
      `COMMENT ON TABLE "gate_backup"."APR-20260213-003__customers" IS 'approval-gate backup of "public"."customers" before APR-20260213-003'`,
    ]);
    expect(tableCopyStatements('gate_backup', 'APR-1', [])).toEqual([]);
  });

  it('gives long and colliding names valid, distinct identifiers that Postgres accepts', async () => {
    const approvalId = 'APR-20260213-008';
    const long = (suffix: string) => `${'l'.repeat(55)}_${suffix}`;
    const tables = [
      { schema, name: long('first') },
      { schema, name: long('second') },
      { schema, name: `é${'ü'.repeat(30)}` },
    ];
    for (const t of tables) await run(`create table ${schema}."${t.name}" (id int)`);
    const statements = tableCopyStatements(backupSchema, approvalId, tables);
    const copies = statements
      .filter((s) => s.startsWith('CREATE TABLE'))
      .map((s) => /^CREATE TABLE "[^"]+"\."([^"]+)"/.exec(s)?.[1] ?? '');
    expect(new Set(copies).size).toBe(3);
    for (const copy of copies) {
      expect(Buffer.byteLength(copy)).toBeLessThanOrEqual(63);
      expect(copy.startsWith(`${approvalId}__`)).toBe(true);
    }
    await database.withClient(async (s) => {
      await s.query('begin');
      try {
        for (const statement of statements) await s.query(statement);
        const { rows } = await s.query(
          `select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = $1 order by 1`,
          [backupSchema],
        );
        expect(rows.map((r) => r.relname)).toEqual([...copies].sort());
      } finally {
        await s.query('rollback');
      }
    });

    // "public"."app__t" and "app"."t" would both be "<id>__app__t": both get a hash instead.
    const clash = tableCopyStatements('b', 'APR-1', [
      { schema: 'public', name: 'app__t' },
      { schema: 'app', name: 't' },
    ]).filter((s) => s.startsWith('CREATE TABLE'));
    expect(clash[0]).not.toEqual(clash[1]);
    expect(clash[0]).toMatch(/"APR-1__app__t_[0-9a-f]{12}"/);
  });

  it('copies tables whose names hold quotes, backslashes and SQL safely', async () => {
    const hostile = `x"; drop table y; --'\\`;
    await run(`create table ${schema}.${quoteIdentifier(hostile)} (id int)`);
    await run(`insert into ${schema}.${quoteIdentifier(hostile)} values (42)`);
    const approvalId = `APR-"quoted'`;
    const rows = await database.withClient(async (s) => {
      await s.query('begin');
      try {
        for (const statement of tableCopyStatements(backupSchema, approvalId, [{ schema, name: hostile }])) {
          await s.query(statement);
        }
        const copy = `${quoteIdentifier(backupSchema)}.${quoteIdentifier(`${approvalId}__${schema}__${hostile}`)}`;
        const { rows: copied } = await s.query(
          `select id, obj_description(to_regclass($1)) as note from ${copy}`,
          [copy],
        );
        return copied;
      } finally {
        await s.query('rollback');
      }
    });
    expect(rows).toEqual([
      { id: 42, note: `approval-gate backup of "${schema}"."x""; drop table y; --'\\" before ${approvalId}` },
    ]);
  });

  it('refuses identifiers Postgres would truncate or cannot hold', () => {
    expect(quoteIdentifier('a"b')).toBe('"a""b"');
    expect(quoteIdentifier('x'.repeat(63))).toBe(`"${'x'.repeat(63)}"`);
    for (const bad of ['', 'a\0b', 'x'.repeat(64), 'é'.repeat(32)]) {
      expect(() => quoteIdentifier(bad)).toThrow(expect.objectContaining({ code: 'INVALID_IDENTIFIER' }));
    }
    expect(() => tableCopyStatements('x'.repeat(64), 'APR-1', [{ schema: 'public', name: 't' }])).toThrow(
      /cannot be an identifier/,
    );
  });
});
