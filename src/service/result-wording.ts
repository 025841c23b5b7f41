import type { Decision } from '../approvals/request.js';
import type { ExecutionResult } from '../migration/result.js';
import { escapesTransaction, RISK_TITLES, type RiskFinding } from '../migration/risk-codes.js';

/**
 * One sentence on what an execution did to the database, for the file and the agent. `findings`
 * tell which statements may have had effects no rollback undoes (COPY … PROGRAM, dblink, …), so a
 * rolled-back failure never claims that nothing happened when something may have.
 */
export function summariseResult(result: ExecutionResult, findings: readonly RiskFinding[] = []): string {
  const reached = result.error?.statement ?? Number.POSITIVE_INFINITY;
  const escaped = [
    ...new Set(
      findings
        .filter((f) => escapesTransaction(f) && f.statement !== null && f.statement <= reached)
        .map((f) => `${f.statement} (${RISK_TITLES[f.code]})`),
    ),
  ];
  const outside =
    escaped.length > 0
      ? ` But statement${escaped.length === 1 ? '' : 's'} ${escaped.join(', ')} ran and may have had effects outside the transaction that no rollback undoes.`
      : '';
  const applied = result.statements.map((s) => s.statement).join(', ');
  switch (result.state) {
    case 'succeeded':
      return result.transactional
        ? `Succeeded in ${result.duration_ms} ms; committed.`
        : `Succeeded in ${result.duration_ms} ms; each statement committed on its own.`;
    case 'rolled_back': {
      const rehearsal = result.rollback_rehearsal;
      const rollback =
        rehearsal?.state === 'succeeded'
          ? ' The rollback SQL, run after it, also succeeded.'
          : rehearsal?.state === 'failed'
            ? ` The rollback SQL FAILED at statement ${rehearsal.error?.statement ?? '?'}, line ${rehearsal.error?.line ?? '?'}: ${rehearsal.error?.message ?? ''}.`
            : rehearsal?.state === 'not_provided'
              ? ' No rollback SQL was provided to rehearse.'
              : '';
      return `Dry run: every statement succeeded in ${result.duration_ms} ms and was rolled back; nothing changed.${rollback}${outside}`;
    }
    case 'failed':
      return result.transactional
        ? `Failed; the transaction was rolled back${outside ? '.' : ' and nothing changed.'}${outside}`
        : `Failed at statement ${result.error?.statement ?? '?'}, outside a transaction: ${applied ? `statements ${applied} took effect and stay applied` : 'no statement took effect'}.`;
    case 'unknown':
      return `Outcome UNKNOWN. ${result.error?.message ?? ''}${applied ? ` Statements ${applied} took effect.` : ''}`;
  }
}

/** The Outcome section's lines under the summary: statements, error, backup, signatures, who ran it. */
export function executionDetails(result: ExecutionResult, decision: Decision): string[] {
  return [
    ...result.statements.map(
      (s) =>
        `Statement ${s.statement} (${s.kind}): ok${s.rows_affected !== null ? `, ${s.rows_affected} rows` : ''}`,
    ),
    ...(result.error
      ? [
          `Error in statement ${result.error.statement} at line ${result.error.line}${result.error.column !== null ? `, column ${result.error.column}` : ''}: ${result.error.message}${result.error.sqlstate ? ` (SQLSTATE ${result.error.sqlstate})` : ''}`,
        ]
      : []),
    ...(result.backup
      ? [
          `Backup (${result.backup.method}) of ${result.backup.tables.join(', ') || 'no existing table'}: ${result.backup.location || 'nothing to copy'}`,
        ]
      : []),
    ...signatureLines(decision),
    `Executed by ${result.executed_by}`,
  ];
}

/** Who signed a decision, with which key: for the Outcome section and the audit trail. */
export function signatureLines(decision: Decision): string[] {
  return decision.signatures.map(
    (s) => `Signed (${s.role}) by ${s.principal} with ${s.key_type} key ${s.fingerprint}`,
  );
}

/** What the file says of a decision that runs nothing: its front matter fields and Outcome section. */
export function unexecutedOutcome(decision: Decision): {
  readonly fields: Record<string, string | undefined>;
  readonly summary: string;
  readonly details: string[];
} {
  const notRun = { execution: 'not_started' };
  switch (decision.status) {
    case 'APPROVED':
      throw new Error('An approved decision is executed, not settled as unexecuted.');
    case 'REJECTED':
      return {
        fields: { ...notRun, gate_error: undefined },
        summary: 'Rejected; nothing was executed.',
        details: [`Reason: ${decision.reason ?? ''}`, ...signatureLines(decision)],
      };
    case 'EXPIRED':
      return {
        fields: { ...notRun, status: 'EXPIRED', gate_error: undefined },
        summary: 'Expired without a valid decision; nothing was executed.',
        details: [],
      };
    case 'VOID':
      return {
        fields: { ...notRun, status: 'VOID', gate_error: decision.reason ?? 'void' },
        summary:
          'VOID: the approval did not match what would run; nothing was executed, and this request can never run.',
        details: [decision.reason ?? ''],
      };
    case 'CANCELLED':
      // The file is gone; if it comes back, it says so.
      return {
        fields: { ...notRun, status: 'CANCELLED' },
        summary: 'Cancelled; nothing was executed.',
        details: [decision.reason ?? ''],
      };
  }
}

/** The Outcome summary when execution ended without a ledger row: nothing was sent, or it is unknown. */
export function unrecordedSummary(sent: 'nothing' | 'maybe', ledgerSchema: string, id: string): string {
  return sent === 'nothing'
    ? 'Not executed: nothing changed in the database (see the error below).'
    : `Outcome UNKNOWN: the connection failed during execution. Check ${ledgerSchema}.ledger for ${id} before doing anything else.`;
}
