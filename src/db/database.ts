import type { Knex } from 'knex';
import type { PooledSession } from './session.js';

/**
 * A configured database: a pg.Pool, or one embedded PGlite instance, reached only through scoped
 * helpers that give the connection back (or close it) in `finally`, whatever `work` does.
 */
export interface Database {
  readonly name: string;
  readonly client: 'pg' | 'pglite';
  /**
   * Runs `work` on one connection that no other session uses meanwhile. Throws DATABASE_UNREACHABLE
   * when no connection could be had (nothing was sent), DATABASE_LOCKED when another process holds
   * the embedded database.
   */
  withClient<T>(work: (session: PooledSession) => Promise<T>): Promise<T>;
  /**
   * A knex instance over this database's connections, for the gate's own knex migrations only;
   * destroyed when `work` ends. Application SQL never goes through knex (see SqlSession).
   */
  withKnex<T>(work: (knex: Knex) => Promise<T>): Promise<T>;
  /** Waits for running sessions, then closes the pool or the instance (and its lock). */
  close(): Promise<void>;
}
