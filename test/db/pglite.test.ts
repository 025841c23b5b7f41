import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openPgliteDatabase, type Database } from '../../src/db/index.js';

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'gate-pglite-db-'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function count(database: Database, table: string): Promise<number> {
  const { rows } = await database.withClient((s) => s.query(`select count(*)::int as n from ${table}`));
  return Number(rows[0]?.n);
}

describe('PGlite: one connection, one session at a time', () => {
  it("never lets a second session's queries land inside the first session's transaction", async () => {
    const database = openPgliteDatabase('embedded', 'memory://');
    try {
      await database.withClient((s) => s.query('create table t (x int)'));
      const events: string[] = [];
      const first = database.withClient(async (s) => {
        await s.query('begin');
        await s.query('insert into t values (1)');
        events.push('first: inserted, not committed');
        await pause(50);
        await s.query('rollback');
        events.push('first: rolled back');
      });
      const second = database.withClient(async (s) => {
        events.push('second: starts');
        await pause(10);
        return (await s.query('select count(*)::int as n from t')).rows[0]?.n;
      });
      const [, seen] = await Promise.all([first, second]);
      // Interleaved on the one connection, the second session would have seen (and been part of)
      // the first one's open transaction.
      expect(seen).toBe(0);
      expect(events).toEqual(['first: inserted, not committed', 'first: rolled back', 'second: starts']);
    } finally {
      await database.close();
    }
  });

  it('goes on with the next session after one that threw', async () => {
    const database = openPgliteDatabase('embedded', 'memory://');
    try {
      await expect(database.withClient((s) => s.query('select nonsense'))).rejects.toMatchObject({
        code: '42703',
      });
      expect((await database.withClient((s) => s.query('select 1 as one'))).rows).toEqual([{ one: 1 }]);
    } finally {
      await database.close();
    }
  });

  it('refuses more than one statement in one query (extended protocol)', async () => {
    const database = openPgliteDatabase('embedded', 'memory://');
    try {
      await database.withClient((s) => s.query('create table kept (x int)'));
      await expect(database.withClient((s) => s.query('select 1; drop table kept'))).rejects.toMatchObject({
        code: '42601',
      });
      expect(await count(database, 'kept')).toBe(0);
    } finally {
      await database.close();
    }
  });
});

describe('PGlite: the instance is owned by the Database', () => {
  it('runs knex on the same instance and keeps it open when knex is destroyed', async () => {
    const database = openPgliteDatabase('embedded', 'memory://');
    try {
      await database.withKnex(async (knex) => {
        await knex.schema.createTable('made_by_knex', (t) => t.integer('x'));
        await knex('made_by_knex').insert({ x: 1 });
      });
      // An in-memory database closed by knex would have lost the table.
      expect(await count(database, 'made_by_knex')).toBe(1);
    } finally {
      await database.close();
    }
  });

  it('locks its data directory while open and unlocks it on close', async () => {
    const dataDir = path.join(dir, 'locked');
    const first = openPgliteDatabase('main_db', dataDir);
    const second = openPgliteDatabase('main_db', dataDir);
    try {
      await first.withClient((s) => s.query('create table survives (x int)'));
      await expect(second.withClient((s) => s.query('select 1'))).rejects.toMatchObject({
        code: 'DATABASE_LOCKED',
        message: expect.stringContaining('is already open in this process'),
      });
      await first.close();
      expect(await count(second, 'survives')).toBe(0);
    } finally {
      await first.close();
      await second.close();
    }
  });

  it('opens a disposed instance afresh on disk, so nothing of the session survives it', async () => {
    const dataDir = path.join(dir, 'disposed');
    const database = openPgliteDatabase('main_db', dataDir);
    try {
      await database.withClient(async (s) => {
        await s.query('create table kept (x int)');
        await s.query('create temporary table session_only (x int)');
        await s.query("select pg_catalog.set_config('search_path', 'nowhere', false)");
        s.dispose('state unknown');
      });
      const { rows } = await database.withClient((s) =>
        s.query(
          `select pg_catalog.to_regclass('pg_temp.session_only') is null as no_temp,
                  pg_catalog.current_setting('search_path') as search_path`,
        ),
      );
      expect(rows[0]?.no_temp).toBe(true);
      expect(rows[0]?.search_path).not.toBe('nowhere');
      expect(await count(database, 'kept')).toBe(0);
    } finally {
      await database.close();
    }
  });

  it('keeps an in-memory instance when a session is disposed: closing it would lose the database', async () => {
    const database = openPgliteDatabase('embedded', 'memory://');
    try {
      await database.withClient(async (s) => {
        await s.query('create table kept (x int)');
        s.dispose('state unknown');
      });
      expect(await count(database, 'kept')).toBe(0);
    } finally {
      await database.close();
    }
  });
});
