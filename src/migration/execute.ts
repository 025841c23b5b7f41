import { hostname } from 'node:os';
import { performance } from 'node:perf_hooks';
import { withAdvisoryLock, withTransaction, type Database, type SqlSession } from '../db/index.js';
import { describeError, GateError } from '../errors.js';
import { crashPoint } from '../faults.js';
import { ExecutionAborted, sentByFailedCommit, type Sent } from './aborted.js';
import { lineAndColumn, relationsOf, type AnalysedStatement } from './analyse.js';
import { existingTables, tableCopyRecord, tableCopyStatements } from './backup.js';
import { executionLockKeys } from './advisory-locks.js';
import { prepareLedger } from './ledger.js';
import { ExecutionResult, type BackupInfo, type ExecutionError } from './result.js';
import { readWatchedSettings, settingsBreach, withJobSession, type WatchedSettings } from './session.js';

export interface MigrationJob {
  readonly approvalId: string;
  readonly requestHash: string;
  /** The whole SQL as approved, for mapping error positions to line and column. */
  readonly sql: string;
  readonly statements: readonly AnalysedStatement[];
  readonly dryRun: boolean;
  /** Dry runs rehearse the rollback too: its SQL and statements, when the request has one. */
  readonly rollback?: { readonly sql: string; readonly statements: readonly AnalysedStatement[] } | null;
  /**
   * backup_before: either already taken (a pg_dump file) or to be taken by the executor as table
   * copies into `schema`, inside the migration's transaction (or just before a step-by-step run).
   */
  readonly backup?:
    | { readonly kind: 'taken'; readonly record: BackupInfo }
    | { readonly kind: 'table_copy'; readonly schema: string }
    | null;
  /**
   * 0-based indexes of statements the reviewer saw flagged for changing the gate's timeouts
   * (TIMEOUT_OVERRIDE). Any other statement that changes them stops the job.
   */
  readonly timeoutsMayChange?: ReadonlySet<number>;
}

export interface LockRetryPolicy {
  /** Retries after the first attempt; 0 disables retrying. */
  readonly retries: number;
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
}

export interface ExecutorOptions {
  readonly ledgerSchema: string;
  readonly lockTimeoutMs: number;
  readonly statementTimeoutMs: number;
  /** Transactional migrations that hit lock_timeout or a deadlock are retried whole, with backoff. */
  readonly lockRetry?: LockRetryPolicy;
  readonly instanceId?: string;
  /**
   * The installation (state directory) this executor runs for: part of the ledger key, so that two
   * installations sharing a ledger schema, each with its own APR-…-001, never meet. '' for none.
   */
  readonly installation?: string;
}

/** Progress while running: attempts, waits for locks, retries. */
export type ProgressListener = (note: string) => void;

export { ExecutionAborted, type Sent } from './aborted.js';

/** How far a run got: whether anything of the job may have reached the database yet. */
interface Reach {
  sent: Sent;
}

/** lock_not_available (lock_timeout) and deadlock_detected: the transaction rolled back; safe to retry. */
const RETRYABLE_SQLSTATES = new Set(['55P03', '40P01']);

/** Thrown inside a transaction to roll it back whole and try again; never leaves the executor. */
class RetryableLockFailure extends Error {
  constructor(readonly failure: ExecutionError) {
    super(failure.message);
  }
}

/**
 * The migration ran but its ledger row could not be written (a statement took away the rights it
 * needs, say), so the transaction rolled back: nothing changed. Caught by `run`, which records that.
 */
class LedgerWriteFailure extends Error {
  constructor(
    readonly attempt: number,
    readonly started: ExecutionResult,
    cause: unknown,
  ) {
    super(describeError(cause), { cause });
  }
}

/** Exponential backoff with jitter (50–100 % of the step), so retrying instances do not align. */
export function retryDelayMs(
  policy: LockRetryPolicy,
  retry: number,
  random: () => number = Math.random,
): number {
  const step = Math.min(policy.maxDelayMs, policy.initialDelayMs * 2 ** (retry - 1));
  return Math.round(step * (0.5 + random() * 0.5));
}

/** The result, and whether this call ran the SQL (false: it found an earlier run's result). */
export interface ExecutionRun {
  readonly result: ExecutionResult;
  readonly ranHere: boolean;
}

/** Statements whose row count means rows changed; for DDL drivers report 0 or null, which says nothing. */
const ROW_COUNTING_KINDS = new Set([
  'InsertStmt',
  'UpdateStmt',
  'DeleteStmt',
  'MergeStmt',
  'CreateTableAsStmt',
]);

interface PgErrorFields {
  code?: string;
  message?: string;
  detail?: string;
  hint?: string;
  position?: string | number;
}

/** The fields of a driver error (pg or PGlite), with the SQLSTATE only when it is one. */
function pgErrorOf(error: unknown): PgErrorFields & { sqlstate: string | null; message: string } {
  const fields = (typeof error === 'object' && error !== null ? error : {}) as PgErrorFields;
  return {
    ...fields,
    sqlstate: typeof fields.code === 'string' && /^[0-9A-Z]{5}$/.test(fields.code) ? fields.code : null,
    message: fields.message ?? String(error),
  };
}

function toExecutionError(error: unknown, statement: AnalysedStatement, sql: string): ExecutionError {
  const fields = pgErrorOf(error);
  const message = fields.message;
  let where: { line: number; column: number } | null = null;
  const position = Number(fields.position);
  if (Number.isInteger(position) && position > 0) {
    where = lineAndColumn(sql, statement.offset + position - 1);
  }
  return {
    sqlstate: fields.sqlstate,
    message,
    detail: fields.detail ?? null,
    hint: fields.hint ?? null,
    statement: statement.index + 1,
    line: where?.line ?? lineAndColumn(sql, statement.offset).line,
    column: where?.column ?? null,
  };
}

/** The gate stopped the job after `statement` because it changed the session in a forbidden way. */
function breachError(
  statement: AnalysedStatement,
  sql: string,
  breach: string,
  transactional: boolean,
): ExecutionError {
  return {
    sqlstate: null,
    message:
      `The gate stopped the migration after statement ${statement.index + 1}: ${breach}. ` +
      (transactional
        ? 'Everything was rolled back; nothing changed.'
        : 'No later statement was sent; the statements before it, and it, stay applied.'),
    detail: null,
    hint: null,
    statement: statement.index + 1,
    line: lineAndColumn(sql, statement.offset).line,
    column: null,
  };
}

/**
 * Reads the session's watched settings after `statement` ran: the settings the next statement is
 * compared with, or the error that stops the job when `statement` changed them in a forbidden way.
 */
async function settingsAfter(
  session: SqlSession,
  watched: WatchedSettings,
  statement: AnalysedStatement,
  sql: string,
  options: { readonly timeoutsMayChange: boolean; readonly transactional: boolean },
): Promise<{ readonly watched: WatchedSettings; readonly error: ExecutionError | null }> {
  const now = await readWatchedSettings(session);
  const breach = settingsBreach(watched, now, { timeoutsMayChange: options.timeoutsMayChange });
  if (breach === null) return { watched: now, error: null };
  return { watched, error: breachError(statement, sql, breach, options.transactional) };
}

/**
 * The gate's own writes on a job's session run as the session user: a migration may SET ROLE to a
 * role that cannot write the ledger. The job's role is restored afterwards (step-by-step runs go on).
 */
async function asSessionUser<T>(session: SqlSession, work: () => Promise<T>): Promise<T> {
  const { rows } = await session.query('select current_user as role, session_user as login');
  const role = String(rows[0]?.role ?? '');
  if (role === String(rows[0]?.login ?? '')) return work();
  await session.query('reset role');
  try {
    return await work();
  } finally {
    await session.query("select pg_catalog.set_config('role', $1, false)", [role]);
  }
}

type StatementOutcome = ExecutionResult['statements'][number];

/**
 * PGlite answers in microtasks on the main thread, so a migration of many statements would starve
 * every timer and I/O callback (status reads, progress, other sessions) until it ended. A turn of the
 * event loop between statements lets them run; on pg it costs microseconds.
 */
const letOthersRun = () => new Promise<void>((resolve) => setImmediate(resolve));

function outcomeOf(statement: AnalysedStatement, rowCount: number | null): StatementOutcome {
  return {
    statement: statement.index + 1,
    kind: statement.kind,
    rows_affected: ROW_COUNTING_KINDS.has(statement.kind) ? rowCount : null,
  };
}

function totalRows(statements: readonly StatementOutcome[]): number | null {
  const counted = statements.map((s) => s.rows_affected).filter((n): n is number => n !== null);
  return counted.length > 0 ? counted.reduce((a, b) => a + b, 0) : null;
}

const json = (value: unknown) => (typeof value === 'string' ? (JSON.parse(value) as unknown) : value);
const iso = (value: unknown) => (value instanceof Date ? value.toISOString() : String(value));

/**
 * Runs approved migrations at most once, even across crashes and instances.
 *
 * Transactional migrations (the normal case) run in one transaction that takes an advisory lock on
 * the approval id, runs the statements under a savepoint with SET LOCAL timeouts, and inserts the
 * ledger row before COMMIT: "executed" and "recorded as executed" commit together, and a second
 * instance waiting on the lock finds the row instead of running the SQL again.
 *
 * Migrations with a statement Postgres refuses inside a transaction run step by step under a
 * session advisory lock: the ledger row is committed as `running`, and each statement gets a step row
 * committed as `started` before it and `done` after it. A run that died leaves `running` behind; the
 * next look at it (with the lock free) turns it into `unknown`, naming the statement, and never retries.
 */
export class Executor {
  readonly #database: Database;
  readonly #options: ExecutorOptions;
  readonly #instanceId: string;
  #prepared: Promise<void> | null = null;

  constructor(database: Database, options: ExecutorOptions) {
    this.#database = database;
    this.#options = options;
    this.#instanceId = options.instanceId ?? `${hostname()}:${process.pid}`;
  }

  get #ledger(): string {
    return `"${this.#options.ledgerSchema}".ledger`;
  }

  get #steps(): string {
    return `"${this.#options.ledgerSchema}".ledger_steps`;
  }

  /** The limits every statement of a job runs under, as set_config values. */
  #timeouts(): { lock_timeout: string; statement_timeout: string } {
    return {
      lock_timeout: `${this.#options.lockTimeoutMs}ms`,
      statement_timeout: `${this.#options.statementTimeoutMs}ms`,
    };
  }

  /** Creates or upgrades the gate's own tables (migrations/), once per process. */
  prepare(): Promise<void> {
    const schema = this.#options.ledgerSchema;
    this.#prepared ??= prepareLedger(this.#database, schema).catch((error: unknown) => {
      this.#prepared = null;
      // Not the ledger's fault: the caller reports (or waits out) these as they are.
      if (error instanceof GateError && ['DATABASE_UNREACHABLE', 'DATABASE_LOCKED'].includes(error.code))
        throw error;
      throw new GateError(
        'LEDGER_UNAVAILABLE',
        `Cannot create the gate's ledger in schema "${schema}": ${error instanceof Error ? error.message : String(error)}`,
        { cause: error },
      );
    });
    return this.#prepared;
  }

  /**
   * The recorded result for an approval; null when it never reached the executor or is running now.
   * Throws LEDGER_CONFLICT when the ledger holds the id for a different request.
   */
  async lookup(approvalId: string, requestHash: string): Promise<ExecutionResult | null> {
    await this.prepare();
    return this.#database.withClient(async (session) => {
      const recorded = await this.#readLedger(session, approvalId, requestHash);
      if (recorded !== 'running') return recorded;
      // A step-by-step run holds the session lock while alive. Free lock: the run died.
      const { rows } = await session.query(
        'select pg_catalog.pg_try_advisory_lock($1, $2) as free',
        this.#lockKeys(approvalId),
      );
      if (rows[0]?.free !== true) return null;
      try {
        return await this.#declareUnknown(session, approvalId, requestHash);
      } finally {
        await session.query('select pg_catalog.pg_advisory_unlock($1, $2)', this.#lockKeys(approvalId));
      }
    });
  }

  #lockKeys(approvalId: string): [number, number] {
    return executionLockKeys(this.#installation, approvalId);
  }

  get #installation(): string {
    return this.#options.installation ?? '';
  }

  async #readLedger(
    session: SqlSession,
    approvalId: string,
    requestHash: string,
  ): Promise<ExecutionResult | 'running' | null> {
    // Operators and functions schema-qualified: this also runs on a job's session, after its SQL.
    // This installation's row, else a row from before installations were recorded ('') when its hash
    // says it is this request; another installation's rows are never ours.
    const { rows } = await session.query(
      `select * from ${this.#ledger}
        where approval_id operator(pg_catalog.=) $1::text
          and (installation operator(pg_catalog.=) $2::text
               or (installation operator(pg_catalog.=) ''::text and request_hash operator(pg_catalog.=) $3::text))
        order by installation desc`,
      [approvalId, this.#installation, requestHash],
    );
    const row = rows[0];
    if (!row) return null;
    if (row.request_hash !== requestHash) {
      throw new GateError(
        'LEDGER_CONFLICT',
        `The ledger already holds ${approvalId} of this installation for a different request: the state ` +
          `directory was reset or copied while the ledger in schema "${this.#options.ledgerSchema}" kept its rows. Nothing was executed.`,
        { context: { approvalId } },
      );
    }
    if (row.state === 'running') return 'running';
    const result = {
      state: row.state,
      dry_run: row.dry_run,
      transactional: row.transactional,
      started_at: iso(row.started_at),
      finished_at: iso(row.finished_at),
      duration_ms: Number(row.duration_ms),
      rows_affected: row.rows_affected === null ? null : Number(row.rows_affected),
      statements: json(row.statements),
      error: json(row.error),
      rollback_rehearsal: json(row.rollback_rehearsal) ?? null,
      backup: json(row.backup) ?? null,
      executed_by: row.executed_by,
    };
    return ExecutionResult.parse(result);
  }

  /** Turns a dead step-by-step run into `unknown`, naming the statement that was in flight. */
  async #declareUnknown(
    session: SqlSession,
    approvalId: string,
    requestHash: string,
  ): Promise<ExecutionResult> {
    const { rows: steps } = await session.query(
      `select * from ${this.#steps}
        where approval_id operator(pg_catalog.=) $1::text and installation operator(pg_catalog.=) $2::text
        order by statement`,
      [approvalId, this.#installation],
    );
    const done = steps.filter((s) => s.state === 'done');
    const inFlight = steps.find((s) => s.state === 'started');
    const message = inFlight
      ? `The server stopped while statement ${String(inFlight.statement)} was running, outside a transaction: ` +
        `${String(inFlight.sql).trim()}. Whether it took effect is unknown and it will NOT be retried. ` +
        'Check the database by hand (for CREATE INDEX CONCURRENTLY: does the index exist, and is pg_index.indisvalid true? ' +
        'An invalid index must be dropped and rebuilt).'
      : 'The server stopped between statements run outside a transaction; the statements listed as done took effect. Nothing will be retried.';
    const error: ExecutionError = {
      sqlstate: null,
      message,
      detail: null,
      hint: null,
      statement: inFlight ? Number(inFlight.statement) : null,
      line: null,
      column: null,
    };
    await session.query(
      `update ${this.#ledger} set state = 'unknown', error = $2, finished_at = pg_catalog.now()
        where approval_id operator(pg_catalog.=) $1::text and installation operator(pg_catalog.=) $3::text
          and state operator(pg_catalog.=) 'running'::text`,
      [approvalId, JSON.stringify(error), this.#installation],
    );
    const recorded = await this.#readLedger(session, approvalId, requestHash);
    if (recorded === null || recorded === 'running') {
      throw new GateError('LEDGER_CORRUPT', `The ledger row of ${approvalId} could not be marked unknown.`);
    }
    return {
      ...recorded,
      statements: done.map((s) => ({
        statement: Number(s.statement),
        kind: String(s.kind),
        rows_affected: s.rows_affected === null ? null : Number(s.rows_affected),
      })),
    };
  }

  /**
   * Runs `job` at most once. Returns the result recorded in the ledger: this run's, or an earlier
   * one's if the approval was already executed (by this or another instance). Rejects only with
   * ExecutionAborted, whose `sent` says whether anything of the job may have taken effect.
   */
  async run(job: MigrationJob, onProgress: ProgressListener = () => undefined): Promise<ExecutionRun> {
    const reach: Reach = { sent: 'nothing' };
    try {
      return await this.#run(job, onProgress, reach);
    } catch (error) {
      throw ExecutionAborted.of(error, reach.sent, job.approvalId);
    }
  }

  async #run(job: MigrationJob, onProgress: ProgressListener, reach: Reach): Promise<ExecutionRun> {
    await this.prepare();
    const transactional = job.statements.every((s) => s.transactional);
    if (!transactional && job.dryRun) {
      throw new GateError(
        'DRY_RUN_IMPOSSIBLE',
        'A dry run cannot roll back statements that run outside a transaction.',
      );
    }
    if (!transactional) {
      // No automatic retry here: a CREATE INDEX CONCURRENTLY that failed part-way leaves an invalid index.
      onProgress('running statement by statement, outside a transaction');
      return withJobSession(this.#database, (session, baseline) =>
        this.#runStepByStep(session, job, baseline, reach),
      );
    }
    const policy = this.#options.lockRetry ?? { retries: 0, initialDelayMs: 0, maxDelayMs: 0 };
    const attempts = policy.retries + 1;
    for (let attempt = 1; ; attempt += 1) {
      onProgress(attempt === 1 ? 'running in one transaction' : `attempt ${attempt} of ${attempts}`);
      try {
        return await withJobSession(this.#database, (session, baseline) =>
          this.#runInTransaction(session, job, { attempt, final: attempt >= attempts, baseline }, reach),
        );
      } catch (error) {
        if (error instanceof LedgerWriteFailure) return this.#recordUnrecordable(job, error);
        if (!(error instanceof RetryableLockFailure)) throw error;
        const delay = retryDelayMs(policy, attempt);
        onProgress(
          `attempt ${attempt} of ${attempts} gave up waiting for a lock (${error.failure.message}); ` +
            `everything was rolled back, retrying in ${delay} ms`,
        );
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  }

  /**
   * The transaction that ran the migration could not write its ledger row and rolled back. Records
   * that on a fresh session, so that the request is final (never "running") and says what happened.
   */
  async #recordUnrecordable(job: MigrationJob, failure: LedgerWriteFailure): Promise<ExecutionRun> {
    const message =
      `The statements ran, but the gate could not record the result in its ledger (${failure.message}), ` +
      'so the whole transaction was rolled back: nothing changed.';
    const result: ExecutionResult = {
      ...failure.started,
      state: 'failed',
      statements: [],
      rows_affected: null,
      backup: job.backup?.kind === 'taken' ? job.backup.record : null,
      rollback_rehearsal: null,
      error: { sqlstate: null, message, detail: null, hint: null, statement: null, line: null, column: null },
    };
    try {
      return await withJobSession(this.#database, (session) =>
        withTransaction(session, async () => {
          await session.query(
            'select pg_catalog.pg_advisory_xact_lock($1, $2)',
            this.#lockKeys(job.approvalId),
          );
          const earlier = await this.#readLedger(session, job.approvalId, job.requestHash);
          if (earlier !== null && earlier !== 'running') return { result: earlier, ranHere: false };
          await this.#insertLedger(session, job, result, failure.attempt);
          return { result, ranHere: true };
        }),
      );
    } catch (error) {
      throw new GateError(
        'LEDGER_WRITE_FAILED',
        `${message} Recording even that failed: ${describeError(error)}`,
        { cause: error, context: { approvalId: job.approvalId } },
      );
    }
  }

  async #runInTransaction(
    session: SqlSession,
    job: MigrationJob,
    attempt: { attempt: number; final: boolean; baseline: WatchedSettings },
    reach: Reach,
  ): Promise<ExecutionRun> {
    await session.query('begin');
    let run: ExecutionRun;
    try {
      run = await this.#transactionBody(session, job, attempt);
    } catch (error) {
      await session.query('rollback').catch(() => undefined);
      if (
        error instanceof GateError ||
        error instanceof RetryableLockFailure ||
        error instanceof LedgerWriteFailure
      )
        throw error;
      // The connection failed before COMMIT was sent: Postgres rolls the transaction back, so this is
      // certain, not unknown: nothing changed.
      throw new GateError(
        'EXECUTION_NOT_COMMITTED',
        `The connection failed before the migration committed (${describeError(error)}); Postgres rolled ` +
          'the transaction back, so nothing changed.',
        { cause: error, context: { approvalId: job.approvalId } },
      );
    }
    // From here a lost answer leaves the outcome unknown: COMMIT may have been carried out.
    reach.sent = 'maybe';
    try {
      await session.query('commit');
    } catch (error) {
      reach.sent = sentByFailedCommit(error);
      throw new GateError(
        reach.sent === 'nothing' ? 'EXECUTION_NOT_COMMITTED' : 'COMMIT_OUTCOME_UNKNOWN',
        reach.sent === 'nothing'
          ? `Postgres refused to commit the migration (${describeError(error)}) and rolled it back, so nothing changed.`
          : `The connection failed while COMMIT was on its way (${describeError(error)}): the migration may or may ` +
              `not have committed. The ledger row commits with it: check "${this.#options.ledgerSchema}".ledger for ${job.approvalId}.`,
        { cause: error, context: { approvalId: job.approvalId } },
      );
    }
    if (run.ranHere) crashPoint('after-commit');
    return run;
  }

  async #transactionBody(
    session: SqlSession,
    job: MigrationJob,
    { attempt, final }: { attempt: number; final: boolean; baseline: WatchedSettings },
  ): Promise<ExecutionRun> {
    // Waits while another instance runs the same approval; its commit makes the ledger row visible.
    await session.query('select pg_catalog.pg_advisory_xact_lock($1, $2)', this.#lockKeys(job.approvalId));
    crashPoint('after-advisory-lock');
    const earlier = await this.#readLedger(session, job.approvalId, job.requestHash);
    if (earlier === 'running') {
      throw new GateError(
        'LEDGER_CORRUPT',
        `${job.approvalId} is recorded as running step by step, but its SQL is transactional.`,
      );
    }
    if (earlier) return { result: earlier, ranHere: false };

    const startedAt = new Date();
    const start = performance.now();
    await session.query('savepoint gate_migration');
    // Local to the savepoint: they bind the migration's statements, and roll back with them.
    let watched = await readWatchedSettings(session, this.#timeouts(), { local: true });
    const statements: StatementOutcome[] = [];
    const backup = await this.#backUp(session, job);
    let error: ExecutionError | null = backup.error;
    if (error?.sqlstate && !final && RETRYABLE_SQLSTATES.has(error.sqlstate))
      throw new RetryableLockFailure(error);
    for (const statement of error === null ? job.statements : []) {
      try {
        const { rowCount } = await session.query(statement.text);
        statements.push(outcomeOf(statement, rowCount));
      } catch (caught) {
        error = toExecutionError(caught, statement, job.sql);
        // Lock trouble before the last attempt: roll everything back (no ledger row) and try again.
        if (!final && error.sqlstate !== null && RETRYABLE_SQLSTATES.has(error.sqlstate)) {
          throw new RetryableLockFailure(error);
        }
        break;
      }
      ({ watched, error } = await settingsAfter(session, watched, statement, job.sql, {
        timeoutsMayChange: job.timeoutsMayChange?.has(statement.index) ?? false,
        transactional: true,
      }));
      if (error !== null) break;
      crashPoint('mid-migration');
      await letOthersRun();
    }
    let rehearsal: ExecutionResult['rollback_rehearsal'] = null;
    if (job.dryRun) {
      rehearsal =
        error !== null ? { state: 'not_reached', error: null } : await this.#rehearseRollback(session, job);
    }
    if (error !== null || job.dryRun) {
      // Also undoes every SET, SET ROLE and set_config the statements made.
      await session.query('rollback to savepoint gate_migration');
    } else {
      await session.query('release savepoint gate_migration');
      // The statements are done; the gate writes its ledger row as the session user.
      if (watched.current_user !== watched.session_user) await session.query('reset role');
    }
    const result: ExecutionResult = {
      state: error !== null ? 'failed' : job.dryRun ? 'rolled_back' : 'succeeded',
      dry_run: job.dryRun,
      transactional: true,
      started_at: startedAt.toISOString(),
      finished_at: new Date().toISOString(),
      duration_ms: Math.round(performance.now() - start),
      rows_affected: totalRows(statements),
      statements,
      error,
      // Copies made in this transaction exist only if it commits; a pg_dump file stands either way.
      backup:
        job.backup?.kind === 'taken'
          ? job.backup.record
          : error === null && !job.dryRun
            ? backup.record
            : null,
      rollback_rehearsal: rehearsal,
      executed_by: this.#instanceId,
    };
    try {
      await this.#insertLedger(session, job, result, attempt);
    } catch (caught) {
      throw new LedgerWriteFailure(attempt, result, caught);
    }
    return { result, ranHere: true };
  }

  /**
   * backup_before, when the executor takes it: copies of the existing tables the migration names,
   * made on this session before any statement runs. A failure means the migration must not run.
   */
  async #backUp(
    session: SqlSession,
    job: MigrationJob,
  ): Promise<{ record: BackupInfo | null; error: ExecutionError | null }> {
    const plan = job.backup;
    if (!plan || job.dryRun) return { record: null, error: null };
    if (plan.kind === 'taken') return { record: plan.record, error: null };
    try {
      const tables = await existingTables(session, relationsOf(job.statements));
      for (const sql of tableCopyStatements(plan.schema, job.approvalId, tables)) await session.query(sql);
      const record = tableCopyRecord(plan.schema, job.approvalId, tables);
      return { record: { ...record, tables: [...record.tables] }, error: null };
    } catch (caught) {
      const fields = pgErrorOf(caught);
      return {
        record: null,
        error: {
          sqlstate: fields.sqlstate,
          message: `backup_before failed, so no statement ran: ${fields.message}`,
          detail: fields.detail ?? null,
          hint: fields.hint ?? null,
          statement: null,
          line: null,
          column: null,
        },
      };
    }
  }

  /** Runs the rollback SQL after the migration, inside the dry run's savepoint, to prove it works. */
  async #rehearseRollback(
    session: SqlSession,
    job: MigrationJob,
  ): Promise<ExecutionResult['rollback_rehearsal']> {
    if (!job.rollback) return { state: 'not_provided', error: null };
    let watched = await readWatchedSettings(session);
    for (const statement of job.rollback.statements) {
      try {
        await session.query(statement.text);
      } catch (caught) {
        return { state: 'failed', error: toExecutionError(caught, statement, job.rollback.sql) };
      }
      const after = await settingsAfter(session, watched, statement, job.rollback.sql, {
        timeoutsMayChange: false,
        transactional: true,
      });
      if (after.error !== null) return { state: 'failed', error: after.error };
      watched = after.watched;
    }
    return { state: 'succeeded', error: null };
  }

  async #insertLedger(
    session: SqlSession,
    job: MigrationJob,
    result: ExecutionResult | (Omit<ExecutionResult, 'state'> & { state: 'running' }),
    attempts = 1,
  ): Promise<void> {
    await session.query(
      `insert into ${this.#ledger}
         (approval_id, request_hash, state, dry_run, transactional, attempts, started_at, finished_at,
          duration_ms, rows_affected, statements, error, executed_by, rollback_rehearsal, backup, installation)
       values ($1, $2, $3, $4, $5, $13, $6, $7, $8, $9, $10, $11, $12, $14, $15, $16)`,
      [
        job.approvalId,
        job.requestHash,
        result.state,
        result.dry_run,
        result.transactional,
        result.started_at,
        result.finished_at,
        result.duration_ms,
        result.rows_affected,
        JSON.stringify(result.statements),
        result.error === null ? null : JSON.stringify(result.error),
        result.executed_by,
        attempts,
        result.rollback_rehearsal === null ? null : JSON.stringify(result.rollback_rehearsal),
        result.backup === null ? null : JSON.stringify(result.backup),
        this.#installation,
      ],
    );
  }

  async #runStepByStep(
    session: SqlSession,
    job: MigrationJob,
    baseline: WatchedSettings,
    reach: Reach,
  ): Promise<ExecutionRun> {
    return withAdvisoryLock(session, this.#lockKeys(job.approvalId), async () => {
      crashPoint('after-advisory-lock');
      const earlier = await this.#readLedger(session, job.approvalId, job.requestHash);
      if (earlier === 'running') {
        // We hold the lock, so the run that wrote `running` is dead.
        return {
          result: await this.#declareUnknown(session, job.approvalId, job.requestHash),
          ranHere: false,
        };
      }
      if (earlier) return { result: earlier, ranHere: false };
      return { result: await this.#steps_(session, job, baseline, reach), ranHere: true };
    });
  }

  async #steps_(
    session: SqlSession,
    job: MigrationJob,
    baseline: WatchedSettings,
    reach: Reach,
  ): Promise<ExecutionResult> {
    const startedAt = new Date();
    const start = performance.now();
    await this.#insertLedger(session, job, {
      state: 'running',
      dry_run: false,
      transactional: false,
      started_at: startedAt.toISOString(),
      finished_at: startedAt.toISOString(),
      duration_ms: 0,
      rows_affected: null,
      statements: [],
      error: null,
      rollback_rehearsal: null,
      backup: null,
      executed_by: this.#instanceId,
    });
    const statements: StatementOutcome[] = [];
    // Session-wide: each statement is its own transaction. withJobSession discards them afterwards.
    let watched = await readWatchedSettings(session, this.#timeouts(), { local: false });
    if (watched.session_user !== baseline.session_user) {
      throw new GateError('SESSION_NOT_CLEAN', 'The session changed identity before the first statement.');
    }
    // The copies commit on their own before the first step: a step-by-step run has no shared transaction.
    await session.query('begin');
    const backup = await this.#backUp(session, job);
    await session.query(backup.error === null ? 'commit' : 'rollback');
    let error: ExecutionError | null = backup.error;
    // The step rows are written between the migration's statements, whatever search_path or role
    // they set: qualified operators and functions, and as the session user.
    const stepUpdate = `update ${this.#steps} set state = $4, finished_at = pg_catalog.now(), rows_affected = $5, error = $6
      where approval_id operator(pg_catalog.=) $1::text and statement operator(pg_catalog.=) $2::integer
        and installation operator(pg_catalog.=) $3::text`;
    for (const statement of error === null ? job.statements : []) {
      const step = [job.approvalId, statement.index + 1, this.#installation];
      await asSessionUser(session, () =>
        session.query(
          `insert into ${this.#steps} (approval_id, statement, installation, kind, sql, state, started_at)
             values ($1, $2, $3, $4, $5, 'started', pg_catalog.now())`,
          [...step, statement.kind, statement.text],
        ),
      );
      crashPoint('after-step-started');
      // Outside a transaction, a statement sent has maybe taken effect, whatever happens next.
      reach.sent = 'maybe';
      let rowCount: number | null;
      try {
        rowCount = (await session.query(statement.text)).rowCount;
      } catch (caught) {
        error = toExecutionError(caught, statement, job.sql);
        await asSessionUser(session, () =>
          session.query(stepUpdate, [...step, 'failed', null, JSON.stringify(error)]),
        );
        break;
      }
      crashPoint('after-step-executed');
      const outcome = outcomeOf(statement, rowCount);
      await asSessionUser(session, () =>
        session.query(stepUpdate, [...step, 'done', outcome.rows_affected, null]),
      );
      statements.push(outcome);
      ({ watched, error } = await settingsAfter(session, watched, statement, job.sql, {
        timeoutsMayChange: job.timeoutsMayChange?.has(statement.index) ?? false,
        transactional: false,
      }));
      if (error !== null) break;
      await letOthersRun();
    }
    const result: ExecutionResult = {
      state: error === null ? 'succeeded' : 'failed',
      dry_run: false,
      transactional: false,
      started_at: startedAt.toISOString(),
      finished_at: new Date().toISOString(),
      duration_ms: Math.round(performance.now() - start),
      rows_affected: totalRows(statements),
      statements,
      error,
      rollback_rehearsal: null,
      backup: backup.record,
      executed_by: this.#instanceId,
    };
    await session.query('reset role');
    await session.query(
      `update ${this.#ledger} set state = $2, finished_at = $3, duration_ms = $4, rows_affected = $5, statements = $6, error = $7,
              backup = $8
        where approval_id operator(pg_catalog.=) $1::text and installation operator(pg_catalog.=) $9::text`,
      [
        job.approvalId,
        result.state,
        result.finished_at,
        result.duration_ms,
        result.rows_affected,
        JSON.stringify(result.statements),
        result.error === null ? null : JSON.stringify(result.error),
        result.backup === null ? null : JSON.stringify(result.backup),
        this.#installation,
      ],
    );
    // The step-by-step equivalent of the COMMIT: the run's final ledger update is acknowledged.
    crashPoint('after-commit');
    return result;
  }
}
