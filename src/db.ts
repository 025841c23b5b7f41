import knexFactory, { type Knex } from 'knex';
import ClientPgLite from 'knex-pglite';
import type { DatabaseConfig } from './config.js';
import { GateError } from './errors.js';

/**
 * Opens a knex instance for a configured database. For `pg` the connection string comes from the
 * environment variable the config names; it is never logged, rendered or returned.
 */
export function openDatabase(
  name: string,
  config: DatabaseConfig,
  env: NodeJS.ProcessEnv = process.env,
): Knex {
  if (config.client === 'pg') {
    const connectionString = env[config.connection_env];
    if (!connectionString) {
      throw new GateError(
        'DATABASE_NOT_CONFIGURED',
        `Database "${name}" reads its connection string from the environment variable ${config.connection_env}, which is not set.`,
        { context: { database: name } },
      );
    }
    return knexFactory({
      client: 'pg',
      connection: { connectionString, application_name: 'approval-gate' },
      pool: { min: 0, max: 4 },
    });
  }
  return knexFactory({
    client: ClientPgLite,
    dialect: 'postgres',
    connection: config.path === 'memory://' ? {} : { filename: config.path },
  } as Knex.Config);
}

export interface QueryResult {
  readonly rows: Record<string, unknown>[];
  /** Rows the statement affected, where Postgres reports it (INSERT/UPDATE/DELETE/…); else null. */
  readonly rowCount: number | null;
}

/** One connection, taking SQL verbatim: no `?` placeholder rewriting, unlike `knex.raw`. */
export interface SqlSession {
  query(text: string, params?: readonly unknown[]): Promise<QueryResult>;
}

interface DriverConnection {
  query(
    text: string,
    params?: unknown[],
  ): Promise<{ rows?: Record<string, unknown>[]; rowCount?: number | null; affectedRows?: number }>;
}

/**
 * Runs `work` on one pooled connection of `knex`, passing SQL straight to the driver (pg's Client or
 * PGlite). knex.raw rewrites every `?` into a bind parameter even without bindings, which would turn
 * the jsonb `?` operator or a '?' literal in a migration into different SQL than the human approved.
 */
export async function withSession<T>(knex: Knex, work: (session: SqlSession) => Promise<T>): Promise<T> {
  const client = knex.client as {
    acquireConnection(): Promise<unknown>;
    releaseConnection(c: unknown): Promise<unknown>;
  };
  const connection = (await client.acquireConnection()) as DriverConnection;
  const session: SqlSession = {
    async query(text, params) {
      const result = await connection.query(text, params === undefined ? undefined : [...params]);
      return { rows: result.rows ?? [], rowCount: result.rowCount ?? result.affectedRows ?? null };
    },
  };
  try {
    return await work(session);
  } finally {
    await client.releaseConnection(connection);
  }
}
