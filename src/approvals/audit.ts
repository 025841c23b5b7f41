import { constants, lstatSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
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
  /** The server wrote an answer given in the MCP client into the file (the gate then judges it). */
  | 'answered_in_client'
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
  /** The file appended to, kept open; `ino` tells whether the path still names it. */
  #current: { readonly handle: FileHandle; readonly ino: number } | null = null;
  /** One look at the path (and reopen) at a time. */
  #turn: Promise<unknown> = Promise.resolve();

  constructor(stateDir: string, now: () => Date) {
    this.file = path.join(stateDir, 'audit.jsonl');
    this.#now = now;
  }

  async append(entry: AuditEntry): Promise<void> {
    const line = JSON.stringify({ at: this.#now().toISOString(), pid: process.pid, ...entry });
    const handle = await this.#handle();
    await handle.write(`${line}\n`);
  }

  /**
   * The open file, opened anew when the path no longer names it (deleted, moved, replaced by anything
   * else), so the trail is always the file the state directory shows; never through a link.
   */
  #handle(): Promise<FileHandle> {
    const next = this.#turn.then(async () => {
      const now = lstatSync(this.file, { throwIfNoEntry: false });
      if (this.#current !== null && now?.isFile() && now.ino === this.#current.ino) {
        return this.#current.handle;
      }
      // Closed once the writes already under way on it are done (FileHandle.close waits for them).
      await this.#current?.handle.close().catch(() => undefined);
      this.#current = null;
      const handle = await open(
        this.file,
        constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW,
        0o600,
      );
      try {
        this.#current = { handle, ino: (await handle.stat()).ino };
      } catch (error) {
        await handle.close();
        throw error;
      }
      return handle;
    });
    this.#turn = next.catch(() => undefined);
    return next;
  }

  async close(): Promise<void> {
    await this.#turn;
    await this.#current?.handle.close().catch(() => undefined);
    this.#current = null;
  }
}
