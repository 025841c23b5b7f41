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
  /** The role statements run as: SET ROLE changes it (allowed, and confined to the job). */
  readonly current_user: string;
}

/** The watched settings that are run-time parameters (current_setting / set_config). */
const PARAMETERS = [
  'standard_conforming_strings',
  'client_encoding',
  'lock_timeout',
  'statement_timeout',
  'idle_in_transaction_session_timeout',
] as const;

type Parameter = (typeof PARAMETERS)[number];

/**
 * Reads the watched settings in one round trip, setting `set` first in the same query (for the
 * transaction only when `local`): a parameter that is set is read from set_config's own answer, its
 * new value. Schema-qualified, so that a search_path set by the migration cannot redirect the read.
 */
export async function readWatchedSettings(
  session: SqlSession,
  set: Readonly<Partial<Record<Parameter, string>>> = {},
  { local }: { readonly local: boolean } = { local: false },
): Promise<WatchedSettings> {
  const values: string[] = [];
  const columns = PARAMETERS.map((name) => {
    const value = set[name];
    if (value === undefined) return `pg_catalog.current_setting('${name}') as ${name}`;
    values.push(value);
    return `pg_catalog.set_config('${name}', $${values.length}, ${local}) as ${name}`;
  });
  const { rows } = await session.query(
    `select ${columns.join(', ')}, session_user as session_user, current_user as current_user`,
    values,
  );
  const row = rows[0] ?? {};
  const text = (key: keyof WatchedSettings) => String(row[key] ?? '');
  return {
    standard_conforming_strings: text('standard_conforming_strings'),
    client_encoding: text('client_encoding'),
    lock_timeout: text('lock_timeout'),
    statement_timeout: text('statement_timeout'),
    idle_in_transaction_session_timeout: text('idle_in_transaction_session_timeout'),
    session_user: text('session_user'),
    current_user: text('current_user'),
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
  const settings = await readWatchedSettings(session, LEXER_SETTINGS);
  const wrong = Object.entries(LEXER_SETTINGS).find(
    ([name, value]) => settings[name as keyof typeof LEXER_SETTINGS] !== value,
  );
  if (wrong || settings.current_user !== settings.session_user) {
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
