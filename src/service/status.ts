import type { DecisionProblem } from '../approvals/gate.js';
import type { ApprovalRequest, Decision } from '../approvals/request.js';
import type { ApprovalStore } from '../approvals/store.js';
import { describeError, GateError } from '../errors.js';
import type { Logger } from '../log.js';
import type { RelationFacts } from '../migration/catalog.js';
import type { RiskFinding } from '../migration/risk-codes.js';
import type { ChangeFeed } from './changes.js';
import type { Findings } from './findings.js';
import type { ExecutionView, Runner } from './runner.js';

export type { ExecutionState } from './runner.js';

export interface ApprovalStatus extends ExecutionView {
  readonly request: ApprovalRequest;
  readonly file: string;
  readonly decision: Decision | null;
  readonly problem: DecisionProblem | null;
  /** What the statements risk, computed from the parse tree. */
  readonly findings: readonly RiskFinding[];
  /** The touched relations in the live catalog at request time (empty when not known here). */
  readonly impact: readonly RelationFacts[];
}

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

export interface StatusOptions {
  readonly store: ApprovalStore;
  readonly runner: Runner;
  readonly findings: Findings;
  readonly changes: ChangeFeed;
  readonly log: Logger;
  /** Why a file's content was not accepted (the gate's view), or null. */
  readonly problemOf: (id: string) => DecisionProblem | null;
}

/**
 * Answers "where does this request stand?" from the server's model: the canonical record and the
 * recorded decision in the state directory, and the runner for execution. The approval file is only
 * a view; what it says about execution is never read here.
 */
export class StatusReader {
  readonly #o: StatusOptions;

  constructor(options: StatusOptions) {
    this.#o = options;
  }

  async status(id: string): Promise<ApprovalStatus> {
    const { store } = this.#o;
    const request = await store.readRequest(id);
    if (!request) {
      throw new GateError('APPROVAL_NOT_FOUND', `No approval request ${id} was issued by this server.`);
    }
    const decision = await store.readDecision(id);
    const base = {
      request,
      file: store.filePath(id),
      decision,
      problem: this.#o.problemOf(id),
      findings: await this.#o.findings.of(request),
      impact: this.#o.findings.impactOf(id),
    };
    if (decision?.status !== 'APPROVED') {
      return {
        ...base,
        execution: 'not_started',
        result: null,
        executionError: null,
        final: decision !== null,
      };
    }
    return { ...base, ...(await this.#o.runner.executionOf(request)) };
  }

  /**
   * A request's record and decision, or null (logged) when there is none or either fails its checks:
   * a forged or edited record or decision never runs, and never stops a listing or the server's start.
   */
  async readState(
    id: string,
    skipped: string,
  ): Promise<{ request: ApprovalRequest; decision: Decision | null } | null> {
    const { store, log } = this.#o;
    try {
      const request = await store.readRequest(id);
      return request && { request, decision: await store.readDecision(id) };
    } catch (error) {
      log.error({ approval_id: id, err: describeError(error) }, `${skipped}: its state fails its checks`);
      return null;
    }
  }

  /** A line per request: the state directory and the runner's model; the file only for the gate's complaint. */
  async list(filter: { status?: ApprovalSummary['status'] } = {}): Promise<ApprovalSummary[]> {
    const { store, runner } = this.#o;
    const summaries: ApprovalSummary[] = [];
    for (const id of await store.listRequestIds()) {
      const state = await this.readState(id, 'not listed');
      if (!state) continue;
      const { request, decision } = state;
      const status = decision?.status ?? 'PENDING';
      if (filter.status !== undefined && filter.status !== status) continue;
      summaries.push({
        approval_id: id,
        status,
        execution: decision?.status === 'APPROVED' ? await runner.executionStateOf(request) : 'not_started',
        title: request.title,
        environment: request.command.environment,
        database: request.command.database,
        priority: request.priority,
        requested_by: request.requested_by,
        created_at: request.created_at,
        expires_at: request.expires_at,
        decided_by: decision?.decided_by ?? null,
        problem: await this.#problemLine(id),
        file: store.filePath(id),
      });
    }
    return summaries;
  }

  /** The gate's complaint about the file, as the file shows it to the human (its own field). */
  async #problemLine(id: string): Promise<string | null> {
    const file = await this.#o.store.readApprovalFile(id);
    const shown = file.kind === 'ok' ? file.parsed.data.gate_error : undefined;
    return typeof shown === 'string' ? shown : null;
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
      const left = options.timeoutMs - (Date.now() - start);
      if (left <= 0) break;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          stop();
          options.signal?.removeEventListener('abort', done);
          resolve();
        };
        const timer = setTimeout(done, Math.min(left, options.tickMs));
        // The model changed; a rewrite of the file ('shown') tells a waiter nothing new.
        const stop = this.#o.changes.watch(id, (change) => {
          if (change.kind !== 'shown') done();
        });
        options.signal?.addEventListener('abort', done);
      });
      status = await this.status(id);
      if (!status.final && options.onTick) await options.onTick(status, Date.now() - start);
    }
    return status;
  }
}
