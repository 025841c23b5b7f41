import type { AuditLog } from '../approvals/audit.js';
import { assertOneLine, assertVisible } from '../approvals/invisible.js';
import type { Notifier } from '../approvals/notify.js';
import { renderApprovalFile } from '../approvals/render.js';
import {
  hashCommand,
  type ApprovalRequest,
  type Decision,
  type MigrationCommand,
} from '../approvals/request.js';
import type { ApprovalStore } from '../approvals/store.js';
import type { Config } from '../config.js';
import { describeError, GateError } from '../errors.js';
import { crashPoint } from '../faults.js';
import type { Logger } from '../log.js';
import { analyseSql, assertExecutable, relationsOf, type Analysis } from '../migration/analyse.js';
import { describeRelations } from '../migration/catalog.js';
import { readSchemaFacts } from '../migration/schema-facts.js';
import type { RiskFinding } from '../migration/risk-codes.js';
import { assertDryRunIsDry } from '../migration/risks.js';
import { formatTimestamp, wholeSeconds, type Clock } from '../time.js';
import type { ChangeFeed } from './changes.js';
import { assertRollbackFits, gateSchemas, policyVerdict, targetEnvironment } from './admission.js';
import type { Findings } from './findings.js';
import { validateMigrationFile } from './migration-file.js';
import { MigrationRequestInput } from './request-input.js';
import type { Runner } from './runner.js';
import { signersOf } from './startup.js';
import type { ApprovalStatus, StatusReader } from './status.js';
import type { Targets } from './targets.js';

export interface RequestsOptions {
  readonly config: Config;
  readonly store: ApprovalStore;
  readonly audit: AuditLog;
  readonly clock: Clock;
  readonly log: Logger;
  readonly serverName: string;
  readonly targets: Targets;
  readonly findings: Findings;
  readonly notifier: Notifier;
  readonly changes: ChangeFeed;
  readonly runner: Runner;
  readonly status: StatusReader;
  /** Hands a new request to the gate (a server), or to nobody (the CLI: a running server picks it up). */
  readonly track: (request: ApprovalRequest) => void;
}

/**
 * Everything that creates or withdraws a request: the agent's migration (validated, analysed against
 * the live catalog, refused by policy or written as an approval file), a rollback of an executed one,
 * and the requester's cancellation.
 */
export class Requests {
  readonly #o: RequestsOptions;

  constructor(options: RequestsOptions) {
    this.#o = options;
  }

  /** Submits a request; a refusal is logged (code and message, never the SQL) and thrown on. */
  async submit(
    raw: MigrationRequestInput,
    origin: { readonly requestedBy?: string; readonly rollbackOf?: string } = {},
  ): Promise<{ request: ApprovalRequest; analysis: Analysis; findings: RiskFinding[] }> {
    try {
      return await this.#submit(raw, origin);
    } catch (error) {
      this.#o.log.warn(
        { code: error instanceof GateError ? error.code : undefined, rollback_of: origin.rollbackOf },
        `request refused: ${describeError(error)}`,
      );
      throw error;
    }
  }

  async #submit(
    raw: MigrationRequestInput,
    origin: { readonly requestedBy?: string; readonly rollbackOf?: string },
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
    const environment = targetEnvironment(this.#o.config, input.environment, input.database);
    const migrationFile = await validateMigrationFile(input.migration_file, this.#o.config);
    assertVisible('migration_file', migrationFile);
    const analysis = await analyseSql(input.sql);
    const schemas = gateSchemas(this.#o.config);
    assertExecutable(analysis, { dryRun: input.dry_run, gateSchemas: schemas });
    // Refuse now, not after a human has spent time, when the target cannot be reached; the catalog
    // tells the risk rules what the database holds (types, constraints, rows, foreign tables).
    const target = this.#o.targets.get(input.database);
    await target.executor.prepare();
    const relations = relationsOf(analysis.statements);
    const { impact, facts } = await target.database.withClient(async (session) => ({
      impact: await describeRelations(session, relations),
      facts: await readSchemaFacts(session, analysis.statements),
    }));
    const { findings, locks } = this.#o.findings.assess(analysis, facts);
    assertDryRunIsDry(findings, { dryRun: input.dry_run });
    const { approvalsRequired } = policyVerdict(
      input.environment,
      environment,
      findings,
      'Nothing was written.',
    );
    await assertRollbackFits(
      { rollback_sql: input.rollback_sql ?? null, dry_run: input.dry_run },
      { gateSchemas: schemas, findings: this.#o.findings },
    );
    const created = wholeSeconds(this.#o.clock());
    const expires = new Date(created.getTime() + this.#o.config.expiry_minutes[input.priority] * 60_000);
    const command: MigrationCommand = {
      environment: input.environment,
      database: input.database,
      migration_file: migrationFile,
      sql: input.sql,
      rollback_sql: input.rollback_sql ?? null,
      dry_run: input.dry_run,
      backup_before: input.backup_before,
    };
    const request = await this.#o.store.create(
      {
        created_at: formatTimestamp(created, this.#o.config.timezone),
        expires_at: formatTimestamp(expires, this.#o.config.timezone),
        requested_by: origin.requestedBy ?? this.#o.config.requested_by,
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
          locks,
          impact,
          statements: analysis.statements,
          lockTimeoutMs: this.#o.config.executor.lock_timeout_ms,
          statementTimeoutMs: this.#o.config.executor.statement_timeout_ms,
          serverName: this.#o.serverName,
          signing:
            signersOf(this.#o.config, command.environment) === null
              ? null
              : { installation: this.#o.store.installation },
        }),
    );
    this.#o.log.info(
      {
        approval_id: request.id,
        environment: command.environment,
        database: command.database,
        expires_at: request.expires_at,
      },
      'approval requested',
    );
    crashPoint('after-file-write');
    await this.#o.audit.append({
      approval_id: request.id,
      event: 'requested',
      actor: request.requested_by,
      request_hash: request.request_hash,
      detail: `${command.environment}/${command.database}: ${request.title}`,
    });
    this.#o.findings.remember(request.id, findings, impact);
    this.#o.track(request);
    this.#o.notifier.pending({ request, file: this.#o.store.filePath(request.id), findings });
    this.#o.changes.emit({ id: request.id, kind: 'requested' });
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
    const original = await this.#o.status.status(id);
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
    for (const other of await this.#o.store.listRequestIds()) {
      // A record or decision that fails its checks can never run, so it cannot hold the rollback slot.
      const candidate = await this.#o.store.readRequest(other).catch(() => null);
      if (candidate?.rollback_of !== id) continue;
      earlier += 1;
      const decision = await this.#o.store.readDecision(other).catch(() => null);
      if (!decision || decision.status === 'APPROVED') {
        throw new GateError(
          'ROLLBACK_ALREADY_REQUESTED',
          `A rollback of ${id} was already requested: ${other}.`,
        );
      }
    }
    // Checked, then claimed: of two concurrent calls (in one process or two) that both passed the
    // check, only the one that creates the claim for this generation goes on.
    if (!(await this.#o.store.claimRollback(id, earlier + 1))) {
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
      await this.#o.store.releaseRollbackClaim(id, earlier + 1);
      throw error;
    }
  }

  /** The requester withdraws a pending request; nothing of it ever runs. */
  async cancel(id: string, who: { readonly by: string; readonly reason: string }): Promise<ApprovalStatus> {
    const request = await this.#o.store.readRequest(id);
    if (!request)
      throw new GateError('APPROVAL_NOT_FOUND', `No approval request ${id} was issued by this server.`);
    const decision: Decision = {
      approval_id: id,
      request_hash: request.request_hash,
      status: 'CANCELLED',
      decided_by: who.by,
      decided_at: formatTimestamp(this.#o.clock(), this.#o.config.timezone),
      claimed_decided_at: null,
      second_approver: null,
      reason: `Withdrawn by ${who.by}: ${who.reason}`,
      signatures: [],
    };
    const standing = await this.#o.store.recordDecision(id, decision);
    if (standing !== decision) {
      throw new GateError(
        'ALREADY_DECIDED',
        `${id} was already decided (${standing.status}); it cannot be cancelled.`,
      );
    }
    await this.#o.audit.append({
      approval_id: id,
      event: 'cancelled',
      actor: who.by,
      request_hash: request.request_hash,
      detail: who.reason,
    });
    this.#o.log.info({ approval_id: id, by: who.by }, 'request withdrawn');
    this.#o.changes.emit({ id, kind: 'decided' });
    await this.#o.runner.settle(request, decision);
    return this.#o.status.status(id);
  }
}
