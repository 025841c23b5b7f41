import type { DatabaseConfig } from '../config.js';
import { GateError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Database } from './database.js';
import { openPgDatabase } from './pg.js';
import { openPgliteDatabase } from './pglite.js';

export type { Database } from './database.js';
export { lockEmbeddedDatabase } from './embedded-lock.js';
export { openPgDatabase, type PgOptions } from './pg.js';
export { openPgliteDatabase } from './pglite.js';
export { withAdvisoryLock, withTransaction } from './scoped.js';
export type { PooledSession, QueryResult, SqlSession } from './session.js';

/**
 * Opens a configured database. Nothing connects, loads a driver or takes a lock until first use.
 * For `pg` the connection string comes from the environment variable the config names; it is never
 * logged, rendered or returned. Driver and knex messages go to `log`, on stderr.
 */
export function openDatabase(
  name: string,
  config: DatabaseConfig,
  env: NodeJS.ProcessEnv = process.env,
  log?: Logger,
): Database {
  if (config.client === 'pglite') {
    return openPgliteDatabase(name, config.path, log ? { log } : {});
  }
  const connectionString = env[config.connection_env];
  if (!connectionString) {
    throw new GateError(
      'DATABASE_NOT_CONFIGURED',
      `Database "${name}" reads its connection string from the environment variable ${config.connection_env}, which is not set.`,
      { context: { database: name } },
    );
  }
  return openPgDatabase(name, connectionString, log ? { log } : {});
}
