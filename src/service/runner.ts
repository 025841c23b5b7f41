import path from 'node:path';
import type { AuditEntry, AuditLog } from '../approvals/audit.js';
import type { FrontMatterValue } from '../approvals/frontmatter.js';
import { hashCommand, type ApprovalRequest, type Decision } from '../approvals/request.js';
import { recheckRecordedSignatures } from '../approvals/signed-decision.js';
import type { ApprovalStore, StoredOutcome } from '../approvals/store.js';
import type { Config } from '../config.js';
import { describeError, GateError } from '../errors.js';
import type { Logger } from '../log.js';
import { analyseSql, relationsOf, type Analysis } from '../migration/analyse.js';
import { dumpTables, existingTables, pgDumpAvailable } from '../migration/backup.js';
import { ExecutionAborted, type MigrationJob, type Sent } from '../migration/execute.js';
import type { ExecutionResult } from '../migration/result.js';
import { TIMEOUT_CHANGE_CODES, type RiskFinding } from '../migration/risk-codes.js';
import { readSchemaFacts } from '../migration/schema-facts.js';
import { formatTimestamp, type Clock } from '../time.js';
import { readmit } from './admission.js';
import type { ChangeFeed } from './changes.js';
import type { FileView } from './file-view.js';
import type { Findings } from './findings.js';
import { executionDetails, summariseResult, unexecutedOutcome, unrecordedSummary } from './result-wording.js';
import { signersOf } from './startup.js';
import type { Targets } from './targets.js';

export type ExecutionState = 'not_started' | 'running' | 'unknown' | ExecutionResult['state'];

/** Where an approved request's execution stands, as the runner's model says. */
export interface ExecutionView {
  readonly execution: ExecutionState;
  readonly result: ExecutionResult | null;
  /** Why the outcome is unknown or why execution could not start, when it is. */
  readonly executionError: string | null;
  /** What a running execution is doing now (queued, attempt, lock waits), when this instance runs it. */
  readonly progress?: string | null;
  readonly final: boolean;
  /**
   * 'unreachable': the ledger could not be read from here (an approver's terminal without the database
   * URL, or an outage), so `execution` says only what this process knows, not what happened.
   */
  readonly ledger?: 'unreachable';
}

export interface RunnerOptions {
  readonly config: Config;
  readonly store: ApprovalStore;
  readonly audit: AuditLog;
  readonly clock: Clock;
  readonly log: Logger;
  readonly env: NodeJS.ProcessEnv;
  readonly targets: Targets;
  readonly findings: Findings;
  readonly view: FileView;
  readonly changes: ChangeFeed;
}

/** How long a migration runs before its file says "running". */
const RUNNING_SHOWN_AFTER_MS = 250;

/**
 * What every write of execution fields also sets: an earlier gate_error cleared, and a decision the
 * policy made (no human) shown as the file's status, as the body shows it.
 */
function decisionFields(decision: Decision): Record<string, FrontMatterValue> {
  return { gate_error: undefined, ...(decision.decided_by === null ? { status: decision.status } : {}) };
}

/** Backoff while the database is unreachable before an approved migration starts. */
const DATABASE_RETRY_FIRST_MS = 1000;
const DATABASE_RETRY_MAX_MS = 60_000;

const OUTAGE_CODES = ['DATABASE_UNREACHABLE', 'LEDGER_UNAVAILABLE'];

/**
 * Owns execution: takes decided requests from the gate (which returns at once, it never waits for a
 * migration), runs approved ones one at a time per database, and records every end — a ledger row
 * written with the migration, or an outcome in the state directory when no ledger row can say it —
 * before telling anyone. Status reads `executionOf`; the approval file is written from here and never
 * read back as the truth about execution.
 */
export class Runner {
  readonly #o: RunnerOptions;
  /** What this process is doing with a request right now (queued or running), with a note. */
  readonly #active = new Map<string, string | null>();
  /** Results this process saw (ran, or found in the ledger); the ledger holds them too. */
  readonly #results = new Map<string, ExecutionResult>();
  /** Ends without a ledger row that this process recorded. */
  readonly #unrecorded = new Map<string, StoredOutcome>();
  /** The tail of each database's queue. */
  readonly #queues = new Map<string, Promise<void>>();
  /** Attempts to reach an unreachable database, per approved request (backoff). */
  readonly #outageAttempts = new Map<string, number>();
  readonly #timers = new Set<NodeJS.Timeout>();
  #closed = false;

  constructor(options: RunnerOptions) {
    this.#o = options;
  }

  /**
   * Called the moment the gate recorded an approval, before anyone is told: a status read then
   * knows this process will run it, instead of asking the ledger (which on PGlite would wait behind
   * the migration for its one connection).
   */
  reserve(request: ApprovalRequest): void {
    if (!this.#active.has(request.id) && !this.#results.has(request.id))
      this.#active.set(request.id, 'queued');
  }

  /** The gate's hand-off: queues an approved request, or writes what a decision that runs nothing means. */
  accept(request: ApprovalRequest, decision: Decision): void {
    if (decision.status !== 'APPROVED') {
      void this.settle(request, decision);
      return;
    }
    this.#enqueue(request, decision);
  }

  /** Writes into the file what a decision that runs nothing means (rejected, expired, void, cancelled). */
  async settle(request: ApprovalRequest, decision: Decision): Promise<void> {
    const { fields, summary, details } = unexecutedOutcome(decision);
    await this.#o.view.write(request.id, fields, { decision, summary, details });
    this.#changed(request.id);
  }

  /**
   * Restart: every approved request without a recorded end is queued again. Running it is safe: the
   * executor finds a result the ledger already holds and does not run it twice.
   */
  async resume(request: ApprovalRequest, decision: Decision): Promise<void> {
    if (decision.status !== 'APPROVED') {
      await this.settle(request, decision);
      return;
    }
    if (await this.#storedOutcome(request.id)) return;
    this.#o.log.info({ approval_id: request.id }, 'resuming an approved request whose end was not recorded');
    this.#enqueue(request, decision);
  }

  /** Stops retries; running jobs end on their own (their connections close with the targets). */
  close(): void {
    this.#closed = true;
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
  }

  /** Resolves when every queued job has ended (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.#queues.size > 0) await Promise.all(this.#queues.values());
  }

  /** Where an approved request's execution stands: this process, the ledger, the recorded outcome. */
  async executionOf(request: ApprovalRequest): Promise<ExecutionView> {
    const { id } = request;
    if (this.#active.has(id)) {
      // This process runs it: it knows, and asking the ledger would wait behind the job on PGlite.
      return {
        execution: 'running',
        result: null,
        executionError: null,
        progress: this.#active.get(id),
        final: false,
      };
    }
    const known = this.#results.get(id);
    if (known) return { execution: known.state, result: known, executionError: null, final: true };
    const unrecorded = this.#unrecorded.get(id);
    if (unrecorded) return fromOutcome(unrecorded);
    let lookupError: string | null = null;
    try {
      const recorded = await this.#o.targets
        .get(request.command.database)
        .executor.lookup(id, request.request_hash);
      if (recorded) return { execution: recorded.state, result: recorded, executionError: null, final: true };
    } catch (error) {
      if (error instanceof GateError && error.code === 'LEDGER_CONFLICT') {
        // Certain: this request can never run against that ledger. Say so instead of "running".
        return { execution: 'failed', result: null, executionError: error.message, final: true };
      }
      lookupError = `the ledger could not be read: ${describeError(error)}`;
      this.#o.log.warn({ approval_id: id, database: request.command.database }, lookupError);
    }
    const stored = await this.#storedOutcome(id);
    if (stored && !stored.in_ledger) return fromOutcome(stored);
    if (stored && lookupError === null) {
      // The state directory says the ledger holds the result, and the ledger has none: the agent can
      // write that directory, so this is not believed, and nothing here will run it either.
      return {
        execution: 'unknown',
        result: null,
        executionError: `the state directory records the execution as ${stored.execution}, but the ledger has no row for it`,
        final: true,
      };
    }
    return {
      execution: stored?.execution ?? 'running',
      result: null,
      executionError: lookupError,
      ...(lookupError !== null ? { ledger: 'unreachable' as const } : {}),
      progress: null,
      final: stored !== null,
    };
  }

  /**
   * What the list shows without a ledger read for every finished request: the recorded end (or this
   * process's knowledge), else the full lookup. An `unknown` end is looked up: the ledger may know.
   */
  async executionStateOf(request: ApprovalRequest): Promise<ExecutionView['execution'] | 'unknown here'> {
    if (this.#active.has(request.id)) return 'running';
    const stored = this.#results.get(request.id)?.state ?? (await this.#storedOutcome(request.id))?.execution;
    if (stored !== undefined && stored !== 'unknown') return stored;
    const view = await this.executionOf(request).catch(() => null);
    return view === null || view.ledger === 'unreachable' ? 'unknown here' : view.execution;
  }

  async #storedOutcome(id: string): Promise<StoredOutcome | null> {
    try {
      return await this.#o.store.readOutcome(id);
    } catch (error) {
      this.#o.log.error(
        { approval_id: id, err: describeError(error) },
        'the recorded outcome cannot be read',
      );
      return null;
    }
  }

  #changed(id: string): void {
    this.#o.changes.emit({ id, kind: 'execution' });
  }

  #enqueue(request: ApprovalRequest, decision: Decision): void {
    const { id, command } = request;
    const database = command.database;
    const ahead = this.#queues.get(database);
    this.#active.set(id, ahead ? `queued: another migration on ${database} runs first` : 'queued');
    const job = (ahead ?? Promise.resolve()).then(() =>
      this.#execute(request, decision).catch((error: unknown) =>
        // #execute records its own failures; this is a bug or a full disk, never an unhandled rejection.
        this.#o.log.error({ approval_id: id, err: describeError(error) }, 'execution could not be completed'),
      ),
    );
    this.#queues.set(database, job);
    void job.then(() => {
      if (this.#queues.get(database) === job) this.#queues.delete(database);
    });
  }

  async #audit(entry: AuditEntry): Promise<void> {
    await this.#o.audit
      .append(entry)
      .catch((error: unknown) =>
        this.#o.log.error(
          { approval_id: entry.approval_id, err: describeError(error) },
          'audit log not written',
        ),
      );
  }

  async #execute(request: ApprovalRequest, decision: Decision): Promise<void> {
    const { id, command } = request;
    const { config, view, log } = this.#o;
    this.#active.set(id, 'starting');
    this.#changed(id);
    const startedAt = formatTimestamp(this.#o.clock(), config.timezone);
    // The file says "running" only for a migration that takes long enough for a reader to see it: a
    // quick one goes straight to its Outcome, and its run is not slowed by a rewrite of the file. Not
    // waited for (the file is a view); stopped before any end is written, so it never lands after one.
    const showRunning = setTimeout(() => {
      void view.write(id, {
        ...decisionFields(decision),
        execution: 'running',
        execution_started_at: startedAt,
      });
    }, RUNNING_SHOWN_AFTER_MS);
    log.info({ approval_id: id, database: command.database, dry_run: command.dry_run }, 'execution started');
    let job: MigrationJob;
    try {
      // The trail says it started before anything is sent: a run the audit log cannot tell is not run.
      await this.#o.audit.append({
        approval_id: id,
        event: 'execution_started',
        actor: 'server',
        request_hash: request.request_hash,
      });
      job = await this.#prepare(request, decision);
    } catch (error) {
      clearTimeout(showRunning);
      // A request resumed after a crash may have run before it: then the ledger's word stands, not
      // this refusal (which may come from a config changed since, or a record rewritten since).
      // (An outage is waited out and the request tried again, which asks the ledger then.)
      const outage = error instanceof GateError && OUTAGE_CODES.includes(error.code);
      const recorded = outage
        ? null
        : await this.#o.targets
            .get(command.database)
            .executor.lookup(id, request.request_hash)
            .catch(() => null);
      if (recorded) await this.#ended(request, decision, recorded, false);
      else await this.#endedWithout(request, decision, 'nothing', error);
      return;
    }
    let run;
    try {
      run = await this.#o.targets.get(command.database).executor.run(job, (note) => {
        this.#active.set(id, note);
        log.info({ approval_id: id, note }, 'execution progress');
        this.#changed(id);
      });
    } catch (error) {
      clearTimeout(showRunning);
      // The executor alone knows whether it sent anything; it rejects only with ExecutionAborted.
      await this.#endedWithout(
        request,
        decision,
        error instanceof ExecutionAborted ? error.sent : 'maybe',
        error,
      );
      return;
    }
    clearTimeout(showRunning);
    await this.#ended(request, decision, run.result, run.ranHere);
  }

  /**
   * The job, from the canonical record, never from the file; its hash recomputed, the decision bound
   * to this id and this hash (a decision about a twin request with the same SQL does not count), and
   * in a signed environment the decision's signatures verified again for this record as it is now.
   */
  async #prepare(request: ApprovalRequest, decision: Decision): Promise<MigrationJob> {
    const { id, command } = request;
    if (hashCommand(command) !== request.request_hash) {
      throw new GateError(
        'RECORD_TAMPERED',
        `The record of ${id} no longer matches its hash; nothing was run.`,
      );
    }
    if (decision.approval_id !== id || decision.request_hash !== request.request_hash) {
      throw new GateError(
        'DECISION_NOT_BOUND',
        `The approval was given to ${decision.approval_id} (${decision.request_hash}), not to ${id}; nothing was run.`,
      );
    }
    // The record is in the agent's reach: what it asks is judged again under the config as it is now.
    const analysis = await analyseSql(command.sql);
    const findings = this.#o.findings.judgedAtRequest(id) ?? (await this.#judgeNow(request, analysis));
    const { approvalsRequired, rollback } = await readmit(
      this.#o.config,
      command,
      { analysis, findings },
      {
        findings: this.#o.findings,
        approversDecided: decision.decided_by === null ? 0 : decision.second_approver === null ? 1 : 2,
      },
    );
    const signers = signersOf(this.#o.config, command.environment);
    if (signers !== null) {
      const signed = await recheckRecordedSignatures(
        decision,
        { ...request, approvals_required: approvalsRequired === 2 ? 2 : request.approvals_required },
        { signers, installation: this.#o.store.installation },
      );
      if (!signed.ok)
        throw new GateError(signed.code, `The approval is not signed as required: ${signed.message}`);
    }
    return {
      approvalId: id,
      requestHash: request.request_hash,
      sql: command.sql,
      statements: analysis.statements,
      dryRun: command.dry_run,
      timeoutsMayChange: new Set(
        findings
          .filter((f) => TIMEOUT_CHANGE_CODES.has(f.code) && f.statement !== null)
          .map((f) => (f.statement ?? 0) - 1),
      ),
      backup: await this.#planBackup(request, analysis),
      rollback:
        command.dry_run && command.rollback_sql !== null && rollback !== null
          ? { sql: command.rollback_sql, statements: rollback.statements }
          : null,
    };
  }

  /**
   * The findings of a request this process did not judge at request time (it was made before a
   * restart, or by another process), judged now with the live catalog as a new request would be.
   */
  async #judgeNow(request: ApprovalRequest, analysis: Analysis): Promise<RiskFinding[]> {
    const target = this.#o.targets.get(request.command.database);
    const facts = await target.database.withClient((session) =>
      readSchemaFacts(session, analysis.statements),
    );
    return this.#o.findings.assess(analysis, facts).findings;
  }

  /**
   * backup_before: a pg_dump file when the target is a Postgres server and pg_dump runs here (taken
   * now, before the migration's transaction); otherwise copies inside the database, taken by the
   * executor in the migration's own transaction. A failed dump stops the execution (BACKUP_FAILED).
   */
  async #planBackup(request: ApprovalRequest, analysis: Analysis): Promise<MigrationJob['backup']> {
    const { command } = request;
    const { config, env } = this.#o;
    if (!command.backup_before || command.dry_run) return null;
    const database = config.databases[command.database];
    const connectionString = database?.client === 'pg' ? env[database.connection_env] : undefined;
    if (connectionString && (await pgDumpAvailable())) {
      const target = this.#o.targets.get(command.database);
      const relations = relationsOf(analysis.statements);
      const tables = await target.database.withClient((session) => existingTables(session, relations));
      const file = path.join(config.stateDir, 'backups', `${request.id}-${Date.now()}.dump`);
      const record = await dumpTables(
        connectionString,
        tables.map((t) => `${t.schema}.${t.name}`),
        file,
      );
      return { kind: 'taken', record: { ...record, tables: [...record.tables] } };
    }
    return { kind: 'table_copy', schema: `${config.ledger_schema}_backup` };
  }

  /**
   * An outage must not burn an approval: when the database cannot be reached before anything was sent,
   * the request stays approved and not started, and is queued again with backoff until the database
   * answers or the request expires. Returns false when `error` is not such an outage (or it expired).
   */
  async #waitForDatabase(request: ApprovalRequest, decision: Decision, error: unknown): Promise<boolean> {
    const unreachable = error instanceof GateError && OUTAGE_CODES.includes(error.code);
    if (!unreachable || this.#closed || this.#o.clock().getTime() >= Date.parse(request.expires_at))
      return false;
    const { id } = request;
    const attempt = (this.#outageAttempts.get(id) ?? 0) + 1;
    this.#outageAttempts.set(id, attempt);
    const delayMs = Math.min(DATABASE_RETRY_MAX_MS, DATABASE_RETRY_FIRST_MS * 2 ** (attempt - 1));
    const note =
      `waiting for the database, which is unreachable: nothing was sent (${describeError(error)}). ` +
      `Trying again in ${Math.ceil(delayMs / 1000)} s, until the request expires at ${request.expires_at}`;
    this.#active.set(id, note);
    this.#o.log.warn({ approval_id: id, attempt, delay_ms: delayMs }, note);
    this.#changed(id);
    await this.#o.view.write(id, {
      ...decisionFields(decision),
      execution: 'not_started',
      execution_error: note,
    });
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      if (!this.#closed) this.#enqueue(request, decision);
    }, delayMs);
    timer.unref();
    this.#timers.add(timer);
    return true;
  }

  /** The job ended without a result: recorded as failed (nothing sent) or unknown, never only here. */
  async #endedWithout(
    request: ApprovalRequest,
    decision: Decision,
    sent: Sent,
    error: unknown,
  ): Promise<void> {
    if (sent === 'nothing' && (await this.#waitForDatabase(request, decision, error))) return;
    const { id } = request;
    const { config, log } = this.#o;
    this.#outageAttempts.delete(id);
    const message = describeError(error);
    const outcome: StoredOutcome = {
      execution: sent === 'nothing' ? 'failed' : 'unknown',
      in_ledger: false,
      error: message,
      at: formatTimestamp(this.#o.clock(), config.timezone),
    };
    // Not only in memory: after a restart the request is final, never "running" for ever.
    await this.#o.store
      .recordOutcome(id, outcome)
      .catch((cause: unknown) =>
        log.error({ approval_id: id, err: describeError(cause) }, 'could not record the outcome'),
      );
    this.#unrecorded.set(id, outcome);
    this.#active.delete(id);
    log.error({ approval_id: id, err: message, sent }, 'execution did not complete');
    await this.#audit({
      approval_id: id,
      event: sent === 'nothing' ? 'execution_failed' : 'outcome_unknown',
      actor: 'server',
      request_hash: request.request_hash,
      detail: message,
    });
    // Told once recorded: whoever is woken reads the outcome from the record, not from the file, which
    // shows it next (and says so to its own readers, see FileView).
    this.#changed(id);
    await this.#o.view.write(
      id,
      { ...decisionFields(decision), execution: outcome.execution, execution_error: message },
      {
        decision,
        summary: unrecordedSummary(sent, config.ledger_schema, id),
        details: [`Error: ${message}`],
      },
    );
  }

  /** The job ended with a result the ledger holds: recorded as final, then told, then shown. */
  async #ended(
    request: ApprovalRequest,
    decision: Decision,
    result: ExecutionResult,
    ranHere: boolean,
  ): Promise<void> {
    const { id } = request;
    const { config, log } = this.#o;
    this.#outageAttempts.delete(id);
    await this.#o.store
      .recordOutcome(id, {
        execution: result.state,
        in_ledger: true,
        error: result.error?.message ?? null,
        at: formatTimestamp(new Date(result.finished_at), config.timezone),
      })
      .catch((cause: unknown) =>
        log.error({ approval_id: id, err: describeError(cause) }, 'could not record the outcome'),
      );
    this.#results.set(id, result);
    this.#active.delete(id);
    log.info(
      {
        approval_id: id,
        state: result.state,
        duration_ms: result.duration_ms,
        ran_here: ranHere,
        executed_by: result.executed_by,
      },
      ranHere ? 'execution finished' : 'found the recorded result; not running it again',
    );
    await this.#audit({
      approval_id: id,
      event: !ranHere
        ? 'result_found'
        : result.state === 'failed'
          ? 'execution_failed'
          : result.state === 'unknown'
            ? 'outcome_unknown'
            : 'executed',
      actor: 'server',
      request_hash: request.request_hash,
      detail: `${result.state} in ${result.duration_ms} ms by ${result.executed_by}${result.error ? `: ${result.error.message}` : ''}`,
    });
    // Told once recorded, then shown (see #endedWithout).
    this.#changed(id);
    const findings = await this.#o.findings.of(request);
    await this.#o.view.write(
      id,
      {
        ...decisionFields(decision),
        execution: result.state,
        execution_started_at: formatTimestamp(new Date(result.started_at), config.timezone),
        execution_finished_at: formatTimestamp(new Date(result.finished_at), config.timezone),
        execution_duration_ms: result.duration_ms,
        execution_rows_affected: result.rows_affected,
        execution_error: result.error?.message,
      },
      { decision, summary: summariseResult(result, findings), details: executionDetails(result, decision) },
    );
  }
}

function fromOutcome(outcome: StoredOutcome): ExecutionView {
  return { execution: outcome.execution, result: null, executionError: outcome.error, final: true };
}
