import type { Database, PooledSession, SqlSession } from '../db/index.js';
import { describeError, GateError } from '../errors.js';

/**
 * Every job runs on a session in a known state and leaves nothing behind for the next one.
 *
 * Before: `DISCARD ALL` (session SETs, role and session authorization, temporary tables, prepared
 * statements, session advisory locks, LISTENs) and the settings that decide how Postgres reads SQL
 * text set to what the gate's parser assumes. After: `DISCARD ALL` again, and a connection that cannot
 * be reset is closed instead of going back to the pool. While the job runs, the gate reads the
 * watched settings after every statement (`settingsBreach`): a statement that changed how the next
 * one is lexed, or whose session it runs as, or (unless the reviewer was told) the gate's timeouts,
 * stops the job before anything else is sent.
 */

/** How Postgres lexes SQL text. The gate's parser assumes these; a job can never change them. */
export const LEXER_SETTINGS = {
  standard_conforming_strings: 'on',
  client_encoding: 'UTF8',
} as const;

/** Limits the gate sets for a job; a change is allowed only at a statement the reviewer saw flagged. */
export const TIMEOUT_SETTINGS = [
  'lock_timeout',
  'statement_timeout',
  'idle_in_transaction_session_timeout',
] as const;

export interface WatchedSettings {
  readonly standard_conforming_strings: string;
  readonly client_encoding: string;
  readonly lock_timeout: string;
  readonly statement_timeout: string;
  readonly idle_in_transaction_session_timeout: string;
  /** The session's authenticated identity; SET SESSION AUTHORIZATION would change it. */
  readonly session_user: string;
}

// Schema-qualified, so that a search_path set by the migration cannot redirect the gate's own reads.
const WATCHED_SQL = `select pg_catalog.current_setting('standard_conforming_strings') as standard_conforming_strings,
  pg_catalog.current_setting('client_encoding') as client_encoding,
  pg_catalog.current_setting('lock_timeout') as lock_timeout,
  pg_catalog.current_setting('statement_timeout') as statement_timeout,
  pg_catalog.current_setting('idle_in_transaction_session_timeout') as idle_in_transaction_session_timeout,
  session_user as session_user,
  current_user as current_user`;

export async function readWatchedSettings(session: SqlSession): Promise<WatchedSettings> {
  return (await readSession(session)).settings;
}

async function readSession(session: SqlSession): Promise<{ settings: WatchedSettings; role: string }> {
  const row = (await session.query(WATCHED_SQL)).rows[0] ?? {};
  const text = (key: keyof WatchedSettings | 'current_user') => String(row[key] ?? '');
  return {
    settings: {
      standard_conforming_strings: text('standard_conforming_strings'),
      client_encoding: text('client_encoding'),
      lock_timeout: text('lock_timeout'),
      statement_timeout: text('statement_timeout'),
      idle_in_transaction_session_timeout: text('idle_in_transaction_session_timeout'),
      session_user: text('session_user'),
    },
    role: text('current_user'),
  };
}

/**
 * Why the session may not go on after a statement moved it from `before` to `after`, or null. Pure.
 * `timeoutsMayChange`: the statement carries a TIMEOUT_OVERRIDE finding the reviewer saw.
 */
export function settingsBreach(
  before: WatchedSettings,
  after: WatchedSettings,
  { timeoutsMayChange }: { readonly timeoutsMayChange: boolean },
): string | null {
  for (const name of Object.keys(LEXER_SETTINGS) as (keyof typeof LEXER_SETTINGS)[]) {
    if (after[name] !== before[name]) {
      return (
        `it changed ${name} from ${before[name]} to ${after[name]}, which changes how Postgres reads the ` +
        'SQL that follows, so nothing after it could be shown to the reviewer as it would run'
      );
    }
  }
  if (after.session_user !== before.session_user) {
    return `it changed the session's authorization from ${before.session_user} to ${after.session_user}`;
  }
  if (!timeoutsMayChange) {
    for (const name of TIMEOUT_SETTINGS) {
      if (after[name] !== before[name]) {
        return (
          `it changed ${name} from ${before[name]} to ${after[name]}, lifting a limit the approval file ` +
          'promises, and no finding told the reviewer it would'
        );
      }
    }
  }
  return null;
}

/** Puts a pooled session into the state every job starts from, and checks that it is there. */
async function resetSession(session: SqlSession): Promise<WatchedSettings> {
  await session.query('discard all');
  await session.query(
    `select pg_catalog.set_config('standard_conforming_strings', $1, false),
            pg_catalog.set_config('client_encoding', $2, false)`,
    [LEXER_SETTINGS.standard_conforming_strings, LEXER_SETTINGS.client_encoding],
  );
  const { settings, role } = await readSession(session);
  const wrong = Object.entries(LEXER_SETTINGS).find(
    ([name, value]) => settings[name as keyof typeof LEXER_SETTINGS] !== value,
  );
  if (wrong || role !== settings.session_user) {
    throw new GateError(
      'SESSION_NOT_CLEAN',
      `The database session could not be put into a known state before the job (${
        wrong ? `${wrong[0]} is not ${wrong[1]}` : 'the role differs from the session user'
      }); nothing was sent.`,
    );
  }
  return settings;
}

/**
 * Runs a job on a session reset before it and after it. `work` gets the session and the settings
 * it started with. A session that cannot be reset afterwards is closed, never reused. No connection
 * at all is DATABASE_UNREACHABLE (from `withClient`): nothing was sent.
 */
export async function withJobSession<T>(
  database: Database,
  work: (session: PooledSession, baseline: WatchedSettings) => Promise<T>,
): Promise<T> {
  return database.withClient((session) => jobOnSession(session, work));
}

async function jobOnSession<T>(
  session: PooledSession,
  work: (session: PooledSession, baseline: WatchedSettings) => Promise<T>,
): Promise<T> {
  let baseline: WatchedSettings;
  try {
    baseline = await resetSession(session);
  } catch (error) {
    session.dispose(describeError(error));
    throw error instanceof GateError
      ? error
      : new GateError(
          'SESSION_NOT_CLEAN',
          `The database session could not be reset before the job, so nothing was sent: ${describeError(error)}`,
          { cause: error },
        );
  }
  let failed = true;
  try {
    const result = await work(session, baseline);
    failed = false;
    return result;
  } finally {
    try {
      // A job that failed may have left its transaction open (aborted); end it before discarding.
      if (failed) await session.query('rollback');
      await session.query('discard all');
    } catch (error) {
      session.dispose(`could not reset the session after a job: ${describeError(error)}`);
    }
  }
}
