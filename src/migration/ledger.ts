import { setTimeout as sleep } from 'node:timers/promises';
import { GATE_MIGRATION_NAMES, gateMigrationSource } from '../../migrations/index.js';
import type { Database, SqlSession } from '../db/index.js';

/**
 * How long a gate waits for another one preparing the same ledger (another server instance, or
 * another configured name of the same database) before it gives up: far longer than the gate's
 * few migrations take.
 */
const CONCURRENT_PREPARE_WAIT_MS = 10_000;
const RETRY_DELAYS_MS = [50, 100, 200, 400, 800] as const;

/**
 * Creates or upgrades the gate's own tables (migrations/) in `schema`. Two gates preparing one
 * ledger at once collide in Postgres (`create … if not exists` is check-then-create: one gets a
 * duplicate-key error) and in knex's migration lock (one gets MigrationLocked, it does not wait);
 * the one that lost waits and tries again, and then finds the ledger made. knex is loaded only when
 * there is something to migrate.
 */
export async function prepareLedger(
  database: Database,
  schema: string,
  options: { readonly waitMs?: number } = {},
): Promise<void> {
  const deadline = Date.now() + (options.waitMs ?? CONCURRENT_PREPARE_WAIT_MS);
  for (let attempt = 0; ; attempt += 1) {
    try {
      await createOrUpgrade(database, schema);
      return;
    } catch (error) {
      if (!preparedConcurrently(error)) throw error;
      if (Date.now() >= deadline) throw stillLocked(error, schema);
      await sleep(RETRY_DELAYS_MS[Math.min(attempt, RETRY_DELAYS_MS.length - 1)]);
    }
  }
}

/**
 * knex's migration lock held past the wait: another gate is migrating still, or one died while it
 * was, and then the lock stays until someone releases it. Says how.
 */
function stillLocked(error: Error, schema: string): Error {
  if (error.name !== 'MigrationLocked') return error;
  return new Error(
    `knex's migration lock ("${schema}".knex_migrations_lock) is still held: another gate is upgrading this ` +
      'ledger, or one stopped while it was. If no gate is starting, release it with: ' +
      `UPDATE "${schema}".knex_migrations_lock SET is_locked = 0`,
    { cause: error },
  );
}

async function createOrUpgrade(database: Database, schema: string): Promise<void> {
  // First contact goes through withClient: no connection at all is DATABASE_UNREACHABLE.
  const applied = await database.withClient(async (session) => {
    await session.query(`create schema if not exists "${schema}"`);
    // As knex creates them (table-creator.js), so that knex finds them made; and the lock row, of
    // which two gates that both found the table empty each inserted one, as knex does (with two
    // rows, knex's lock can never be taken). The second row goes: with two rows the lock was never
    // taken, so both say 0.
    await session.query(
      `create table if not exists "${schema}".knex_migrations ` +
        '(id serial primary key, name varchar(255), batch integer, migration_time timestamptz)',
    );
    await session.query(
      `create table if not exists "${schema}".knex_migrations_lock (index serial primary key, is_locked integer)`,
    );
    await session.query(
      `insert into "${schema}".knex_migrations_lock (is_locked) ` +
        `select 0 where not exists (select from "${schema}".knex_migrations_lock)`,
    );
    await session.query(
      `delete from "${schema}".knex_migrations_lock ` +
        `where index > (select min(index) from "${schema}".knex_migrations_lock)`,
    );
    return appliedMigrations(session, schema);
  });
  if (GATE_MIGRATION_NAMES.every((name) => applied.has(name))) return;
  await database.withKnex((knex) =>
    knex.migrate.latest({
      migrationSource: gateMigrationSource(schema),
      schemaName: schema,
      tableName: 'knex_migrations',
    }),
  );
}

/** The gate migrations knex has recorded as applied in `schema` (none before the first). */
async function appliedMigrations(session: SqlSession, schema: string): Promise<Set<string>> {
  const table = `"${schema}".knex_migrations`;
  const { rows: present } = await session.query('select pg_catalog.to_regclass($1) is not null as present', [
    table,
  ]);
  if (present[0]?.present !== true) return new Set();
  const { rows } = await session.query(`select name from ${table}`);
  return new Set(rows.map((row) => String(row.name)));
}

/**
 * SQLSTATEs of a create that lost a race with the same create: unique_violation (on a catalog),
 * duplicate_schema, duplicate_table, duplicate_object (the table's row type); and deadlock_detected,
 * which two transactions creating in one schema can meet.
 */
const LOST_CREATE_RACE = new Set(['23505', '42P06', '42P07', '42710', '40P01']);

/** An error another gate's preparation of the same ledger causes, which waiting resolves. */
function preparedConcurrently(error: unknown): error is Error {
  if (!(error instanceof Error)) return false;
  // knex's LockError: another migrator holds knex_migrations_lock.
  if (error.name === 'MigrationLocked') return true;
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' && LOST_CREATE_RACE.has(code);
}
