import { randomBytes } from 'node:crypto';
import knexFactory, { type Knex } from 'knex';

/** The real server on this machine. CI must fail, never skip, when it does not answer. */
export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

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
