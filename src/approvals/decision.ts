import { parseTimestamp, type TimeZone } from '../time.js';
import { findInvisibleCharacter } from './invisible.js';
import { PLACEHOLDERS } from './render.js';
import { HumanStatus, type ApprovalRequest } from './request.js';
import { paragraphLinesUnder } from './sections.js';
import { findTampering } from './tamper.js';

/**
 * Is this file's decision valid? A pure function of the parsed file, the server's record and the
 * server's clock. Anything not clearly a valid decision is `invalid` (nothing runs) or `pending`.
 *
 * Status must be exactly PENDING, APPROVED or REJECTED: no case folding, no trimming, no typo
 * correction. `Approved`, ` APPROVED` and `APROVED` are refused with a message, never guessed.
 */

export type DecisionVerdict =
  | { readonly kind: 'pending' }
  | {
      readonly kind: 'approved';
      readonly decidedBy: string;
      readonly secondApprover: string | null;
      readonly claimedDecidedAt: string | null;
      readonly comment: string | null;
    }
  | {
      readonly kind: 'rejected';
      readonly decidedBy: string;
      readonly claimedDecidedAt: string | null;
      readonly reason: string;
    }
  | { readonly kind: 'invalid'; readonly code: string; readonly message: string }
  /** An approval of something other than the server's record: terminal, nothing ever runs. */
  | {
      readonly kind: 'void';
      readonly code: string;
      readonly message: string;
      readonly decidedBy: string | null;
    };

export interface DecisionInput {
  readonly data: Readonly<Record<string, unknown>>;
  readonly body: string;
  readonly request: ApprovalRequest;
  readonly now: Date;
  /** The environment's approver allowlist, or null when anyone but the requester may decide. */
  readonly approvers?: readonly string[] | null;
  readonly timeZone?: TimeZone;
}

const NAME_PLACEHOLDERS = new Set(
  [
    'your name',
    'name',
    '<name>',
    '<your name>',
    'todo',
    'tbd',
    'n/a',
    'none',
    'null',
    PLACEHOLDERS.decidedBy,
  ].map((s) => s.toLowerCase()),
);

const TEXT_PLACEHOLDERS = new Set(
  [PLACEHOLDERS.comments, 'todo', 'tbd', 'n/a', 'none', '-', '(none)', 'reason', 'your reason'].map((s) =>
    s.toLowerCase(),
  ),
);

function invalid(code: string, message: string): DecisionVerdict {
  return { kind: 'invalid', code, message };
}

function meaningful(value: unknown, placeholders: ReadonlySet<string>): string | null {
  if (typeof value !== 'string') return null;
  const text = value.trim();
  if (text === '' || placeholders.has(text.toLowerCase())) return null;
  return text;
}

/** The text after **Comments:** in the Approval Decision section, if a human wrote any. */
export function commentsFromBody(body: string): string | null {
  const line = paragraphLinesUnder(body, 'Approval Decision')?.find((l) => l.startsWith('**Comments:**'));
  return meaningful(line?.slice('**Comments:**'.length) ?? null, TEXT_PLACEHOLDERS);
}

const STATUSES = HumanStatus.options;

/**
 * The Status display line of the Approval Decision section, upper-cased, if present. Both are read
 * from the real section (a Markdown heading, not a look-alike line in the agent's reason).
 */
function bodyStatus(body: string): string | null {
  const line = paragraphLinesUnder(body, 'Approval Decision')?.find((l) => l.startsWith('**Status:**'));
  return /^\*\*Status:\*\*[ \t]*(\S+)/.exec(line ?? '')?.[1]?.toUpperCase() ?? null;
}

/** Names compared as a reader sees them: compatibility forms folded (NFKC), case and spacing ignored. */
const nameKey = (name: string) => name.normalize('NFKC').trim().replace(/\s+/g, ' ').toLowerCase();
const sameName = (a: string, b: string) => nameKey(a) === nameKey(b);

/** Whoever decides may not be the requester, and must be on the environment's allowlist if it has one. */
function approverProblem(
  field: 'decided_by' | 'second_approver',
  name: string,
  request: ApprovalRequest,
  approvers: readonly string[] | null,
): DecisionVerdict | null {
  // "agent" with a zero-width space reads as "agent": a name a reader cannot see whole is no name.
  const hidden = findInvisibleCharacter(name);
  if (hidden) {
    return invalid(
      'NAME_INVISIBLE_CHARACTER',
      `${field} contains ${hidden.codePoint} ${hidden.name}, which a reader cannot see; write the name without it.`,
    );
  }
  if (sameName(name, request.requested_by)) {
    return invalid(
      'SELF_APPROVAL',
      `${field} "${name}" is the identity that requested this change; a different person must decide.`,
    );
  }
  if (approvers !== null && !approvers.some((approver) => sameName(approver, name))) {
    return invalid(
      'DECIDED_BY_NOT_ALLOWED',
      `"${name}" is not an approver for the ${request.command.environment} environment (allowed: ${approvers.join(', ')}).`,
    );
  }
  return null;
}

export function evaluateDecision({
  data,
  body,
  request,
  now,
  approvers = null,
  timeZone = null,
}: DecisionInput): DecisionVerdict {
  if (data.id !== request.id) {
    return invalid(
      'ID_MISMATCH',
      `The front matter says id ${JSON.stringify(data.id)}, but this file is request ${request.id}. Restore id: "${request.id}".`,
    );
  }
  const status = data.status;
  if (status === 'PENDING') {
    const shown = bodyStatus(body);
    if (shown === 'APPROVED' || shown === 'REJECTED') {
      return invalid(
        'STATUS_IN_BODY_ONLY',
        `The **Status:** line in the body says ${shown}, but decisions are read from the front matter only: set status: "${shown}" at the top of the file.`,
      );
    }
    return { kind: 'pending' };
  }
  if (status === 'EXPIRED') {
    return invalid(
      'STATUS_EXPIRED_BY_HAND',
      'Only the server sets EXPIRED. Use REJECTED (with a reason) to turn a request down.',
    );
  }
  if (typeof status !== 'string' || !(STATUSES as readonly string[]).includes(status)) {
    const shown = JSON.stringify(status);
    const near =
      typeof status === 'string' && STATUSES.find((s) => s === status.trim().toUpperCase())
        ? ` Did you mean "${status.trim().toUpperCase()}"? Write it exactly, in capitals.`
        : '';
    return invalid(
      'STATUS_INVALID',
      `status ${shown} is not one of PENDING, APPROVED, REJECTED.${near} Nothing was executed; correct it and save again.`,
    );
  }
  if (now.getTime() > Date.parse(request.expires_at)) {
    return invalid(
      'DECISION_TOO_LATE',
      `The request expired at ${request.expires_at}; a decision seen after that is not accepted. Nothing was executed.`,
    );
  }
  if (status === 'APPROVED') {
    const tampering = findTampering(data, body, request);
    if (tampering) {
      return {
        kind: 'void',
        code: tampering.code,
        message: `${tampering.message} An approval of an edited request is void; nothing was executed, and this request can no longer run. Ask the agent to submit a new request.`,
        decidedBy: typeof data.decided_by === 'string' ? data.decided_by : null,
      };
    }
  }
  const decidedBy = meaningful(data.decided_by, NAME_PLACEHOLDERS);
  if (decidedBy === null) {
    return invalid(
      'DECIDED_BY_MISSING',
      `${status} needs your name in decided_by (not empty, not a placeholder). Nothing was executed.`,
    );
  }
  const notAllowed = approverProblem('decided_by', decidedBy, request, approvers);
  if (notAllowed) return notAllowed;
  let claimedDecidedAt: string | null = null;
  if (data.decided_at !== undefined && data.decided_at !== null && data.decided_at !== '') {
    if (typeof data.decided_at !== 'string' || parseTimestamp(data.decided_at, timeZone) === null) {
      return invalid(
        'DECIDED_AT_INVALID',
        `decided_at ${JSON.stringify(data.decided_at)} is not an ISO 8601 time like 2026-02-13T09:05:00; fix it or leave it empty.`,
      );
    }
    claimedDecidedAt = data.decided_at;
  }
  const reason =
    meaningful(data.reason, TEXT_PLACEHOLDERS) ??
    meaningful(data.comments, TEXT_PLACEHOLDERS) ??
    commentsFromBody(body);
  if (status === 'REJECTED') {
    if (reason === null) {
      return invalid(
        'REJECTION_REASON_MISSING',
        'REJECTED needs a reason: fill in reason: "…" in the front matter or the **Comments:** line. Nothing was executed.',
      );
    }
    return { kind: 'rejected', decidedBy, claimedDecidedAt, reason };
  }
  let secondApprover: string | null = null;
  if (request.approvals_required === 2) {
    secondApprover = meaningful(data.second_approver, NAME_PLACEHOLDERS);
    if (secondApprover === null) {
      return invalid(
        'SECOND_APPROVER_MISSING',
        'This request needs two approvers (environment policy): fill in second_approver with a second person. Nothing was executed.',
      );
    }
    if (sameName(secondApprover, decidedBy)) {
      return invalid('SECOND_APPROVER_SAME', 'second_approver must be a different person from decided_by.');
    }
    const secondNotAllowed = approverProblem('second_approver', secondApprover, request, approvers);
    if (secondNotAllowed) return secondNotAllowed;
  }
  return { kind: 'approved', decidedBy, secondApprover, claimedDecidedAt, comment: reason };
}
