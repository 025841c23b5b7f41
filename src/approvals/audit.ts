import { appendFile } from 'node:fs/promises';
import path from 'node:path';

/**
 * The audit trail: one JSON line per transition, appended to `audit.jsonl` in the state directory.
 * Appends of one short line are atomic with O_APPEND, so several instances can share the file.
 */

export type AuditEvent =
  | 'requested'
  | 'decision_refused'
  | 'approved'
  | 'rejected'
  | 'expired'
  | 'voided'
  | 'cancelled'
  | 'edit_ignored'
  | 'unknown_request'
  | 'execution_started'
  | 'executed'
  /** This instance found another run's result in the ledger and did not run the SQL. */
  | 'result_found'
  | 'execution_failed'
  | 'outcome_unknown';

export interface AuditEntry {
  readonly approval_id: string;
  readonly event: AuditEvent;
  /** Who caused it: a reviewer's name, the requester's identity, or "server". */
  readonly actor: string;
  readonly request_hash: string | null;
  readonly detail?: string;
}

export class AuditLog {
  readonly file: string;
  readonly #now: () => Date;

  constructor(stateDir: string, now: () => Date) {
    this.file = path.join(stateDir, 'audit.jsonl');
    this.#now = now;
  }

  async append(entry: AuditEntry): Promise<void> {
    const line = JSON.stringify({ at: this.#now().toISOString(), pid: process.pid, ...entry });
    await appendFile(this.file, `${line}\n`, { mode: 0o600 });
  }
}
