import type { PGlite } from '@electric-sql/pglite';
import type { Knex } from 'knex';
import { describeError, GateError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Database } from './database.js';
import { lockEmbeddedDatabase } from './embedded-lock.js';
import { withKnexInstance } from './knex.js';
import { closedError, scopedSession } from './scoped.js';

export const MEMORY = 'memory://';

/**
 * One session at a time, in call order. PGlite is one connection: its own mutexes serialise single
 * queries, but a session is several queries (BEGIN … COMMIT, a job's statements with the gate's
 * reads between them) that must not interleave with another session's. PGlite's public
 * `runExclusive` takes the mutex its own `query` needs, so queries cannot run inside it.
 */
class Turns {
  #tail: Promise<unknown> = Promise.resolve();

  take<T>(work: () => Promise<T>): Promise<T> {
    const turn = this.#tail.then(work);
    this.#tail = turn.catch(() => undefined);
    return turn;
  }
}

interface Opened {
  readonly instance: PGlite;
  readonly release: () => Promise<void>;
}

/**
 * The embedded database: one PGlite instance, owned by this object alone. The data directory is
 * locked against other processes before the instance opens and unlocked after it has closed.
 * PGlite is loaded on first use (it is large, and a server on pg never needs it).
 */
export function openPgliteDatabase(name: string, dataDir: string, options: { log?: Logger } = {}): Database {
  const turns = new Turns();
  let opened: Opened | null = null;
  let closed = false;
  /** Set by dispose(): the instance's state is unknown, so it is closed and opened afresh. */
  let suspect: string | null = null;

  const open = async (): Promise<Opened> => {
    if (closed) throw closedError(name);
    if (opened) return opened;
    let release: () => Promise<void> = async () => undefined;
    try {
      if (dataDir !== MEMORY) release = await lockEmbeddedDatabase(name, dataDir);
      const { PGlite } = await import('@electric-sql/pglite');
      const instance = dataDir === MEMORY ? new PGlite() : new PGlite(dataDir);
      await instance.waitReady;
      opened = { instance, release };
      return opened;
    } catch (error) {
      await release();
      // DATABASE_LOCKED as it is: waiting would not help, another process must stop first.
      if (error instanceof GateError) throw error;
      throw new GateError(
        'DATABASE_UNREACHABLE',
        `The embedded database "${name}" (${dataDir}) could not be opened, so nothing was sent: ${describeError(error)}`,
        { cause: error, context: { database: name } },
      );
    }
  };

  const shut = async () => {
    const current = opened;
    opened = null;
    if (!current) return;
    try {
      if (!current.instance.closed) await current.instance.close();
    } finally {
      await current.release();
    }
  };

  /** Ends a session: an instance disposed of is closed, so the next session opens a clean one. */
  const endSession = async () => {
    if (suspect === null) return;
    const reason = suspect;
    suspect = null;
    // In memory there is nothing to reopen from: closing would lose the database itself.
    if (dataDir === MEMORY) return;
    options.log?.warn({ database: name, reason }, 'closing the embedded database to reset its session');
    await shut();
  };

  return {
    name,
    client: 'pglite',
    withClient(work) {
      return turns.take(async () => {
        const { instance } = await open();
        const session = scopedSession({
          async query(text, params) {
            // PGlite's query() always uses the extended protocol.
            const result = await instance.query<Record<string, unknown>>(
              text,
              params === undefined ? undefined : [...params],
            );
            return { rows: result.rows, rowCount: result.affectedRows ?? null };
          },
          dispose(reason) {
            suspect ??= reason;
          },
        });
        try {
          return await work(session.session);
        } finally {
          session.end();
          await endSession();
        }
      });
    },
    withKnex(work) {
      return turns.take(async () => {
        const { instance } = await open();
        const { default: ClientPgLite } = await import('knex-pglite');
        // knex-pglite closes the instance it was given when knex is destroyed; knex gets a view
        // whose close() does nothing, because this Database owns the instance and closes it last.
        const borrowed = {
          waitReady: Promise.resolve(),
          query: (text: string, params?: unknown[], queryOptions?: object) =>
            instance.query(text, params, queryOptions),
          close: async () => undefined,
        };
        return withKnexInstance(
          { client: ClientPgLite, dialect: 'postgres', connection: { pglite: borrowed } } as Knex.Config,
          options.log,
          work,
        );
      });
    },
    close() {
      closed = true;
      return turns.take(shut);
    },
  };
}
