import { GateError } from '../errors.js';
import type { PooledSession, SqlSession } from './session.js';

/**
 * A session that refuses queries once its scope has ended: a reference kept past `withClient`
 * would run on a connection given back to the pool, or outside its turn on PGlite's one connection.
 */
export function scopedSession(inner: PooledSession): { readonly session: PooledSession; end(): void } {
  let ended = false;
  return {
    session: {
      query(text, params) {
        if (ended) {
          return Promise.reject(
            new GateError('SESSION_ENDED', 'A database session was used after its withClient scope ended.'),
          );
        }
        return inner.query(text, params);
      },
      dispose(reason) {
        inner.dispose(reason);
      },
    },
    end() {
      ended = true;
    },
  };
}

export function closedError(name: string): GateError {
  return new GateError('DATABASE_CLOSED', `The database "${name}" has been closed; nothing was sent.`, {
    context: { database: name },
  });
}

/**
 * Runs `work` between BEGIN and COMMIT on `session`; anything thrown rolls back (best effort: a
 * connection that failed has rolled back already) and is thrown on. A failing COMMIT is thrown as is.
 */
export async function withTransaction<T>(session: SqlSession, work: () => Promise<T>): Promise<T> {
  await session.query('begin');
  let result: T;
  try {
    result = await work();
  } catch (error) {
    await session.query('rollback').catch(() => undefined);
    throw error;
  }
  await session.query('commit');
  return result;
}

/**
 * Runs `work` holding the session-level advisory lock `keys`, waiting for it if another session
 * holds it; always unlocked in `finally`. Functions are schema-qualified: this runs after a
 * migration's statements, whatever search_path they set.
 */
export async function withAdvisoryLock<T>(
  session: SqlSession,
  keys: readonly [number, number],
  work: () => Promise<T>,
): Promise<T> {
  await session.query('select pg_catalog.pg_advisory_lock($1, $2)', keys);
  try {
    return await work();
  } finally {
    // A dead connection has lost the lock with it; the error that killed it is the one to report.
    await session.query('select pg_catalog.pg_advisory_unlock($1, $2)', keys).catch(() => undefined);
  }
}
