import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, openPgDatabase, type Database } from '../../src/db/index.js';
import { openTestDatabase, TEST_DATABASE_URL } from '../helpers/postgres.js';

/** The other side: a connection of its own, to end the gate's connections as a server restart would. */
let admin: Database;

beforeAll(() => {
  admin = openTestDatabase();
});

afterAll(async () => {
  await admin.close();
});

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function backendPid(database: Database): Promise<number> {
  const { rows } = await database.withClient((s) => s.query('select pg_catalog.pg_backend_pid() as pid'));
  return Number(rows[0]?.pid);
}

async function terminate(pid: number): Promise<void> {
  await admin.withClient((s) => s.query('select pg_catalog.pg_terminate_backend($1)', [pid]));
}

describe('pg: a pool reached only through scoped sessions', () => {
  it('reports an unreachable server as DATABASE_UNREACHABLE at once, without the connection string', async () => {
    const url = 'postgres://postgres:s3cret@127.0.0.1:1/none';
    const database = openDatabase('down', { client: 'pg', connection_env: 'DOWN_URL' }, { DOWN_URL: url });
    const started = Date.now();
    try {
      const error = await database.withClient((s) => s.query('select 1')).catch((e: unknown) => e);
      expect(error).toMatchObject({
        code: 'DATABASE_UNREACHABLE',
        message: expect.stringContaining('ECONNREFUSED'),
      });
      expect((error as Error).message).not.toContain('s3cret');
      expect(Date.now() - started).toBeLessThan(5000);
    } finally {
      await database.close();
    }
  });

  it('gives a session its connection back to the pool, and closes one whose state is unknown', async () => {
    const database = openTestDatabase({ maxConnections: 1 });
    try {
      const first = await backendPid(database);
      expect(await backendPid(database)).toBe(first);
      await database.withClient(async (s) => s.dispose('state unknown'));
      expect(await backendPid(database)).not.toBe(first);
    } finally {
      await database.close();
    }
  });

  it('survives the server ending a connection while a session holds it idle, and never reuses it', async () => {
    const database = openTestDatabase({ maxConnections: 1 });
    try {
      let ended = 0;
      await database.withClient(async (s) => {
        ended = Number((await s.query('select pg_catalog.pg_backend_pid() as pid')).rows[0]?.pid);
        // Between two queries: the connection emits 'error' with no query to reject.
        await terminate(ended);
        await pause(200);
      });
      const next = await backendPid(database);
      expect(next).not.toBe(ended);
      // And an idle pooled connection ended by the server is dropped by the pool, not reported as a crash.
      await terminate(next);
      await pause(200);
      expect(await backendPid(database)).not.toBe(next);
    } finally {
      await database.close();
    }
  });

  it('refuses more than one statement in one query (extended protocol)', async () => {
    const database = openTestDatabase();
    try {
      await expect(database.withClient((s) => s.query('select 1; select 2'))).rejects.toMatchObject({
        code: '42601',
      });
    } finally {
      await database.close();
    }
  });

  it("lends knex the pool's own connections for the gate's migrations, and keeps the pool open", async () => {
    const database = openPgDatabase('test', TEST_DATABASE_URL, {
      applicationName: 'approval-gate-knex-check',
    });
    try {
      const name = await database.withKnex(async (knex) => {
        const result = await knex.raw<{ rows: { name: string }[] }>(
          "select current_setting('application_name') as name",
        );
        return result.rows[0]?.name;
      });
      expect(name).toBe('approval-gate-knex-check');
      expect(await backendPid(database)).toBeGreaterThan(0);
    } finally {
      await database.close();
    }
  });
});
