import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { inspect } from 'node:util';
import knexFactory, { type Knex } from 'knex';
import ClientPgLite from 'knex-pglite';
import type { DatabaseConfig } from './config.js';
import { GateError } from './errors.js';
import { createLogger, type Logger } from './log.js';

let defaultKnexLog: Logger | undefined;

/**
 * knex's own logger prints warnings (a failed connection, with its stack) with console.log, i.e. to
 * stdout: the MCP protocol channel in stdio mode, and the data of `approvals show --json`. Every knex
 * instance logs through pino to stderr instead.
 */
function knexLog(log?: Logger): Knex.Logger {
  defaultKnexLog ??= createLogger();
  const logger = (log ?? defaultKnexLog).child({ component: 'knex' });
  const text = (message: unknown) => (typeof message === 'string' ? message : inspect(message, { depth: 5 }));
  return {
    warn: (message: unknown) => logger.warn(text(message)),
    error: (message: unknown) => logger.error(text(message)),
    debug: (message: unknown) => logger.debug(text(message)),
    deprecate: (method: string, alternative: string) =>
      logger.warn(`${method} is deprecated, please use ${alternative}`),
  };
}

/**
 * Opens a knex instance for a configured database. For `pg` the connection string comes from the
 * environment variable the config names; it is never logged, rendered or returned. knex's own
 * messages go to `log` (by default a logger of its own), on stderr.
 */
export function openDatabase(
  name: string,
  config: DatabaseConfig,
  env: NodeJS.ProcessEnv = process.env,
  log?: Logger,
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
      // An unreachable server is noticed in seconds, not knex's default minute: an approved migration
      // then waits for the database with backoff (nothing was sent) instead of holding a tool call.
      acquireConnectionTimeout: 10_000,
      log: knexLog(log),
    });
  }
  if (config.path === 'memory://') {
    return knexFactory({
      client: ClientPgLite,
      dialect: 'postgres',
      connection: {},
      log: knexLog(log),
    } as Knex.Config);
  }
  const release = lockEmbeddedDatabase(name, config.path);
  const knex = knexFactory({
    client: ClientPgLite,
    dialect: 'postgres',
    connection: { filename: config.path },
    log: knexLog(log),
  } as Knex.Config);
  // knex.destroy() ends in client.destroy(); the lock goes with the last connection.
  const client = knex.client as { destroy: (callback?: unknown) => Promise<void> };
  const destroy = client.destroy.bind(client);
  client.destroy = async (callback?: unknown) => {
    try {
      await destroy(callback);
    } finally {
      release();
    }
  };
  return knex;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * PGlite runs inside one process and has no locking of its own: two processes opening one data
 * directory (two Claude Desktop windows, say) would corrupt it. A lock file beside the directory,
 * holding the owner's pid, refuses the second opener; a lock left by a dead process is taken over.
 * Several instances need a real Postgres server.
 */
export function lockEmbeddedDatabase(name: string, dataDir: string): () => void {
  const lockFile = path.join(path.dirname(dataDir), `.${path.basename(dataDir)}.approval-gate.lock`);
  mkdirSync(path.dirname(dataDir), { recursive: true });
  for (let attempt = 0; attempt < 3; attempt += 1) {
    try {
      writeFileSync(lockFile, String(process.pid), { flag: 'wx' });
      let released = false;
      return () => {
        if (released) return;
        released = true;
        rmSync(lockFile, { force: true });
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const owner = Number(readFileSync(lockFile, 'utf8').trim());
      if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && isAlive(owner)) {
        throw new GateError(
          'DATABASE_LOCKED',
          `The embedded database "${name}" (${dataDir}) is open in another process (pid ${owner}). ` +
            'PGlite cannot be shared between processes; stop the other one, or use a real Postgres server for several instances.',
          { context: { database: name } },
        );
      }
      rmSync(lockFile, { force: true });
    }
  }
  throw new GateError(
    'DATABASE_LOCKED',
    `Could not take the lock ${lockFile} of the embedded database "${name}".`,
  );
}

export interface QueryResult {
  readonly rows: Record<string, unknown>[];
  /** Rows the statement affected, where Postgres reports it (INSERT/UPDATE/DELETE/…); else null. */
  readonly rowCount: number | null;
}

/**
 * One connection, taking SQL verbatim: no `?` placeholder rewriting, unlike `knex.raw`. Every query
 * goes through the extended query protocol, where Postgres refuses a text holding more than one
 * command ("cannot insert multiple commands into a prepared statement"): whatever our parser and
 * Postgres' lexer think of the text, one call can never run two statements.
 */
export interface SqlSession {
  query(text: string, params?: readonly unknown[]): Promise<QueryResult>;
}

/** A pooled session that can refuse to go back to the pool when its state is no longer known. */
export interface PooledSession extends SqlSession {
  /** Closes the connection instead of returning it to the pool (pg); PGlite has only one. */
  dispose(reason: string): void;
}

interface DriverResult {
  rows?: Record<string, unknown>[];
  rowCount?: number | null;
  affectedRows?: number;
}

interface PgConnection {
  query(config: { text: string; values?: unknown[]; queryMode: 'extended' }): Promise<DriverResult>;
  /** knex's pool drops a connection carrying this mark instead of handing it out again. */
  __knex__disposed?: string;
}

interface PgliteConnection {
  /** PGlite's query() always uses the extended protocol. */
  query(text: string, params?: unknown[]): Promise<DriverResult>;
  waitReady: Promise<void>;
}

function isPglite(connection: PgConnection | PgliteConnection): connection is PgliteConnection {
  return 'waitReady' in connection;
}

/**
 * Runs `work` on one pooled connection of `knex`, passing SQL straight to the driver (pg's Client or
 * PGlite). knex.raw rewrites every `?` into a bind parameter even without bindings, which would turn
 * the jsonb `?` operator or a '?' literal in a migration into different SQL than the human approved.
 */
export async function withSession<T>(knex: Knex, work: (session: PooledSession) => Promise<T>): Promise<T> {
  const client = knex.client as {
    acquireConnection(): Promise<unknown>;
    releaseConnection(c: unknown): Promise<unknown>;
  };
  const connection = (await client.acquireConnection()) as PgConnection | PgliteConnection;
  const session: PooledSession = {
    async query(text, params) {
      const values = params === undefined ? undefined : [...params];
      const result = isPglite(connection)
        ? await connection.query(text, values)
        : await connection.query({ text, ...(values ? { values } : {}), queryMode: 'extended' });
      return { rows: result.rows ?? [], rowCount: result.rowCount ?? result.affectedRows ?? null };
    },
    dispose(reason) {
      if (!isPglite(connection)) connection.__knex__disposed = reason;
    },
  };
  try {
    return await work(session);
  } finally {
    await client.releaseConnection(connection);
  }
}
