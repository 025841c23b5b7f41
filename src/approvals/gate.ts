import { watch, type FSWatcher } from 'node:fs';
import { EventEmitter } from 'node:events';
import type { Logger } from '../log.js';
import { formatTimestamp, type Clock } from '../time.js';
import { evaluateDecision } from './decision.js';
import { updateFrontMatter } from './frontmatter.js';
import type { ApprovalRequest, Decision } from './request.js';
import { ApprovalStore } from './store.js';

/** Why the file's current content is not (yet) an acceptable decision. */
export interface DecisionProblem {
  readonly code: string;
  readonly message: string;
}

export interface GateOptions {
  readonly store: ApprovalStore;
  readonly clock: Clock;
  readonly log: Logger;
  /** Safety net only: file-system events are the fast path. */
  readonly recheckIntervalMs: number;
  /** false: no file-system watcher, only the periodic re-check (network file systems). */
  readonly watchFiles: boolean;
  /** Called once per accepted decision (APPROVED, REJECTED or EXPIRED), in this process. */
  readonly onDecision: (request: ApprovalRequest, decision: Decision) => Promise<void>;
}

/** Re-reads of a file that failed to parse: editors that write in place can be caught mid-save. */
const REREAD_DELAYS_MS = [20, 100, 500];

/** setTimeout's ceiling; longer deadlines are re-armed in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Tracked {
  readonly request: ApprovalRequest;
  timer: NodeJS.Timeout | null;
  checking: boolean;
  again: boolean;
  problem: DecisionProblem | null;
  rereads: number;
}

/**
 * Watches the approvals directory and each pending request's deadline. It turns a human's save into
 * a validated Decision, records it (the first one stands) and hands it on; it never executes anything.
 */
export class Gate {
  readonly events = new EventEmitter();
  readonly #options: GateOptions;
  readonly #tracked = new Map<string, Tracked>();
  #watcher: FSWatcher | null = null;
  #interval: NodeJS.Timeout | null = null;
  #stopped = false;

  constructor(options: GateOptions) {
    this.#options = options;
  }

  start(): void {
    const { store, log, watchFiles } = this.#options;
    if (watchFiles) this.#startWatcher(store, log);
    this.#interval = setInterval(() => {
      for (const id of this.#tracked.keys()) void this.check(id);
    }, this.#options.recheckIntervalMs);
    this.#interval.unref();
  }

  #startWatcher(store: ApprovalStore, log: Logger): void {
    this.#watcher = watch(store.approvalsDir, { persistent: false }, (_event, name) => {
      const id = name === null ? null : ApprovalStore.idOfFileName(name.toString());
      if (id !== null && this.#tracked.has(id)) void this.check(id);
    });
    this.#watcher.on('error', (error) =>
      log.error({ err: error.message }, 'approvals directory watcher failed'),
    );
  }

  stop(): void {
    this.#stopped = true;
    this.#watcher?.close();
    if (this.#interval) clearInterval(this.#interval);
    for (const tracked of this.#tracked.values()) if (tracked.timer) clearTimeout(tracked.timer);
    this.#tracked.clear();
  }

  /** The latest reason the file's decision was not accepted, if any. */
  problem(id: string): DecisionProblem | null {
    return this.#tracked.get(id)?.problem ?? null;
  }

  isTracking(id: string): boolean {
    return this.#tracked.has(id);
  }

  /** Starts waiting for a decision on `request` until its deadline. */
  track(request: ApprovalRequest): void {
    if (this.#stopped || this.#tracked.has(request.id)) return;
    const tracked: Tracked = {
      request,
      timer: null,
      checking: false,
      again: false,
      problem: null,
      rereads: 0,
    };
    this.#tracked.set(request.id, tracked);
    this.#armDeadline(tracked);
    void this.check(request.id);
  }

  #armDeadline(tracked: Tracked): void {
    const remaining = Date.parse(tracked.request.expires_at) - this.#options.clock().getTime();
    tracked.timer = setTimeout(
      () => {
        if (remaining > MAX_TIMER_MS) this.#armDeadline(tracked);
        else void this.check(tracked.request.id);
      },
      Math.max(0, Math.min(remaining, MAX_TIMER_MS)),
    );
    tracked.timer.unref();
  }

  /** Reads the file and acts on what it says. Serialised per request; safe to call any time. */
  async check(id: string): Promise<void> {
    const tracked = this.#tracked.get(id);
    if (!tracked) return;
    if (tracked.checking) {
      tracked.again = true;
      return;
    }
    tracked.checking = true;
    try {
      do {
        tracked.again = false;
        await this.#checkOnce(tracked);
      } while (tracked.again && this.#tracked.has(id));
    } catch (error) {
      this.#options.log.error(
        { approval_id: id, err: error instanceof Error ? error.message : String(error) },
        'gate check failed',
      );
    } finally {
      tracked.checking = false;
    }
  }

  async #checkOnce(tracked: Tracked): Promise<void> {
    const { store, clock, log } = this.#options;
    const { request } = tracked;
    const now = clock();
    const standing = await store.readDecision(request.id);
    if (standing) {
      // Decided already (by this instance, or another one sharing the state directory).
      this.#untrack(tracked);
      return;
    }
    if (now.getTime() >= Date.parse(request.expires_at)) {
      await this.#accept(tracked, {
        status: 'EXPIRED',
        decided_by: null,
        decided_at: formatTimestamp(now),
        claimed_decided_at: null,
        reason: `No valid decision before ${request.expires_at}.`,
      });
      return;
    }
    const file = await store.readApprovalFile(request.id);
    if (file.kind === 'missing') {
      this.#setProblem(tracked, {
        code: 'FILE_MISSING',
        message: `The approval file ${request.id}.md is missing; nothing will run unless it reappears with a valid decision.`,
      });
      return;
    }
    if (file.kind === 'unreadable') {
      // A parse failure is never a decision. It may be a half-written save: read again shortly.
      this.#setProblem(tracked, { code: file.error.code, message: file.error.message });
      const delay = REREAD_DELAYS_MS[tracked.rereads];
      if (delay !== undefined) {
        tracked.rereads += 1;
        setTimeout(() => void this.check(request.id), delay).unref();
      }
      return;
    }
    tracked.rereads = 0;
    const verdict = evaluateDecision({ data: file.parsed.data, body: file.parsed.body, request, now });
    switch (verdict.kind) {
      case 'pending':
        this.#setProblem(tracked, null);
        await this.#showProblem(request.id, null);
        return;
      case 'invalid':
        this.#setProblem(tracked, { code: verdict.code, message: verdict.message });
        await this.#showProblem(request.id, tracked.problem);
        return;
      case 'approved':
      case 'rejected':
        log.info(
          { approval_id: request.id, decision: verdict.kind, decided_by: verdict.decidedBy },
          'decision seen',
        );
        await this.#accept(tracked, {
          status: verdict.kind === 'approved' ? 'APPROVED' : 'REJECTED',
          decided_by: verdict.decidedBy,
          decided_at: formatTimestamp(now),
          claimed_decided_at: verdict.claimedDecidedAt,
          reason: verdict.kind === 'rejected' ? verdict.reason : verdict.comment,
        });
        return;
    }
  }

  #setProblem(tracked: Tracked, problem: DecisionProblem | null): void {
    const previous = tracked.problem;
    tracked.problem = problem;
    if (problem && (previous?.code !== problem.code || previous.message !== problem.message)) {
      this.#options.log.warn({ approval_id: tracked.request.id, code: problem.code }, problem.message);
      this.events.emit('changed', tracked.request.id);
    }
  }

  /** Writes the problem into the file, where the human is looking, or clears it once fixed. */
  async #showProblem(id: string, problem: DecisionProblem | null): Promise<void> {
    await this.#options.store.updateApprovalFile(id, (text) =>
      updateFrontMatter(text, { gate_error: problem ? `${problem.code}: ${problem.message}` : undefined }),
    );
  }

  async #accept(tracked: Tracked, decision: Decision): Promise<void> {
    const { store, log, onDecision } = this.#options;
    const standing = await store.recordDecision(tracked.request.id, decision);
    this.#untrack(tracked);
    if (standing !== decision) {
      log.info({ approval_id: tracked.request.id }, 'decision already recorded by another instance');
      return;
    }
    log.info(
      { approval_id: tracked.request.id, status: decision.status, decided_by: decision.decided_by },
      'decision accepted',
    );
    this.events.emit('changed', tracked.request.id);
    await onDecision(tracked.request, decision);
  }

  #untrack(tracked: Tracked): void {
    if (tracked.timer) clearTimeout(tracked.timer);
    this.#tracked.delete(tracked.request.id);
  }
}
