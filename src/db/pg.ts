import type { Pool, PoolClient, QueryConfig } from 'pg';
import { describeError, GateError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Database } from './database.js';
import { withKnexInstance } from './knex.js';
import { closedError, scopedSession } from './scoped.js';
import type { PooledSession, QueryResult } from './session.js';

export interface PgOptions {
  /** Shown in pg_stat_activity; 'approval-gate' unless a bench or test tells its sessions apart. */
  readonly applicationName?: string;
  /** Connections in the pool (4). A test that needs "the session the last job left" uses 1. */
  readonly maxConnections?: number;
  readonly log?: Logger;
}

/**
 * An unreachable server is noticed in seconds, not after a TCP timeout of minutes: an approved
 * migration then waits for the database with backoff (nothing was sent) instead of holding a call.
 */
const CONNECTION_TIMEOUT_MS = 10_000;

/** pg's QueryConfig lacks `queryMode`, which pg reads: 'extended' even for a query without params. */
interface ExtendedQuery extends QueryConfig {
  readonly queryMode: 'extended';
}

/**
 * A Postgres server through a pg.Pool. The connection string is never logged, rendered or returned.
 * pg is loaded on first use, so a server that never reaches a database does not load it.
 */
export function openPgDatabase(name: string, connectionString: string, options: PgOptions = {}): Database {
  let pool: Promise<Pool> | null = null;
  let closed = false;
  const log = options.log;
  const poolOf = (): Promise<Pool> => {
    if (closed) return Promise.reject(closedError(name));
    return (pool ??= import('pg').then(({ default: pg }) => {
      const created = new pg.Pool({
        connectionString,
        application_name: options.applicationName ?? 'approval-gate',
        max: options.maxConnections ?? 4,
        connectionTimeoutMillis: CONNECTION_TIMEOUT_MS,
      });
      // An idle connection the server closed (restart, pg_terminate_backend) is reported here and
      // dropped by the pool; without a listener the 'error' event would end the process.
      created.on('error', (error) =>
        log?.warn({ database: name, err: describeError(error) }, 'idle connection lost'),
      );
      return created;
    }));
  };

  return {
    name,
    client: 'pg',
    async withClient(work) {
      const connection = await connect(name, await poolOf());
      // A connection that errors between queries has no query to reject: it emits 'error' instead,
      // which would end the process without a listener, and is broken for good.
      let broken: Error | null = null;
      const onError = (error: Error) => {
        broken ??= error;
      };
      connection.on('error', onError);
      const session = scopedSession(pgSession(connection, (reason) => (broken ??= new Error(reason))));
      try {
        return await work(session.session);
      } finally {
        session.end();
        connection.off('error', onError);
        // release(error) closes the connection instead of pooling it: its state is unknown.
        connection.release(broken ?? undefined);
      }
    },
    async withKnex(work) {
      // knex borrows the pool through its public `connectionPool` option and never ends it: the
      // migrations share its connections, its timeout and its application_name.
      const borrowed = await poolOf();
      return withKnexInstance({ client: 'pg', connectionPool: borrowed }, log, work);
    },
    async close() {
      closed = true;
      const opened = pool;
      pool = null;
      if (opened) await (await opened).end();
    },
  };
}

async function connect(name: string, pool: Pool): Promise<PoolClient> {
  try {
    return await pool.connect();
  } catch (error) {
    throw new GateError(
      'DATABASE_UNREACHABLE',
      `The database "${name}" could not be reached, so nothing was sent: ${describeError(error)}`,
      { cause: error, context: { database: name } },
    );
  }
}

function pgSession(connection: PoolClient, markBroken: (reason: string) => void): PooledSession {
  return {
    async query(text, params): Promise<QueryResult> {
      const config: ExtendedQuery = {
        text,
        ...(params === undefined ? {} : { values: [...params] }),
        queryMode: 'extended',
      };
      const result = await connection.query<Record<string, unknown>>(config);
      return { rows: result.rows, rowCount: result.rowCount ?? null };
    },
    dispose(reason) {
      markBroken(reason);
    },
  };
}
