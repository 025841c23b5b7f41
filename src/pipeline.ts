import { AuditLog } from './approvals/audit.js';
import { Gate, type DecisionProblem } from './approvals/gate.js';
import { Notifier } from './approvals/notify.js';
import type { ApprovalRequest } from './approvals/request.js';
import { ApprovalStore } from './approvals/store.js';
import type { Config } from './config.js';
import { GateError } from './errors.js';
import type { Logger } from './log.js';
import type { Analysis } from './migration/analyse.js';
import type { RiskFinding } from './migration/risk-codes.js';
import { systemClock, type Clock } from './time.js';
import type { Transport } from './trust-anchors.js';
import { ChangeFeed, type Change } from './service/changes.js';
import { clientAnswerBar, type ClientAnswer } from './service/client-answer.js';
import { writeClientAnswer } from './service/write-client-answer.js';
import { FileView } from './service/file-view.js';
import { Findings } from './service/findings.js';
import type { MigrationRequestInput } from './service/request-input.js';
import { Requests } from './service/requests.js';
import { Runner } from './service/runner.js';
import { assertSigningReady, signersOf, warnUnsetConnections } from './service/startup.js';
import { StatusReader, type ApprovalStatus, type ApprovalSummary } from './service/status.js';
import { Targets } from './service/targets.js';

export type { ApprovalStatus, ApprovalSummary, ExecutionState } from './service/status.js';

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

/**
 * The whole pipeline, assembled: requests → approval store → gate → runner (executor) → status. The
 * MCP server and the CLI are thin shells over it; each stage lives in its own module under service/
 * and approvals/, and this class only wires them and keeps the public surface in one place.
 */
export class Pipeline {
  readonly config: Config;
  readonly #store: ApprovalStore;
  readonly #gate: Gate;
  readonly #role: 'server' | 'client';
  readonly #changes = new ChangeFeed();
  readonly #targets: Targets;
  readonly #findings: Findings;
  readonly #runner: Runner;
  readonly #status: StatusReader;
  readonly #requests: Requests;
  readonly #notifier: Notifier;
  readonly #audit: AuditLog;
  readonly #view: FileView;
  /** The server's own (stderr) log. */
  readonly log: Logger;

  private constructor(config: Config, store: ApprovalStore, options: PipelineOptions) {
    this.config = config;
    this.#store = store;
    this.#role = options.role ?? 'server';
    const clock = options.clock ?? systemClock;
    const { log } = options;
    this.log = log;
    const env = options.env ?? process.env;
    const audit = new AuditLog(config.stateDir, clock);
    this.#audit = audit;
    this.#view = new FileView(store, log, this.#changes);
    this.#notifier = new Notifier(config.notify, log);
    this.#targets = new Targets(config, { env, log, installation: store.installation });
    this.#findings = new Findings(config);
    this.#runner = new Runner({
      config,
      store,
      audit,
      clock,
      log,
      env,
      targets: this.#targets,
      findings: this.#findings,
      view: this.#view,
      changes: this.#changes,
    });
    this.#gate = new Gate({
      store,
      audit,
      clock,
      log,
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
      // The gate hands the decision on and returns: it never waits for a migration.
      onDecision: (request, decision) => {
        this.#runner.accept(request, decision);
        return Promise.resolve();
      },
      onChanged: (id) => this.#changes.emit({ id, kind: 'decided' }),
      onRecorded: (request, decision) => {
        if (decision.status === 'APPROVED') this.#runner.reserve(request);
      },
    });
    this.#status = new StatusReader({
      store,
      runner: this.#runner,
      findings: this.#findings,
      changes: this.#changes,
      log,
      problemOf: (id) => this.#gate.problem(id),
    });
    this.#requests = new Requests({
      config,
      store,
      audit,
      clock,
      log,
      serverName: options.serverName ?? 'approval-gate',
      targets: this.#targets,
      findings: this.#findings,
      notifier: this.#notifier,
      changes: this.#changes,
      runner: this.#runner,
      status: this.#status,
      track: (request) => {
        if (this.#role === 'server') this.#gate.track(request);
      },
    });
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

  /** Undecided requests go back to the gate; decided ones to the runner, which knows what is left. */
  async #resume(): Promise<void> {
    for (const id of await this.#store.listRequestIds()) {
      const state = await this.#status.readState(id, 'not resumed');
      if (!state) continue;
      if (state.decision) await this.#runner.resume(state.request, state.decision);
      else this.#gate.track(state.request);
    }
  }

  /**
   * Calls `listener` with the id of every request that appears or changes (new request, decision,
   * execution progress or result). Returns the function that stops it.
   */
  onChange(listener: (id: string, change: Change) => void): () => void {
    return this.#changes.subscribe((change) => listener(change.id, change));
  }

  /** The approval file's text, for readers that cannot open files (MCP resources), read safely. */
  async fileText(id: string): Promise<string> {
    const file = await this.#store.readApprovalText(id);
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

  /** Resolves when every approved request this process queued has ended (tests). */
  executionsSettled(): Promise<void> {
    return this.#runner.idle();
  }

  async close(): Promise<void> {
    this.#gate.stop();
    this.#runner.close();
    // The databases close once running migrations have ended; then their ends are recorded and shown
    // (an agent may have been told already, and the file must say it too before the process goes).
    await this.#targets.close();
    await this.#runner.idle();
    await this.#view.settled();
    await this.#audit.close();
  }

  /** Risk findings of a stored request, recomputed from its record (cached). */
  findingsOf(request: ApprovalRequest): Promise<RiskFinding[]> {
    return this.#findings.of(request);
  }

  submit(
    raw: MigrationRequestInput,
    origin: { readonly requestedBy?: string; readonly rollbackOf?: string } = {},
  ): Promise<{ request: ApprovalRequest; analysis: Analysis; findings: RiskFinding[] }> {
    return this.#requests.submit(raw, origin);
  }

  /**
   * Asks for the recorded rollback SQL of an executed request to be run: a new request, approved like
   * any other (and never by the person who asked for it). Nothing runs automatically.
   */
  requestRollback(
    id: string,
    who: { readonly requestedBy: string; readonly reason: string },
  ): Promise<{ request: ApprovalRequest; findings: RiskFinding[] }> {
    return this.#requests.requestRollback(id, who);
  }

  /**
   * An answer given in the MCP client (approve_in_client), written into the approval file as the edit
   * a person would make and then judged by the gate like any save. False when the file was decided
   * (or is being decided) first: the file's word comes first.
   */
  async answerInClient(id: string, answer: ClientAnswer, client: string): Promise<boolean> {
    const request = await this.#store.readRequest(id);
    if (!request)
      throw new GateError('APPROVAL_NOT_FOUND', `No approval request ${id} was issued by this server.`);
    const bar = clientAnswerBar(this.config, request);
    if (bar !== null)
      throw new GateError('CLIENT_ANSWER_REFUSED', `${id} cannot be decided in the MCP client: ${bar}.`);
    const options = { store: this.#store, audit: this.#audit, config: this.config, log: this.log };
    const written = await writeClientAnswer(options, request, answer, client);
    // Judged now, not when the file-system event arrives (or the re-check, where there are none).
    if (written) await this.#gate.check(id);
    return written;
  }

  /** The requester withdraws a pending request; nothing of it ever runs. */
  cancel(id: string, who: { readonly by: string; readonly reason: string }): Promise<ApprovalStatus> {
    return this.#requests.cancel(id, who);
  }

  list(filter: { status?: ApprovalSummary['status'] } = {}): Promise<ApprovalSummary[]> {
    return this.#status.list(filter);
  }

  status(id: string): Promise<ApprovalStatus> {
    return this.#status.status(id);
  }

  waitForFinal(id: string, options: Parameters<StatusReader['waitForFinal']>[1]): Promise<ApprovalStatus> {
    return this.#status.waitForFinal(id, options);
  }

  filePath(id: string): string {
    return this.#store.filePath(id);
  }

  /** This installation's id, which signed decisions name. */
  get installation(): string {
    return this.#store.installation;
  }

  /** Why a file's content was not accepted, for any id (including ones this server never issued). */
  problemOf(id: string): Promise<DecisionProblem | null> {
    return Promise.resolve(this.#gate.problem(id));
  }
}
