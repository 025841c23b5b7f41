import { watch, type FSWatcher } from 'node:fs';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { performance } from 'node:perf_hooks';
import { describeError, GateError } from '../errors.js';
import { crashPoint } from '../faults.js';
import type { Logger } from '../log.js';
import { formatTimestamp, type Clock, type TimeZone } from '../time.js';
import type { AuditLog } from './audit.js';
import { evaluateDecision, type DecisionVerdict } from './decision.js';
import { stampFile, unchangedSinceRead, type FileStamp } from './file-stamp.js';
import type { TrustedSigners } from './signature.js';
import { checkSignatures, requiredRoles, type SignatureCheck } from './signed-decision.js';
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
  readonly audit: AuditLog;
  readonly clock: Clock;
  readonly log: Logger;
  readonly timeZone: TimeZone;
  /** Safety net only: file-system events are the fast path. */
  readonly recheckIntervalMs: number;
  /** false: no file-system watcher, only the periodic re-check (network file systems). */
  readonly watchFiles: boolean;
  /**
   * Without the watcher: each pending file is also read in full about this often, whatever its
   * stamp says (default FULL_READ_EVERY_MS).
   */
  readonly fullReadEveryMs?: number;
  /** The approver allowlist of the request's environment, or null for "anyone but the requester". */
  readonly approversFor: (request: ApprovalRequest) => readonly string[] | null;
  /** The environment's trusted signers, when its decisions must be signed (allowed_signers). */
  readonly signersFor: (request: ApprovalRequest) => TrustedSigners | null;
  /** Why the environment policy lets this request run without a human, or null (the normal case). */
  readonly autoApproval: (request: ApprovalRequest) => string | null;
  /** Called synchronously the moment this instance has recorded a decision, before anyone is told. */
  readonly onRecorded?: (request: ApprovalRequest, decision: Decision) => void;
  /** Called once per accepted decision, in the instance that recorded it. */
  readonly onDecision: (request: ApprovalRequest, decision: Decision) => Promise<void>;
  /**
   * Called when what a request's status says may have changed: a decision recorded or refused, a
   * problem shown in its file, or another instance writing into it.
   */
  readonly onChanged?: (id: string) => void;
}

/**
 * The state directory's answer when a record or decision there was forged or edited: never a
 * decision, always shown to the human (the agent can write that directory too).
 */
function stateProblem(error: unknown): DecisionProblem | null {
  return error instanceof GateError &&
    ['RECORD_TAMPERED', 'RECORD_CORRUPT', 'DECISION_NOT_BOUND', 'DECISION_CORRUPT'].includes(error.code)
    ? { code: error.code, message: error.message }
    : null;
}

/** Re-reads of a file that failed to parse: editors that write in place can be caught mid-save. */
const REREAD_DELAYS_MS = [20, 100, 500];

/**
 * How long a VOID verdict waits before it stands. A read that races an in-place save (truncate, then
 * write) can see only the first pages of the file, whose missing headings look like tampering, while
 * the front matter already says APPROVED. If the file then turns out to have grown from exactly what
 * was read, that read was torn and the whole file is judged instead; while it reads as the beginning of
 * what was read, it is being written again and is waited for; any other change, or none, and the VOID
 * stands on what was read: restoring an edited block after the human's save never helps.
 */
export const VOID_SETTLE_MS = 100;

/** How long a pending file may be missing (delete-and-recreate saves) before the request is cancelled. */
export const MISSING_FILE_GRACE_MS = 2000;

/** setTimeout's ceiling; longer deadlines are re-armed in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Without file-system events (network file systems), a stat can be answered from an attribute cache
 * for up to a minute (NFS acregmax): each pending file is then also read in full about this often,
 * a slice of them per re-check.
 */
export const FULL_READ_EVERY_MS = 60_000;

/**
 * Stamps taken between two turns of the event loop during a re-check. Synchronous lstat costs a
 * tenth of the CPU of the promise API (no thread-pool round trip), and a batch of this size blocks
 * for well under a millisecond, so a save arriving meanwhile is not held up.
 */
const STAMPS_PER_TURN = 100;

interface Tracked {
  readonly request: ApprovalRequest;
  timer: NodeJS.Timeout | null;
  checking: boolean;
  again: boolean;
  problem: DecisionProblem | null;
  rereads: number;
  missingSince: number | null;
  /** The file as of the last completed check, or null before the first. */
  lastRead: { readonly stamp: FileStamp; readonly readAtMs: number } | null;
  /** A VOID verdict waiting out VOID_SETTLE_MS, with the text it was reached on. */
  voidPending: {
    readonly text: string;
    readonly decision: Decision;
    readonly code: string;
    readonly sinceMs: number;
  } | null;
}

/**
 * Watches the approvals directory and each pending request's deadline. It turns a human's save into
 * a validated Decision, records it (the first one stands) and hands it on; it never executes anything.
 */
export class Gate {
  readonly #options: GateOptions;
  readonly #tracked = new Map<string, Tracked>();
  /** Problems of files that are not pending requests: unknown ids, edits after a decision. */
  readonly #untrackedProblems = new Map<string, DecisionProblem>();
  readonly #inspecting = new Set<string>();
  readonly #inspectAgain = new Set<string>();
  /** Requests known to be decided, so the periodic re-check does not read them again. */
  readonly #settled = new Set<string>();
  #watcher: FSWatcher | null = null;
  #interval: NodeJS.Timeout | null = null;
  #stopped = false;
  #rechecking = false;
  /** Without events: the last id whose file the rotating full read reached, and reads owed to it. */
  #sweptUpTo = '';
  #sweepCredit = 0;

  constructor(options: GateOptions) {
    this.#options = options;
  }

  start(): void {
    const { log, watchFiles } = this.#options;
    if (watchFiles) {
      this.#watcher = watch(this.#options.store.approvalsDir, { persistent: false }, (_event, name) => {
        const id = name === null ? null : ApprovalStore.idOfFileName(name.toString());
        if (id === null) return;
        if (this.#tracked.has(id)) void this.check(id);
        // The echo of the server's own write (execution fields, the Outcome) is nobody's decision.
        else if (!this.#options.store.isOwnWrite(id)) void this.#inspectUntracked(id);
      });
      this.#watcher.on('error', (error) =>
        log.error({ err: error.message }, 'approvals directory watcher failed'),
      );
    }
    this.#interval = setInterval(() => void this.#recheck(), this.#options.recheckIntervalMs);
    this.#interval.unref();
  }

  /**
   * The safety net: re-read each pending file that changed since it was last read (one lstat each;
   * events missed by the watcher, saves on file systems that send none), and pick up requests other
   * processes created. A file untouched since its last read is not read again.
   */
  async #recheck(): Promise<void> {
    // A slow re-check (a huge directory, a slow disk) must not pile up behind itself.
    if (this.#rechecking) return;
    this.#rechecking = true;
    const { store, log, watchFiles } = this.#options;
    try {
      const ids = await store.listRequestIds();
      const fullReads = watchFiles ? new Set<string>() : this.#sweep();
      for (const [index, id] of ids.entries()) {
        if (index > 0 && index % STAMPS_PER_TURN === 0) await nextTurn();
        if (this.#stopped) return;
        const tracked = this.#tracked.get(id);
        if (tracked) {
          if (fullReads.has(id) || !this.#unchanged(tracked)) void this.check(id);
        } else if (!this.#settled.has(id)) {
          try {
            const request = await store.readRequest(id);
            if (request && !(await store.readDecision(id))) this.track(request);
            else this.#settled.add(id);
          } catch (error) {
            // A forged record or decision never runs; say so once and look at the next one.
            this.#settled.add(id);
            log.error({ approval_id: id, err: describeError(error) }, 'request skipped');
          }
        }
      }
    } catch (error) {
      log.error({ err: describeError(error) }, 'periodic re-check failed');
    } finally {
      this.#rechecking = false;
    }
  }

  /** True when one lstat proves the file is still the one the last check read. */
  #unchanged(tracked: Tracked): boolean {
    // A check under way stamps the file itself; a save during it shows in that stamp next time.
    if (tracked.checking) return true;
    if (tracked.lastRead === null) return false;
    return unchangedSinceRead(tracked.lastRead, this.#stamp(tracked.request.id));
  }

  #stamp(id: string): FileStamp {
    return stampFile(this.#options.store.filePath(id));
  }

  /**
   * The pending ids whose files this re-check reads in full whatever their stamps say: the next slice
   * in id order, sized so that every file is read once per `fullReadEveryMs`.
   */
  #sweep(): Set<string> {
    const { recheckIntervalMs, fullReadEveryMs = FULL_READ_EVERY_MS } = this.#options;
    const ids = [...this.#tracked.keys()].sort();
    this.#sweepCredit = Math.min(
      ids.length,
      this.#sweepCredit + (ids.length * recheckIntervalMs) / fullReadEveryMs,
    );
    const count = Math.floor(this.#sweepCredit);
    this.#sweepCredit -= count;
    const start = Math.max(
      0,
      ids.findIndex((id) => id > this.#sweptUpTo),
    );
    const slice = [...ids.slice(start), ...ids.slice(0, start)].slice(0, count);
    if (slice.length > 0) this.#sweptUpTo = slice.at(-1) ?? '';
    return new Set(slice);
  }

  stop(): void {
    this.#stopped = true;
    this.#watcher?.close();
    if (this.#interval) clearInterval(this.#interval);
    for (const tracked of this.#tracked.values()) if (tracked.timer) clearTimeout(tracked.timer);
    this.#tracked.clear();
  }

  /** The latest reason the file's content was not accepted as a decision, if any. */
  problem(id: string): DecisionProblem | null {
    return this.#tracked.get(id)?.problem ?? this.#untrackedProblems.get(id) ?? null;
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
      missingSince: null,
      lastRead: null,
      voidPending: null,
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
        // Stamped before the read: a save during the read leaves a newer stamp, seen next time.
        const readAtMs = Date.now();
        const stamp = this.#stamp(id);
        await this.#checkOnce(tracked);
        tracked.lastRead = { stamp, readAtMs };
      } while (tracked.again && this.#tracked.has(id));
    } catch (error) {
      this.#options.log.error({ approval_id: id, err: describeError(error) }, 'gate check failed');
    } finally {
      tracked.checking = false;
    }
  }

  async #checkOnce(tracked: Tracked): Promise<void> {
    const { store, clock, log } = this.#options;
    const { request } = tracked;
    const now = clock();
    let standing: Decision | null;
    try {
      standing = await store.readDecision(request.id);
    } catch (error) {
      const problem = stateProblem(error);
      if (!problem) throw error;
      this.#setProblem(tracked, problem);
      const file = await store.readApprovalFile(request.id);
      if (file.kind === 'ok') await this.#showProblem(request.id, problem, file.parsed.data.gate_error);
      return;
    }
    if (standing) {
      // Decided already: by an instance that shares the state directory, or by this one before a
      // restart. Hand it on anyway; execution is idempotent (the ledger), and if the instance that
      // recorded it died before executing, this is what makes the approval run.
      this.#untrack(tracked);
      // What this instance tells about the request changed too: the decision is in.
      this.#options.onChanged?.(request.id);
      await this.#options.onDecision(request, standing);
      return;
    }
    const decision = (status: Decision['status'], decidedBy: string | null, reason: string | null) => ({
      approval_id: request.id,
      request_hash: request.request_hash,
      status,
      decided_by: decidedBy,
      decided_at: formatTimestamp(now, this.#options.timeZone),
      claimed_decided_at: null,
      second_approver: null,
      reason,
      signatures: [],
    });
    if (now.getTime() >= Date.parse(request.expires_at)) {
      await this.#accept(
        tracked,
        decision('EXPIRED', null, `No valid decision before ${request.expires_at}.`),
      );
      return;
    }
    const policy = this.#options.autoApproval(request);
    if (policy !== null) {
      await this.#accept(tracked, decision('APPROVED', null, `No human approval needed: ${policy}.`));
      return;
    }
    const file = await store.readApprovalFile(request.id);
    if (file.kind === 'missing') {
      await this.#onMissing(
        tracked,
        decision('CANCELLED', null, 'The approval file was deleted or moved away while pending.'),
      );
      return;
    }
    tracked.missingSince = null;
    if (file.kind === 'unreadable') {
      // A parse failure is never a decision. It may be a half-written save: read again shortly.
      // An empty file is the first half of nearly every in-place save: not worth a warning.
      if (file.error.code !== 'FILE_EMPTY')
        this.#setProblem(tracked, { code: file.error.code, message: file.error.message });
      const delay = REREAD_DELAYS_MS[tracked.rereads];
      if (delay !== undefined) {
        tracked.rereads += 1;
        setTimeout(() => void this.check(request.id), delay).unref();
      }
      return;
    }
    tracked.rereads = 0;
    const pending = tracked.voidPending;
    if (pending !== null) {
      const text = file.text;
      const grown = text.length > pending.text.length && text.startsWith(pending.text);
      // Shorter and the beginning of what was read: the file is being written again.
      const rewriting = text.length < pending.text.length && pending.text.startsWith(text);
      const age = performance.now() - pending.sinceMs;
      // Not for ever: a file kept shorter than what was read lets the VOID stand after a while too.
      if ((text === pending.text && age < VOID_SETTLE_MS) || (rewriting && age < 10 * VOID_SETTLE_MS)) return;
      tracked.voidPending = null;
      if (!grown) {
        log.warn({ approval_id: request.id, code: pending.code }, pending.decision.reason ?? pending.code);
        await this.#accept(tracked, pending.decision);
        return;
      }
      // The earlier read was torn: the whole file is judged below.
    }
    const verdict = evaluateDecision({
      data: file.parsed.data,
      body: file.parsed.body,
      request,
      now,
      approvers: this.#options.approversFor(request),
      timeZone: this.#options.timeZone,
    });
    switch (verdict.kind) {
      case 'pending':
        this.#setProblem(tracked, null);
        await this.#showProblem(request.id, null, file.parsed.data.gate_error);
        return;
      case 'invalid':
        if (this.#setProblem(tracked, { code: verdict.code, message: verdict.message })) {
          await this.#options.audit.append({
            approval_id: request.id,
            event: 'decision_refused',
            actor: typeof file.parsed.data.decided_by === 'string' ? file.parsed.data.decided_by : 'unknown',
            request_hash: request.request_hash,
            detail: `${verdict.code}: ${verdict.message}`,
          });
        }
        await this.#showProblem(request.id, tracked.problem, file.parsed.data.gate_error);
        return;
      case 'void':
        tracked.voidPending = {
          text: file.text,
          decision: decision('VOID', verdict.decidedBy, `${verdict.code}: ${verdict.message}`),
          code: verdict.code,
          sinceMs: performance.now(),
        };
        this.#recheckWhileVoidSettles(tracked);
        return;
      case 'approved':
      case 'rejected': {
        const signed = await this.#signatures(request, verdict, file.parsed.data, now);
        if (!signed.ok) {
          if (this.#setProblem(tracked, { code: signed.code, message: signed.message })) {
            await this.#options.audit.append({
              approval_id: request.id,
              event: 'decision_refused',
              actor: verdict.decidedBy,
              request_hash: request.request_hash,
              detail: `${signed.code}: ${signed.message}`,
            });
          }
          await this.#showProblem(request.id, tracked.problem, file.parsed.data.gate_error);
          return;
        }
        // 'decision accepted' follows with the same facts once it is recorded.
        log.debug(
          { approval_id: request.id, decision: verdict.kind, decided_by: verdict.decidedBy },
          'decision seen',
        );
        await this.#accept(tracked, {
          ...decision(verdict.kind === 'approved' ? 'APPROVED' : 'REJECTED', verdict.decidedBy, null),
          claimed_decided_at: verdict.claimedDecidedAt,
          second_approver: verdict.kind === 'approved' ? verdict.secondApprover : null,
          reason: verdict.kind === 'rejected' ? verdict.reason : verdict.comment,
          signatures: signed.signatures,
        });
        return;
      }
    }
  }

  /** Reads the file again until a VOID waiting to stand has stood or been explained as a torn read. */
  #recheckWhileVoidSettles(tracked: Tracked): void {
    setTimeout(() => {
      if (tracked.voidPending === null || !this.#tracked.has(tracked.request.id)) return;
      void this.check(tracked.request.id).then(() => {
        if (tracked.voidPending !== null) this.#recheckWhileVoidSettles(tracked);
      });
    }, VOID_SETTLE_MS).unref();
  }

  /** In a signed environment, the decision's signatures; elsewhere there are none to check. */
  async #signatures(
    request: ApprovalRequest,
    verdict: Extract<DecisionVerdict, { kind: 'approved' | 'rejected' }>,
    data: Readonly<Record<string, unknown>>,
    now: Date,
  ): Promise<SignatureCheck> {
    const signers = this.#options.signersFor(request);
    if (signers === null) return { ok: true, signatures: [] };
    const status = verdict.kind === 'approved' ? 'APPROVED' : 'REJECTED';
    const roles = requiredRoles(
      {
        status,
        decided_by: verdict.decidedBy,
        second_approver: verdict.kind === 'approved' ? verdict.secondApprover : null,
      },
      request,
    ).map((role) => ({
      ...role,
      armored: role.role === 'decided_by' ? data.signature : data.second_signature,
    }));
    return checkSignatures(request, status, roles, {
      signers,
      installation: this.#options.store.installation,
      now,
    });
  }

  /** A missing file may be an editor's delete-and-recreate save; only a lasting absence cancels. */
  async #onMissing(tracked: Tracked, cancellation: Decision): Promise<void> {
    const elapsed = tracked.missingSince === null ? 0 : performance.now() - tracked.missingSince;
    if (tracked.missingSince === null) tracked.missingSince = performance.now();
    if (elapsed >= MISSING_FILE_GRACE_MS) {
      await this.#accept(tracked, cancellation);
      return;
    }
    this.#setProblem(tracked, {
      code: 'FILE_MISSING',
      message: `The approval file ${tracked.request.id}.md is missing; unless it reappears the request is cancelled.`,
    });
    setTimeout(() => void this.check(tracked.request.id), MISSING_FILE_GRACE_MS - elapsed + 10).unref();
  }

  /** Records the problem; returns true when it is new (so it is logged and audited once). */
  #setProblem(tracked: Tracked, problem: DecisionProblem | null): boolean {
    const previous = tracked.problem;
    tracked.problem = problem;
    if (problem && (previous?.code !== problem.code || previous.message !== problem.message)) {
      this.#options.log.warn({ approval_id: tracked.request.id, code: problem.code }, problem.message);
      this.#options.onChanged?.(tracked.request.id);
      return true;
    }
    return false;
  }

  /**
   * Writes the problem into the file, where the human is looking, or clears it once fixed. `shown`
   * is the gate_error the file had when it was just read: when it already says this, nothing is
   * read or written again (this runs on every save).
   */
  async #showProblem(id: string, problem: DecisionProblem | null, shown: unknown): Promise<void> {
    const wanted = problem ? `${problem.code}: ${problem.message}` : undefined;
    if (shown === wanted) return;
    await this.#options.store.updateApprovalFile(id, (text) =>
      updateFrontMatter(text, { gate_error: wanted }),
    );
  }

  /**
   * A file event for a request that is not pending here: a file the server never issued, or an
   * edit after the decision. Neither can ever cause an execution; both are told to the human.
   */
  async #inspectUntracked(id: string): Promise<void> {
    if (this.#stopped) return;
    if (this.#inspecting.has(id)) {
      // A save while we read: look again once this look is done, or the save would go unnoticed.
      this.#inspectAgain.add(id);
      return;
    }
    this.#inspecting.add(id);
    try {
      const { store, log, audit } = this.#options;
      // Another instance may have written an outcome: let anyone waiting here look again.
      this.#options.onChanged?.(id);
      const file = await store.readApprovalFile(id);
      if (file.kind !== 'ok') return;
      const status = file.parsed.data.status;
      let request: ApprovalRequest | null;
      let decision: Decision | null;
      try {
        request = await store.readRequest(id);
        decision = request && (await store.readDecision(id));
      } catch (error) {
        const problem = stateProblem(error);
        if (!problem) throw error;
        if (this.#untrackedProblems.get(id)?.message !== problem.message)
          log.error({ approval_id: id, code: problem.code }, problem.message);
        this.#untrackedProblems.set(id, problem);
        await this.#showProblem(id, problem, file.parsed.data.gate_error);
        return;
      }
      let problem: DecisionProblem | null = null;
      if (!request) {
        if (status === 'PENDING') return;
        problem = {
          code: 'UNKNOWN_REQUEST',
          message: `This server never issued ${id}; a decision in this file is ignored and nothing runs.`,
        };
      } else {
        if (!decision) {
          // Requested by another process (a second instance, or the CLI): this instance watches it too.
          this.track(request);
          return;
        }
        // Only a human's decision in the file can contradict the recorded one; PENDING is just a file
        // the server has not rewritten yet, and the server-written statuses are its own.
        if (decision.status === status || (status !== 'APPROVED' && status !== 'REJECTED')) return;
        problem =
          decision.status === 'EXPIRED'
            ? {
                code: 'DECISION_TOO_LATE',
                message: `${id} expired at ${request.expires_at}; a decision saved after that is ignored and nothing runs.`,
              }
            : {
                code: 'DECISION_ALREADY_MADE',
                message: `${id} was already decided (${decision.status} by ${decision.decided_by ?? 'the server'}); this later edit is ignored.`,
              };
      }
      const previous = this.#untrackedProblems.get(id);
      this.#untrackedProblems.set(id, problem);
      if (previous?.message !== problem.message) {
        log.warn({ approval_id: id, code: problem.code }, problem.message);
        await audit.append({
          approval_id: id,
          event: problem.code === 'UNKNOWN_REQUEST' ? 'unknown_request' : 'edit_ignored',
          actor: typeof file.parsed.data.decided_by === 'string' ? file.parsed.data.decided_by : 'unknown',
          request_hash: request?.request_hash ?? null,
          detail: `status ${JSON.stringify(status)}`,
        });
      }
      await this.#showProblem(id, problem, file.parsed.data.gate_error);
      this.#options.onChanged?.(id);
    } catch (error) {
      this.#options.log.error({ approval_id: id, err: describeError(error) }, 'inspecting a file failed');
    } finally {
      this.#inspecting.delete(id);
      if (this.#inspectAgain.delete(id)) void this.#inspectUntracked(id);
    }
  }

  async #accept(tracked: Tracked, decision: Decision): Promise<void> {
    const { store, log, onDecision, audit } = this.#options;
    const { request } = tracked;
    const standing = await store.recordDecision(request.id, decision);
    this.#untrack(tracked);
    if (standing !== decision) {
      log.info(
        { approval_id: request.id, status: standing.status },
        'decision already recorded by another instance',
      );
      // Decided all the same: what this instance tells about the request changed too.
      this.#options.onChanged?.(request.id);
      await onDecision(request, standing);
      return;
    }
    crashPoint('after-decision-recorded');
    this.#options.onRecorded?.(request, decision);
    log.info(
      { approval_id: request.id, status: decision.status, decided_by: decision.decided_by },
      'decision accepted',
    );
    const events = {
      APPROVED: 'approved',
      REJECTED: 'rejected',
      EXPIRED: 'expired',
      VOID: 'voided',
      CANCELLED: 'cancelled',
    } as const;
    // The decision is recorded: a trail that cannot be written must not keep it from being handed on
    // (the runner refuses to run what the trail cannot tell, and says so).
    const trail = audit.append({
      approval_id: request.id,
      event: events[decision.status],
      actor: decision.decided_by ?? 'server',
      request_hash: request.request_hash,
      ...(decision.reason || decision.signatures.length > 0
        ? {
            detail: [
              ...(decision.reason ? [decision.reason] : []),
              ...decision.signatures.map((s) => `signed (${s.role}) by ${s.principal}, key ${s.fingerprint}`),
            ].join('; '),
          }
        : {}),
    });
    await trail.catch((error: unknown) =>
      log.error({ approval_id: request.id, err: describeError(error) }, 'audit log not written'),
    );
    this.#options.onChanged?.(request.id);
    await onDecision(request, decision);
  }

  #untrack(tracked: Tracked): void {
    if (tracked.timer) clearTimeout(tracked.timer);
    this.#tracked.delete(tracked.request.id);
    this.#settled.add(tracked.request.id);
  }
}
