import { EventEmitter } from 'node:events';
import path from 'node:path';
import type { Knex } from 'knex';
import { Gate, type DecisionProblem } from './approvals/gate.js';
import { updateFrontMatter, type FrontMatterValue } from './approvals/frontmatter.js';
import { showDecisionInBody } from './approvals/decision-display.js';
import {
  renderApprovalFile,
  renderOutcomeSection,
  RESULT_MARKER,
  type OutcomeSection,
} from './approvals/render.js';
import {
  hashCommand,
  type ApprovalRequest,
  type Decision,
  type MigrationCommand,
} from './approvals/request.js';
import { ApprovalStore } from './approvals/store.js';
import { AuditLog } from './approvals/audit.js';
import { assertOneLine, assertVisible } from './approvals/invisible.js';
import { hasOutcomeMarker } from './approvals/sections.js';
import { recheckRecordedSignatures } from './approvals/signed-decision.js';
import type { Transport } from './trust-anchors.js';
import { withReachableSession } from './migration/session.js';
import { Notifier } from './approvals/notify.js';
import type { Config } from './config.js';
import { openDatabase } from './db.js';
import { describeError, GateError } from './errors.js';
import type { Logger } from './log.js';
import { analyseSql, assertExecutable, relationsOf, type Analysis } from './migration/analyse.js';
import { dumpTables, existingTables, pgDumpAvailable } from './migration/backup.js';
import { describeRelations, type RelationFacts } from './migration/catalog.js';
import { Executor, type MigrationJob } from './migration/execute.js';
import { assertDryRunIsDry, assessRisks, RISK_TITLES, type RiskFinding } from './migration/risks.js';
import type { ExecutionResult } from './migration/result.js';
import { crashPoint } from './faults.js';
import { formatTimestamp, systemClock, wholeSeconds, type Clock } from './time.js';
import { validateMigrationFile } from './service/migration-file.js';
import { MigrationRequestInput } from './service/request-input.js';
import { executionDetails, signatureLines, summariseResult } from './service/result-wording.js';
import { assertSigningReady, signersOf, warnUnsetConnections } from './service/startup.js';

export interface ApprovalSummary {
  readonly approval_id: string;
  readonly status: 'PENDING' | Decision['status'];
  readonly execution: string;
  readonly title: string;
  readonly environment: string;
  readonly database: string;
  readonly priority: string;
  readonly requested_by: string;
  readonly created_at: string;
  readonly expires_at: string;
  readonly decided_by: string | null;
  readonly problem: string | null;
  readonly file: string;
}

export type ExecutionState = 'not_started' | 'running' | 'unknown' | ExecutionResult['state'];

export interface ApprovalStatus {
  readonly request: ApprovalRequest;
  readonly file: string;
  readonly decision: Decision | null;
  readonly problem: DecisionProblem | null;
  readonly execution: ExecutionState;
  readonly result: ExecutionResult | null;
  /** Why the outcome is unknown or why execution could not start, when it is. */
  readonly executionError: string | null;
  /** What a running execution is doing now (attempt, lock waits), when this instance runs it. */
  readonly progress?: string | null;
  /** True when nothing more will happen to this request. */
  readonly final: boolean;
  /** What the statements risk, computed from the parse tree. */
  readonly findings: readonly RiskFinding[];
  /** The touched relations in the live catalog at request time (empty when not known here). */
  readonly impact: readonly RelationFacts[];
  /**
   * 'unreachable': the ledger could not be read from here (an approver's terminal without the database
   * URL, or an outage), so `execution` says only what this process knows, not what happened.
   */
  readonly ledger?: 'unreachable';
}

export interface PipelineOptions {
  readonly clock?: Clock;
  readonly log: Logger;
  /**
   * 'server' (default) watches files and executes approved requests. 'client' (the CLI) only reads
   * and submits: it never decides or executes, a running server picks its requests up.
   */
  readonly role?: 'server' | 'client';
  readonly env?: NodeJS.ProcessEnv;
  readonly serverName?: string;
  /**
   * How MCP clients reach this server. Over stdio the client spawned it, so it runs as the agent's own
   * OS user; trust anchors must then be out of that user's reach too (see trust-anchors.ts).
   */
  readonly transport?: Transport;
}

interface Target {
  readonly knex: Knex;
  readonly executor: Executor;
}

type LocalExecution =
  | { readonly state: 'running'; readonly note?: string }
  | { readonly state: 'done'; readonly result: ExecutionResult }
  | { readonly state: 'unknown' | 'not_started'; readonly error: string };

/** Backoff while the database is unreachable before an approved migration starts. */
const DATABASE_RETRY_FIRST_MS = 1000;
const DATABASE_RETRY_MAX_MS = 60_000;

/**
 * The whole pipeline: request → approval store → gate → executor → result. The MCP
 * server and the CLI are thin shells over it.
 */
export class Pipeline {
  readonly config: Config;
  readonly #store: ApprovalStore;
  readonly #audit: AuditLog;
  readonly #gate: Gate;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #env: NodeJS.ProcessEnv;
  readonly #serverName: string;
  readonly #role: 'server' | 'client';
  readonly #targets = new Map<string, Target>();
  readonly #executions = new Map<string, LocalExecution>();
  readonly #findings = new Map<string, RiskFinding[]>();
  /** Catalog facts at request time, kept for the results of this instance's own requests. */
  readonly #impact = new Map<string, readonly RelationFacts[]>();
  readonly #events = new EventEmitter();
  /** Approved requests whose execution this process has begun (at most once each). */
  readonly #started = new Set<string>();
  /** Attempts to reach an unreachable database, per approved request (backoff). */
  readonly #outageAttempts = new Map<string, number>();
  #closed = false;
  readonly #notifier: Notifier;

  private constructor(config: Config, store: ApprovalStore, options: PipelineOptions) {
    this.config = config;
    this.#store = store;
    this.#clock = options.clock ?? systemClock;
    this.#log = options.log;
    this.#env = options.env ?? process.env;
    this.#serverName = options.serverName ?? 'approval-gate';
    this.#role = options.role ?? 'server';
    // Every waiting tool call and every subscribed session listens; far more than that is a leak.
    this.#events.setMaxListeners(10_000);
    this.#audit = new AuditLog(config.stateDir, this.#clock);
    this.#notifier = new Notifier(config.notify, this.#log);
    this.#gate = new Gate({
      store,
      audit: this.#audit,
      clock: this.#clock,
      log: this.#log,
      timeZone: config.timezone,
      approversFor: (request) => config.environments[request.command.environment]?.approvers ?? null,
      signersFor: (request) => signersOf(config, request.command.environment),
      autoApproval: (request) => {
        const policy = config.environments[request.command.environment]?.require_approval ?? 'always';
        if (policy === 'never' || (policy === 'not_for_dry_runs' && request.command.dry_run)) {
          return `the ${request.command.environment} environment does not require approval${policy === 'never' ? '' : ' for dry runs'} (require_approval: ${policy})`;
        }
        return null;
      },
      recheckIntervalMs: config.gate.recheck_interval_ms,
      watchFiles: config.gate.watch_files,
      onDecision: (request, decision) => this.#onDecision(request, decision),
      // Before the gate tells anyone: a status read then knows this process runs it, instead of
      // asking the ledger (which on PGlite would wait behind the migration for its one connection).
      onRecorded: (request, decision) => {
        if (decision.status === 'APPROVED' && !this.#executions.has(request.id))
          this.#executions.set(request.id, { state: 'running', note: 'starting' });
      },
    });
    this.#gate.events.on('changed', (id: string) => {
      this.#changed(id);
    });
  }

  /** Tells waiting calls (`id`) and subscribers (`*`) once that a request changed. */
  #changed(id: string): void {
    this.#events.emit(id);
    this.#events.emit('*', id);
  }

  /** Opens the store, starts the gate and resumes every request left undecided or unexecuted. */
  static async open(config: Config, options: PipelineOptions): Promise<Pipeline> {
    if ((options.role ?? 'server') === 'server') {
      await assertSigningReady(config, options.transport ?? 'stdio', options.log);
      warnUnsetConnections(config, options.env ?? process.env, options.log);
    }
    const store = await ApprovalStore.open(config.approvalsDir, config.stateDir);
    const pipeline = new Pipeline(config, store, options);
    if (pipeline.#role === 'server') {
      pipeline.#gate.start();
      await pipeline.#resume();
    }
    return pipeline;
  }

  /**
   * Calls `listener` with the id of every request that appears or changes (new request, decision,
   * execution progress or result). Returns the function that stops it.
   */
  onChange(listener: (id: string) => void): () => void {
    this.#events.on('*', listener);
    return () => this.#events.off('*', listener);
  }

  /** The approval file's text, for readers that cannot open files (MCP resources). */
  async fileText(id: string): Promise<string> {
    const file = await this.#store.readApprovalFile(id);
    if (file.kind === 'ok') return file.text;
    throw new GateError(
      'APPROVAL_FILE_UNAVAILABLE',
      `The approval file of ${id} is ${file.kind === 'missing' ? 'missing' : 'unreadable'}.`,
    );
  }

  /** Notifications still being delivered (tests and shutdown wait for them). */
  notificationsSettled(): Promise<void> {
    return this.#notifier.settled();
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#gate.stop();
    await Promise.all([...this.#targets.values()].map((target) => target.knex.destroy()));
    this.#targets.clear();
  }

  #target(database: string): Target {
    let target = this.#targets.get(database);
    if (!target) {
      const databaseConfig = this.config.databases[database];
      if (!databaseConfig)
        throw new GateError('DATABASE_UNKNOWN', `Database "${database}" is not configured.`);
      const knex = openDatabase(database, databaseConfig, this.#env, this.#log);
      target = {
        knex,
        executor: new Executor(knex, {
          ledgerSchema: this.config.ledger_schema,
          installation: this.#store.installation,
          lockTimeoutMs: this.config.executor.lock_timeout_ms,
          statementTimeoutMs: this.config.executor.statement_timeout_ms,
          lockRetry: {
            retries: this.config.executor.lock_retries,
            initialDelayMs: this.config.executor.retry_delay_ms,
            maxDelayMs: this.config.executor.max_retry_delay_ms,
          },
        }),
      };
      this.#targets.set(database, target);
    }
    return target;
  }

  /** Findings from the parse tree, and from the live catalog when it was read (`impact`). */
  #assess(analysis: Analysis, impact: readonly RelationFacts[] = []): RiskFinding[] {
    return assessRisks(
      analysis.statements,
      {
        lockTimeoutMs: this.config.executor.lock_timeout_ms,
        lockRetries: this.config.executor.lock_retries,
      },
      { foreignTables: new Set(impact.filter((f) => f.kind === 'foreign table').map((f) => f.name)) },
    );
  }

  /** Risk findings of a stored request, recomputed from its record (cached). */
  async findingsOf(request: ApprovalRequest): Promise<RiskFinding[]> {
    let findings = this.#findings.get(request.id);
    if (!findings) {
      // Without the catalog here: a finding that needs it (a foreign table) is in the file and in
      // the results of the instance that took the request.
      findings = this.#assess(await analyseSql(request.command.sql), this.#impact.get(request.id));
      this.#findings.set(request.id, findings);
    }
    return findings;
  }

  async submit(
    raw: MigrationRequestInput,
    origin: { readonly requestedBy?: string; readonly rollbackOf?: string } = {},
  ): Promise<{ request: ApprovalRequest; analysis: Analysis; findings: RiskFinding[] }> {
    const parsed = MigrationRequestInput.safeParse(raw);
    if (!parsed.success) {
      throw new GateError(
        'REQUEST_INVALID',
        `The request is not valid: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
      );
    }
    const input = parsed.data;
    // Agent text is hostile: nothing a reviewer cannot see, and a title that stays one line.
    assertOneLine('title', input.title);
    for (const field of ['title', 'reason', 'sql', 'rollback_sql'] as const)
      assertVisible(field, input[field]);
    const environment = this.config.environments[input.environment];
    if (!environment) {
      throw new GateError(
        'ENVIRONMENT_UNKNOWN',
        `Environment "${input.environment}" is not configured. Allowed: ${Object.keys(this.config.environments).join(', ')}.`,
      );
    }
    if (!environment.databases.includes(input.database)) {
      throw new GateError(
        'DATABASE_NOT_ALLOWED',
        `Environment "${input.environment}" does not include database "${input.database}". Allowed: ${environment.databases.join(', ')}.`,
      );
    }
    const migrationFile = await validateMigrationFile(input.migration_file, this.config);
    assertVisible('migration_file', migrationFile);
    const analysis = await analyseSql(input.sql);
    const gateSchemas = [this.config.ledger_schema, `${this.config.ledger_schema}_backup`];
    assertExecutable(analysis, { dryRun: input.dry_run, gateSchemas });
    // Refuse now, not after a human has spent time, when the target cannot be reached; the catalog
    // also tells which relations are foreign tables.
    const target = this.#target(input.database);
    await target.executor.prepare();
    const relations = relationsOf(analysis.statements);
    const impact = await withReachableSession(target.knex, (session) =>
      describeRelations(session, relations),
    );
    const findings = this.#assess(analysis, impact);
    assertDryRunIsDry(findings, { dryRun: input.dry_run });
    const refused = findings.filter((f) => environment.risk_policy[f.code] === 'refuse');
    if (refused.length > 0) {
      throw new GateError(
        'POLICY_REFUSED',
        `The ${input.environment} policy refuses this migration: ` +
          refused
            .map((f) => `${RISK_TITLES[f.code]} (statement ${f.statement ?? 'all'}): ${f.message}`)
            .join(' ') +
          ' Nothing was written.',
      );
    }
    const approvalsRequired = findings.some((f) => environment.risk_policy[f.code] === 'two_approvers')
      ? 2
      : 1;
    if (input.rollback_sql !== undefined) {
      const rollback = await analyseSql(input.rollback_sql).catch((error: unknown) => {
        throw new GateError('ROLLBACK_SQL_INVALID', `rollback_sql: ${describeError(error)}`);
      });
      // A dry run rehearses the rollback SQL too: it must be as executable and as dry as the SQL.
      if (input.dry_run) {
        try {
          assertExecutable(rollback, { dryRun: true, gateSchemas });
          assertDryRunIsDry(this.#assess(rollback), { dryRun: true });
        } catch (error) {
          if (error instanceof GateError) throw new GateError(error.code, `rollback_sql: ${error.message}`);
          throw error;
        }
      }
    }
    const created = wholeSeconds(this.#clock());
    const expires = new Date(created.getTime() + this.config.expiry_minutes[input.priority] * 60_000);
    const command: MigrationCommand = {
      environment: input.environment,
      database: input.database,
      migration_file: migrationFile,
      sql: input.sql,
      rollback_sql: input.rollback_sql ?? null,
      dry_run: input.dry_run,
      backup_before: input.backup_before,
    };
    const request = await this.#store.create(
      {
        created_at: formatTimestamp(created, this.config.timezone),
        expires_at: formatTimestamp(expires, this.config.timezone),
        requested_by: origin.requestedBy ?? this.config.requested_by,
        rollback_of: origin.rollbackOf ?? null,
        approvals_required: approvalsRequired,
        priority: input.priority,
        title: input.title,
        reason: input.reason,
        command,
        request_hash: hashCommand(command),
      },
      (request) =>
        renderApprovalFile(request, {
          findings,
          impact,
          statements: analysis.statements,
          lockTimeoutMs: this.config.executor.lock_timeout_ms,
          statementTimeoutMs: this.config.executor.statement_timeout_ms,
          serverName: this.#serverName,
          signing:
            signersOf(this.config, command.environment) === null
              ? null
              : { installation: this.#store.installation },
        }),
    );
    this.#log.info(
      {
        approval_id: request.id,
        environment: command.environment,
        database: command.database,
        expires_at: request.expires_at,
      },
      'approval requested',
    );
    crashPoint('after-file-write');
    await this.#audit.append({
      approval_id: request.id,
      event: 'requested',
      actor: request.requested_by,
      request_hash: request.request_hash,
      detail: `${command.environment}/${command.database}: ${request.title}`,
    });
    if (this.#role === 'server') this.#gate.track(request);
    this.#findings.set(request.id, findings);
    this.#impact.set(request.id, impact);
    this.#notifier.pending({ request, file: this.#store.filePath(request.id), findings });
    this.#changed(request.id);
    return { request, analysis, findings };
  }

  /**
   * Asks for the recorded rollback SQL of an executed request to be run: a new request, approved like
   * any other (and never by the person who asked for it). Nothing runs automatically.
   */
  async requestRollback(
    id: string,
    who: { readonly requestedBy: string; readonly reason: string },
  ): Promise<{ request: ApprovalRequest; findings: RiskFinding[] }> {
    const original = await this.status(id);
    const { request } = original;
    if (request.command.rollback_sql === null) {
      throw new GateError(
        'NO_ROLLBACK_SQL',
        `${id} was requested without rollback SQL; a rollback has to be written and requested as a new migration.`,
      );
    }
    if (original.execution !== 'succeeded' || original.result?.dry_run !== false) {
      throw new GateError(
        'NOTHING_TO_ROLL_BACK',
        `${id} has not been executed successfully (execution: ${original.execution}); there is nothing to roll back.`,
      );
    }
    let earlier = 0;
    for (const other of await this.#store.listRequestIds()) {
      // A record or decision that fails its checks can never run, so it cannot hold the rollback slot.
      const candidate = await this.#store.readRequest(other).catch(() => null);
      if (candidate?.rollback_of !== id) continue;
      earlier += 1;
      const decision = await this.#store.readDecision(other).catch(() => null);
      if (!decision || decision.status === 'APPROVED') {
        throw new GateError(
          'ROLLBACK_ALREADY_REQUESTED',
          `A rollback of ${id} was already requested: ${other}.`,
        );
      }
    }
    // Checked, then claimed: of two concurrent calls (in one process or two) that both passed the
    // check, only the one that creates the claim for this generation goes on.
    if (!(await this.#store.claimRollback(id, earlier + 1))) {
      throw new GateError('ROLLBACK_ALREADY_REQUESTED', `A rollback of ${id} is being requested right now.`);
    }
    try {
      const { request: rollback, findings } = await this.submit(
        {
          environment: request.command.environment,
          database: request.command.database,
          sql: request.command.rollback_sql,
          title: `Roll back ${id}: ${request.title}`.slice(0, 200),
          reason: `Runs the rollback SQL recorded with ${id} (executed ${original.result.finished_at}). Requested by ${who.requestedBy}: ${who.reason}`,
          priority: request.priority,
        },
        { requestedBy: who.requestedBy, rollbackOf: id },
      );
      return { request: rollback, findings };
    } catch (error) {
      // No rollback request came of it: the next attempt may claim this generation again.
      await this.#store.releaseRollbackClaim(id, earlier + 1);
      throw error;
    }
  }

  /** A line per request: the state directory, the files for display, and the ledger for executions. */
  async list(filter: { status?: ApprovalSummary['status'] } = {}): Promise<ApprovalSummary[]> {
    const summaries: ApprovalSummary[] = [];
    for (const id of await this.#store.listRequestIds()) {
      const state = await this.#readState(id, 'not listed');
      if (!state) continue;
      const { request, decision } = state;
      const file = await this.#store.readApprovalFile(id);
      const data = file.kind === 'ok' ? file.parsed.data : {};
      // From the server's own model (local run, recorded outcome, the ledger), never from the file,
      // which anyone can edit: one ledger read per approved request.
      const execution =
        decision?.status !== 'APPROVED'
          ? 'not_started'
          : await this.status(id).then(
              (status) => (status.ledger === 'unreachable' ? 'unknown here' : status.execution),
              () => 'unknown here',
            );
      const summary: ApprovalSummary = {
        approval_id: id,
        status: decision?.status ?? 'PENDING',
        execution,
        title: request.title,
        environment: request.command.environment,
        database: request.command.database,
        priority: request.priority,
        requested_by: request.requested_by,
        created_at: request.created_at,
        expires_at: request.expires_at,
        decided_by: decision?.decided_by ?? null,
        problem: typeof data.gate_error === 'string' ? data.gate_error : null,
        file: this.#store.filePath(id),
      };
      if (filter.status === undefined || filter.status === summary.status) summaries.push(summary);
    }
    return summaries;
  }

  /** The requester withdraws a pending request; nothing of it ever runs. */
  async cancel(id: string, who: { readonly by: string; readonly reason: string }): Promise<ApprovalStatus> {
    const request = await this.#store.readRequest(id);
    if (!request)
      throw new GateError('APPROVAL_NOT_FOUND', `No approval request ${id} was issued by this server.`);
    const decision: Decision = {
      approval_id: id,
      request_hash: request.request_hash,
      status: 'CANCELLED',
      decided_by: who.by,
      decided_at: formatTimestamp(this.#clock(), this.config.timezone),
      claimed_decided_at: null,
      second_approver: null,
      reason: `Withdrawn by ${who.by}: ${who.reason}`,
      signatures: [],
    };
    const standing = await this.#store.recordDecision(id, decision);
    if (standing !== decision) {
      throw new GateError(
        'ALREADY_DECIDED',
        `${id} was already decided (${standing.status}); it cannot be cancelled.`,
      );
    }
    await this.#audit.append({
      approval_id: id,
      event: 'cancelled',
      actor: who.by,
      request_hash: request.request_hash,
      detail: who.reason,
    });
    this.#log.info({ approval_id: id, by: who.by }, 'request withdrawn');
    await this.#onDecision(request, decision);
    return this.status(id);
  }

  filePath(id: string): string {
    return this.#store.filePath(id);
  }

  /** This installation's id, which signed decisions name. */
  get installation(): string {
    return this.#store.installation;
  }

  /** Why a file's content was not accepted, for any id (including ones this server never issued). */
  async problemOf(id: string): Promise<DecisionProblem | null> {
    return this.#gate.problem(id);
  }

  async status(id: string): Promise<ApprovalStatus> {
    const request = await this.#store.readRequest(id);
    if (!request) {
      throw new GateError('APPROVAL_NOT_FOUND', `No approval request ${id} was issued by this server.`);
    }
    const decision = await this.#store.readDecision(id);
    const base = {
      request,
      file: this.#store.filePath(id),
      decision,
      problem: this.#gate.problem(id),
      findings: await this.findingsOf(request),
      impact: this.#impact.get(id) ?? [],
    };
    if (!decision) {
      return { ...base, execution: 'not_started', result: null, executionError: null, final: false };
    }
    if (decision.status !== 'APPROVED') {
      return { ...base, execution: 'not_started', result: null, executionError: null, final: true };
    }
    const local = this.#executions.get(id);
    if (local?.state === 'done') {
      return {
        ...base,
        execution: local.result.state,
        result: local.result,
        executionError: null,
        final: true,
      };
    }
    if (local?.state === 'unknown' || local?.state === 'not_started') {
      const execution = local.state === 'unknown' ? 'unknown' : 'failed';
      return { ...base, execution, result: null, executionError: local.error, final: true };
    }
    if (local?.state === 'running') {
      // This process runs it: it knows it is running, and asking the ledger would wait behind the job
      // (PGlite has a single connection, which the migration holds).
      return {
        ...base,
        execution: 'running',
        result: null,
        executionError: null,
        progress: local.note ?? null,
        final: false,
      };
    }
    let lookupError: string | null = null;
    try {
      const recorded = await this.#target(request.command.database).executor.lookup(id, request.request_hash);
      if (recorded)
        return { ...base, execution: recorded.state, result: recorded, executionError: null, final: true };
    } catch (error) {
      if (error instanceof GateError && error.code === 'LEDGER_CONFLICT') {
        // Certain: this request can never run against that ledger. Say so instead of "running".
        return { ...base, execution: 'failed', result: null, executionError: error.message, final: true };
      }
      // Unreachable or unreadable for now: report it with the running state rather than hide it.
      lookupError = `the ledger could not be read: ${describeError(error)}`;
    }
    // No ledger row: an outcome recorded in the state directory (nothing was sent, or unknown) is
    // final; it outlives the process that saw it.
    const stored = await this.#store.readOutcome(id);
    if (stored) {
      return {
        ...base,
        execution: stored.execution,
        result: null,
        executionError: stored.error,
        final: true,
      };
    }
    return {
      ...base,
      execution: 'running',
      result: null,
      executionError: lookupError,
      ...(lookupError !== null ? { ledger: 'unreachable' as const } : {}),
      progress: null,
      final: false,
    };
  }

  /**
   * Waits until the request is final or `timeoutMs` passes, whichever comes first, calling
   * `onTick` every `tickMs` meanwhile. Returns the status at that moment.
   */
  async waitForFinal(
    id: string,
    options: {
      timeoutMs: number;
      tickMs: number;
      signal?: AbortSignal;
      onTick?: (status: ApprovalStatus, elapsedMs: number) => Promise<void>;
    },
  ): Promise<ApprovalStatus> {
    const start = Date.now();
    let status = await this.status(id);
    while (!status.final && !options.signal?.aborted) {
      const elapsed = Date.now() - start;
      const left = options.timeoutMs - elapsed;
      if (left <= 0) break;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.#events.off(id, done);
          options.signal?.removeEventListener('abort', done);
          resolve();
        };
        const timer = setTimeout(done, Math.min(left, options.tickMs));
        this.#events.on(id, done);
        options.signal?.addEventListener('abort', done);
      });
      status = await this.status(id);
      if (!status.final && options.onTick) await options.onTick(status, Date.now() - start);
    }
    return status;
  }

  /**
   * A request's record and decision, or null (logged) when there is none or either fails its checks:
   * a forged or edited record or decision never runs, and never stops a listing or the server's start.
   */
  async #readState(
    id: string,
    skipped: string,
  ): Promise<{ request: ApprovalRequest; decision: Decision | null } | null> {
    try {
      const request = await this.#store.readRequest(id);
      return request && { request, decision: await this.#store.readDecision(id) };
    } catch (error) {
      this.#log.error(
        { approval_id: id, err: describeError(error) },
        `${skipped}: its state fails its checks`,
      );
      return null;
    }
  }

  async #resume(): Promise<void> {
    for (const id of await this.#store.listRequestIds()) {
      const state = await this.#readState(id, 'not resumed');
      if (!state) continue;
      const { request, decision } = state;
      if (!decision) {
        this.#gate.track(request);
        continue;
      }
      const file = await this.#store.readApprovalFile(id);
      if (file.kind === 'ok' && hasOutcomeMarker(file.text, RESULT_MARKER)) continue;
      // Ended without a ledger row (not started, or unknown): never run again on a restart.
      if (await this.#store.readOutcome(id).catch(() => null)) continue;
      this.#log.info(
        { approval_id: id, status: decision.status },
        'resuming a decided request whose outcome was not written',
      );
      this.#onDecision(request, decision).catch((error: unknown) =>
        this.#log.error({ approval_id: id, err: describeError(error) }, 'resuming a decided request failed'),
      );
    }
  }

  async #writeToFile(
    id: string,
    fields: Record<string, FrontMatterValue>,
    outcome?: OutcomeSection,
  ): Promise<void> {
    try {
      const written = await this.#store.updateApprovalFile(id, (text) => {
        const updated = updateFrontMatter(text, fields);
        if (outcome === undefined) return updated;
        const shown = showDecisionInBody(updated, outcome.decision);
        return hasOutcomeMarker(shown, RESULT_MARKER)
          ? shown
          : `${shown.replace(/\n*$/, '\n')}${renderOutcomeSection(outcome)}`;
      });
      if (!written)
        this.#log.warn({ approval_id: id }, 'approval file missing or unreadable; outcome not written to it');
    } catch (error) {
      this.#log.error(
        { approval_id: id, err: describeError(error) },
        'could not write the outcome into the approval file',
      );
    }
  }

  /**
   * backup_before: a pg_dump file when the target is a Postgres server and pg_dump runs here (taken
   * now, before the migration's transaction); otherwise copies inside the database, taken by the
   * executor in the migration's own transaction. A failed dump stops the execution (BACKUP_FAILED).
   */
  async #planBackup(request: ApprovalRequest, analysis: Analysis): Promise<MigrationJob['backup']> {
    const { command } = request;
    if (!command.backup_before || command.dry_run) return null;
    const database = this.config.databases[command.database];
    const connectionString = database?.client === 'pg' ? this.#env[database.connection_env] : undefined;
    if (connectionString && (await pgDumpAvailable())) {
      const target = this.#target(command.database);
      const relations = relationsOf(analysis.statements);
      const tables = await withReachableSession(target.knex, (session) => existingTables(session, relations));
      const file = path.join(this.config.stateDir, 'backups', `${request.id}-${Date.now()}.dump`);
      const record = await dumpTables(
        connectionString,
        tables.map((t) => `${t.schema}.${t.name}`),
        file,
      );
      return { kind: 'taken', record: { ...record, tables: [...record.tables] } };
    }
    return { kind: 'table_copy', schema: `${this.config.ledger_schema}_backup` };
  }

  async #onDecision(request: ApprovalRequest, decision: Decision): Promise<void> {
    const { id } = request;
    const notRun = { execution: 'not_started' } as const;
    switch (decision.status) {
      case 'APPROVED':
        await this.#execute(request, decision);
        break;
      case 'REJECTED':
        await this.#writeToFile(
          id,
          { ...notRun, gate_error: undefined },
          {
            decision,
            summary: 'Rejected; nothing was executed.',
            details: [`Reason: ${decision.reason ?? ''}`, ...signatureLines(decision)],
          },
        );
        break;
      case 'EXPIRED':
        await this.#writeToFile(
          id,
          { ...notRun, status: 'EXPIRED', gate_error: undefined },
          {
            decision,
            summary: 'Expired without a valid decision; nothing was executed.',
            details: [],
          },
        );
        break;
      case 'VOID':
        await this.#writeToFile(
          id,
          { ...notRun, status: 'VOID', gate_error: decision.reason ?? 'void' },
          {
            decision,
            summary:
              'VOID: the approval did not match what would run; nothing was executed, and this request can never run.',
            details: [decision.reason ?? ''],
          },
        );
        break;
      case 'CANCELLED':
        // The file is gone; if it comes back, it says so.
        await this.#writeToFile(
          id,
          { ...notRun, status: 'CANCELLED' },
          {
            decision,
            summary: 'Cancelled; nothing was executed.',
            details: [decision.reason ?? ''],
          },
        );
        break;
    }
    this.#changed(id);
  }

  /**
   * An outage must not burn an approval: when the database cannot be reached before anything was sent,
   * the request stays approved and not started, and is tried again with backoff until the database
   * answers or the request expires. Returns false when `error` is not such an outage (or it expired).
   */
  async #waitForDatabase(request: ApprovalRequest, decision: Decision, error: unknown): Promise<boolean> {
    const unreachable =
      error instanceof GateError && ['DATABASE_UNREACHABLE', 'LEDGER_UNAVAILABLE'].includes(error.code);
    if (!unreachable || this.#closed || this.#clock().getTime() >= Date.parse(request.expires_at))
      return false;
    const { id } = request;
    const attempt = (this.#outageAttempts.get(id) ?? 0) + 1;
    this.#outageAttempts.set(id, attempt);
    const delayMs = Math.min(DATABASE_RETRY_MAX_MS, DATABASE_RETRY_FIRST_MS * 2 ** (attempt - 1));
    const note =
      `waiting for the database, which is unreachable: nothing was sent (${describeError(error)}). ` +
      `Trying again in ${Math.ceil(delayMs / 1000)} s, until the request expires at ${request.expires_at}`;
    this.#executions.set(id, { state: 'running', note });
    this.#log.warn({ approval_id: id, attempt, delay_ms: delayMs }, note);
    this.#changed(id);
    await this.#writeToFile(id, { execution: 'not_started', execution_error: note });
    const timer = setTimeout(() => {
      this.#started.delete(id);
      if (!this.#closed) void this.#execute(request, decision);
    }, delayMs);
    timer.unref();
    return true;
  }

  async #execute(request: ApprovalRequest, decision: Decision): Promise<void> {
    const { id, command } = request;
    if (this.#started.has(id)) return;
    this.#started.add(id);
    this.#executions.set(id, { state: 'running' });
    this.#changed(id);
    await this.#writeToFile(id, {
      gate_error: undefined,
      // A decision the policy made (no human): the file's status says it, like the body will.
      ...(decision.decided_by === null ? { status: decision.status } : {}),
      execution: 'running',
      execution_started_at: formatTimestamp(this.#clock(), this.config.timezone),
    });
    this.#log.info(
      { approval_id: id, database: command.database, dry_run: command.dry_run },
      'execution started',
    );
    await this.#audit.append({
      approval_id: id,
      event: 'execution_started',
      actor: 'server',
      request_hash: request.request_hash,
    });
    let result: ExecutionResult;
    let ranHere: boolean;
    let findings: RiskFinding[] = [];
    try {
      // From the canonical record, never from the file; its hash recomputed, and the decision bound
      // to this id and this hash (a decision about a twin request with the same SQL does not count).
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
      // In a signed environment the decision's signatures are verified again, for this record as it is
      // now: a decision written into the state directory by anyone but the gate carries none that hold.
      const signers = signersOf(this.config, command.environment);
      if (signers !== null) {
        const signed = await recheckRecordedSignatures(decision, request, {
          signers,
          installation: this.#store.installation,
        });
        if (!signed.ok)
          throw new GateError(signed.code, `The approval is not signed as required: ${signed.message}`);
      }
      const analysis = await analyseSql(command.sql);
      findings = this.#assess(analysis);
      ({ result, ranHere } = await this.#target(command.database).executor.run(
        {
          approvalId: id,
          requestHash: request.request_hash,
          sql: command.sql,
          statements: analysis.statements,
          dryRun: command.dry_run,
          timeoutsMayChange: new Set(
            findings
              .filter((f) => f.code === 'TIMEOUT_OVERRIDE' && f.statement !== null)
              .map((f) => (f.statement ?? 0) - 1),
          ),
          backup: await this.#planBackup(request, analysis),
          rollback:
            command.dry_run && command.rollback_sql !== null
              ? { sql: command.rollback_sql, statements: (await analyseSql(command.rollback_sql)).statements }
              : null,
        },
        (note) => {
          this.#executions.set(id, { state: 'running', note });
          this.#log.info({ approval_id: id, note }, 'execution progress');
          this.#changed(id);
        },
      ));
      if (ranHere) crashPoint('after-commit');
    } catch (error) {
      if (await this.#waitForDatabase(request, decision, error)) return;
      this.#outageAttempts.delete(id);
      const certain =
        (error instanceof GateError &&
          [
            'LEDGER_UNAVAILABLE',
            'LEDGER_CONFLICT',
            'BACKUP_FAILED',
            'LEDGER_WRITE_FAILED',
            'SESSION_NOT_CLEAN',
            'RECORD_TAMPERED',
            'DECISION_NOT_BOUND',
            'EXECUTION_NOT_COMMITTED',
            'DATABASE_UNREACHABLE',
          ].includes(error.code)) ||
        (error instanceof GateError && error.code.startsWith('SIGNATURE_'));
      const message = describeError(error);
      this.#executions.set(id, { state: certain ? 'not_started' : 'unknown', error: message });
      // Not only in memory: after a restart the request is final, never "running" for ever.
      await this.#store
        .recordOutcome(id, {
          execution: certain ? 'failed' : 'unknown',
          error: message,
          at: formatTimestamp(this.#clock(), this.config.timezone),
        })
        .catch((cause: unknown) =>
          this.#log.error({ approval_id: id, err: describeError(cause) }, 'could not record the outcome'),
        );
      this.#log.error({ approval_id: id, err: message, certain }, 'execution did not complete');
      await this.#audit.append({
        approval_id: id,
        event: certain ? 'execution_failed' : 'outcome_unknown',
        actor: 'server',
        request_hash: request.request_hash,
        detail: message,
      });
      await this.#writeToFile(
        id,
        { execution: certain ? 'failed' : 'unknown', execution_error: message },
        {
          decision,
          summary: certain
            ? 'Not executed: nothing changed in the database (see the error below).'
            : `Outcome UNKNOWN: the connection failed during execution. Check ${this.config.ledger_schema}.ledger for ${id} before doing anything else.`,
          details: [`Error: ${message}`],
        },
      );
      return;
    }
    this.#executions.set(id, { state: 'done', result });
    this.#outageAttempts.delete(id);
    this.#log.info(
      {
        approval_id: id,
        state: result.state,
        duration_ms: result.duration_ms,
        ran_here: ranHere,
        executed_by: result.executed_by,
      },
      ranHere ? 'execution finished' : 'found the recorded result; not running it again',
    );
    await this.#audit.append({
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
    const summary = summariseResult(result, findings);
    const details = executionDetails(result, decision);
    await this.#writeToFile(
      id,
      {
        execution: result.state,
        execution_started_at: formatTimestamp(new Date(result.started_at), this.config.timezone),
        execution_finished_at: formatTimestamp(new Date(result.finished_at), this.config.timezone),
        execution_duration_ms: result.duration_ms,
        execution_rows_affected: result.rows_affected,
        execution_error: result.error?.message,
      },
      { decision, summary, details },
    );
  }
}
