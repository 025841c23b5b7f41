import { randomBytes } from 'node:crypto';
import knexFactory, { type Knex } from 'knex';
import pg from 'pg';
import ClientPgLite from 'knex-pglite';
import { openPgDatabase, type Database } from '../../src/db/index.js';

/** The real server on this machine. CI must fail, never skip, when it does not answer. */
export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

/**
 * The connection variables of the test workspace's databases (helpers/workspace.ts): main_db,
 * staging_db and dev_db, one config entry per environment, all the one test database.
 */
export const TEST_DATABASE_ENV = {
  TEST_MAIN_DB_URL: TEST_DATABASE_URL,
  TEST_STAGING_DB_URL: TEST_DATABASE_URL,
  TEST_DEV_DB_URL: TEST_DATABASE_URL,
} as const;

export function uniqueName(prefix: string): string {
  return `${prefix}_${randomBytes(4).toString('hex')}`;
}

/** A knex on the real test database; throws (failing the suite) when Postgres is unreachable. */
export async function connectTestDatabase(): Promise<Knex> {
  const knex = knexFactory({ client: 'pg', connection: TEST_DATABASE_URL, pool: { min: 0, max: 4 } });
  try {
    await knex.raw('select 1');
  } catch (error) {
    await knex.destroy();
    throw new Error(
      `Postgres at ${TEST_DATABASE_URL.replace(/:[^:@/]*@/, ':***@')} is not reachable; these tests need it ` +
        `(start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start). ${String(error)}`,
    );
  }
  return knex;
}

export async function columnsOf(knex: Knex, table: string, schema = 'public'): Promise<string[]> {
  const rows = await knex('information_schema.columns')
    .where({ table_schema: schema, table_name: table })
    .orderBy('ordinal_position')
    .pluck('column_name');
  return rows as string[];
}

/**
 * The gate's own access to the real test database (a pg.Pool, extended protocol), as the executor
 * uses it. `maxConnections: 1` gives every session the connection the last one left behind.
 */
export function openTestDatabase(
  options: { maxConnections?: number; applicationName?: string } = {},
): Database {
  return openPgDatabase('test', TEST_DATABASE_URL, options);
}

/**
 * A knex that owns a PGlite instance on `config.path`, for tests that set up or inspect an embedded
 * database while no server has it open. No lock: the server under test is the one that must lock.
 */
export function openEmbeddedKnex(_name: string, config: { client: 'pglite'; path: string }): Knex {
  return knexFactory({
    client: ClientPgLite,
    dialect: 'postgres',
    connection: config.path === 'memory://' ? {} : { filename: config.path },
  } as Knex.Config);
}

/**
 * Why the real test database cannot be reached, or undefined when it can. With CI set, an unreachable
 * server throws here (the test file fails): CI must never skip what needs Postgres.
 */
export async function unreachableTestDatabase(what: string): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: TEST_DATABASE_URL, connectionTimeoutMillis: 3_000 });
  let reason: string | undefined;
  try {
    await client.connect();
  } catch (error) {
    reason = String(error);
  } finally {
    await client.end().catch(() => undefined);
  }
  if (reason !== undefined && process.env.CI) {
    throw new Error(`Postgres at ${TEST_DATABASE_URL} is unreachable; CI must not skip ${what}: ${reason}`);
  }
  return reason;
}
