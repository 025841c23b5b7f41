import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import { GateError, describeError } from '../errors.js';
import { ExecutionResult } from '../migration/result.js';
import { RiskFinding } from '../migration/risk-codes.js';
import type { ApprovalStatus } from '../pipeline.js';
import { summariseResult } from '../service/result-wording.js';

/** The one structured result every tool returns, so an agent handles a single shape. */
export const ToolOutcome = z.object({
  approval_id: z
    .string()
    .nullable()
    .describe('APR-YYYYMMDD-NNN; null when the request was refused before it was stored.'),
  status: z
    .enum(['PENDING', 'APPROVED', 'REJECTED', 'EXPIRED', 'VOID', 'CANCELLED', 'REFUSED'])
    .describe(
      'The decision. VOID: approved, but the file no longer showed what would run (edited), so it can never run. ' +
        'CANCELLED: the approval file was deleted or moved away, or the requester withdrew it (cancel_approval). REFUSED: the request never reached a human (invalid, refused by policy, or the database was unreachable); nothing was written.',
    ),
  execution: z
    .enum(['not_started', 'running', 'succeeded', 'failed', 'rolled_back', 'unknown'])
    .describe(
      'rolled_back: a dry run that ran and was rolled back. unknown: the connection failed mid-way; check the ledger.',
    ),
  final: z.boolean().describe('true when nothing more will happen to this request.'),
  message: z.string().describe('What happened, in one or two sentences.'),
  next_step: z.string().nullable().describe('What to do now, when there is something to do.'),
  file: z.string().nullable().describe('Path of the approval file the human edits.'),
  expires_at: z.string().nullable(),
  decided_by: z.string().nullable(),
  decided_at: z.string().nullable().describe("When the server accepted the decision, by the server's clock."),
  reason: z.string().nullable().describe('The rejection reason, or the approver comment.'),
  problem: z
    .object({ code: z.string(), message: z.string() })
    .nullable()
    .describe('Why the current edit of the file is not an acceptable decision (the request stays pending).'),
  error: z
    .object({ code: z.string(), message: z.string() })
    .nullable()
    .describe('Why the request was refused.'),
  result: ExecutionResult.nullable(),
  impact: z
    .array(
      z.object({
        name: z.string(),
        exists: z.boolean(),
        kind: z.string().nullable(),
        estimated_rows: z
          .number()
          .nullable()
          .describe("The planner's estimate (pg_class.reltuples), not an exact count."),
        total_bytes: z.number().nullable(),
        indexes: z.number().nullable(),
      }),
    )
    .describe('Each table the SQL names, from the live catalog when the request was made.'),
  findings: z
    .array(RiskFinding)
    .describe(
      "The server's own analysis of the SQL: locks, rewrites, data loss, with safer alternatives. Read them before waiting: " +
        'you may cancel and resubmit a safer version before a human spends time on this one.',
    ),
});
export type ToolOutcome = z.infer<typeof ToolOutcome>;

const NOTHING = {
  decided_by: null,
  decided_at: null,
  reason: null,
  problem: null,
  error: null,
  result: null,
} as const;

export function outcomeOfStatus(status: ApprovalStatus): ToolOutcome {
  const { request, decision } = status;
  const common = {
    ...NOTHING,
    approval_id: request.id,
    file: status.file,
    expires_at: request.expires_at,
    problem: status.problem,
    findings: [...status.findings],
    impact: [...status.impact],
    decided_by: decision?.decided_by ?? null,
    decided_at: decision?.decided_at ?? null,
    reason: decision?.reason ?? null,
  };
  const awaitStep = `Call await_approval with {"id": "${request.id}"} to keep waiting.`;
  if (!decision) {
    return {
      ...common,
      status: 'PENDING',
      execution: 'not_started',
      final: false,
      message:
        `Waiting for a human to approve or reject ${request.id} in ${status.file} (expires ${request.expires_at}).` +
        (status.problem ? ` The file's current edit is not accepted: ${status.problem.message}` : ''),
      next_step: `${awaitStep} Do not resubmit the same migration; it would create a second request.`,
    };
  }
  if (decision.status === 'REJECTED') {
    return {
      ...common,
      status: 'REJECTED',
      execution: 'not_started',
      final: true,
      message: `${decision.decided_by ?? 'A human'} rejected ${request.id}: ${(decision.reason ?? '(no reason)').replace(/\.$/, '')}. Nothing was executed.`,
      next_step: 'Address the reason before submitting a new request.',
    };
  }
  if (decision.status === 'VOID' || decision.status === 'CANCELLED') {
    return {
      ...common,
      status: decision.status,
      execution: 'not_started',
      final: true,
      message: `${request.id} is ${decision.status}: ${decision.reason ?? ''} Nothing was executed.`,
      next_step: 'Submit a new request if the change is still needed; tell the human what happened.',
    };
  }
  if (decision.status === 'EXPIRED') {
    return {
      ...common,
      status: 'EXPIRED',
      execution: 'not_started',
      final: true,
      message: `${request.id} expired at ${request.expires_at} without a valid decision. Nothing was executed.`,
      next_step: 'Submit a new request if the change is still needed.',
    };
  }
  const approvedBy =
    decision.decided_by === null
      ? `${request.id} ran without human approval (${decision.reason ?? 'environment policy'})`
      : `${decision.decided_by}${decision.second_approver ? ` and ${decision.second_approver}` : ''} approved ${request.id}`;
  if (status.execution === 'running' || status.execution === 'not_started') {
    return {
      ...common,
      status: 'APPROVED',
      execution: 'running',
      final: false,
      message:
        `${approvedBy}; the migration is running${status.progress ? ` (${status.progress})` : ''}.` +
        (status.executionError ? ` Note: ${status.executionError}.` : ''),
      next_step: awaitStep,
    };
  }
  if (status.result === null) {
    return {
      ...common,
      status: 'APPROVED',
      execution: status.execution === 'unknown' ? 'unknown' : 'failed',
      final: true,
      message: `${approvedBy}, but the outcome is ${status.execution === 'unknown' ? 'UNKNOWN' : 'a failure before any SQL ran'}: ${status.executionError ?? ''}`,
      next_step:
        status.execution === 'unknown'
          ? 'Do not resubmit. Ask a human to check the database and the gate ledger for this approval id.'
          : 'Ask a human to check the database connection, then submit a new request.',
    };
  }
  const { result } = status;
  const message =
    result.state === 'failed' && result.error
      ? `${approvedBy}: ${summariseResult(result, status.findings)} Statement ${result.error.statement}, line ${result.error.line}${result.error.column !== null ? `, column ${result.error.column}` : ''}: ${result.error.message}`
      : `${approvedBy}: ${summariseResult(result, status.findings)}`;
  const nextSteps = {
    succeeded: null,
    rolled_back:
      result.rollback_rehearsal?.state === 'failed'
        ? 'Fix the rollback SQL and rehearse again with dry_run: true before asking for the real run.'
        : 'Submit the same SQL with dry_run: false to apply it (it needs a new approval).',
    failed: result.transactional
      ? 'Fix the SQL and submit a new request.'
      : 'Some statements may have taken effect (see result.statements); ask a human before submitting anything else.',
    unknown: 'Do not resubmit. Ask a human to check the database; the gate will not retry this statement.',
  } as const;
  return {
    ...common,
    status: 'APPROVED',
    execution: result.state,
    final: true,
    result,
    message,
    next_step: nextSteps[result.state],
  };
}

/** Refusals that no change to the request can fix: the database or the server's own setup. */
const SERVER_PROBLEMS = new Set([
  'DATABASE_UNREACHABLE',
  'LEDGER_UNAVAILABLE',
  'DATABASE_NOT_CONFIGURED',
  'DATABASE_LOCKED',
  'SESSION_NOT_CLEAN',
]);

export function outcomeOfRefusal(error: unknown): ToolOutcome {
  const code = error instanceof GateError ? error.code : 'INTERNAL_ERROR';
  const message = describeError(error);
  return {
    ...NOTHING,
    findings: [],
    impact: [],
    approval_id: null,
    status: 'REFUSED',
    execution: 'not_started',
    final: true,
    message,
    next_step:
      code === 'APPROVAL_NOT_FOUND'
        ? 'Check the approval_id; list_approvals shows the requests this server knows.'
        : code === 'INTERNAL_ERROR'
          ? 'Report this to a human; nothing was executed.'
          : SERVER_PROBLEMS.has(code)
            ? 'This is a problem of the server or its database, not of your request: ask the operator to fix it, then call the tool again. Nothing was written.'
            : 'Correct the request and call the tool again.',
    file: null,
    expires_at: null,
    error: { code, message },
  };
}

/** The MCP result: structured content for programs, the same as text for models; isError for failures. */
export function toToolResult(outcome: ToolOutcome): CallToolResult {
  const failed =
    outcome.status === 'REFUSED' ||
    outcome.status === 'REJECTED' ||
    outcome.status === 'EXPIRED' ||
    outcome.status === 'VOID' ||
    outcome.status === 'CANCELLED' ||
    outcome.execution === 'failed' ||
    outcome.execution === 'unknown' ||
    outcome.result?.rollback_rehearsal?.state === 'failed';
  const headline = [outcome.message, outcome.next_step].filter(Boolean).join('\n');
  return {
    content: [{ type: 'text', text: `${headline}\n\n${JSON.stringify(outcome, null, 2)}` }],
    structuredContent: outcome,
    isError: failed,
  };
}
