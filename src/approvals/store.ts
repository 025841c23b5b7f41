import { randomBytes } from 'node:crypto';
import { constants, renameSync } from 'node:fs';
import { link, lstat, mkdir, open, readdir, readFile, unlink, writeFile, chmod } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { GateError } from '../errors.js';
import { sameStamp, stampFile, type FileStamp } from './file-stamp.js';
import { decodeUtf8, MAX_FILE_BYTES, parseApprovalText, type ParsedApprovalFile } from './frontmatter.js';
import { ApprovalRequest, APPROVAL_ID_PATTERN, Decision, hashCommand } from './request.js';

/**
 * Where requests live. The approvals directory holds the Markdown files humans edit; the state
 * directory (mode 0700) holds the server's canonical records and accepted decisions, which the file
 * can never overwrite. Every write is atomic (temp file + link/rename), so a reader never sees half
 * a record, and `link` refuses to replace an existing name, which makes id allocation and "the first
 * decision stands" hold across processes.
 */

/**
 * How an approved request's execution ended, recorded by the runner for every end. With `in_ledger`
 * the ledger row (committed with the migration) is the result and this only says it is final;
 * without it no ledger row exists: `failed` means nothing was sent, `unknown` that something may have
 * run.
 */
export const StoredOutcome = z
  .object({
    execution: z.enum(['succeeded', 'failed', 'rolled_back', 'unknown']),
    in_ledger: z.boolean().default(false),
    error: z.string().nullable(),
    at: z.string(),
  })
  .strict();
export type StoredOutcome = z.infer<typeof StoredOutcome>;

export type ApprovalFileRead =
  | { readonly kind: 'ok'; readonly text: string; readonly parsed: ParsedApprovalFile }
  | { readonly kind: 'missing' }
  | { readonly kind: 'unreadable'; readonly error: GateError };

const FILE_NAME = /^(APR-\d{8}-\d{3,6})\.md$/;

function localDatePart(isoWithOffset: string): string {
  // created_at is written in server local time: its first ten characters are the local date.
  return isoWithOffset.slice(0, 10).replaceAll('-', '');
}

function tempName(target: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.${randomBytes(6).toString('hex')}.tmp`);
}

/** Writes `content` to `target` only if `target` does not exist yet. Returns false if it did. */
async function createExclusive(target: string, content: string, mode: number): Promise<boolean> {
  const temp = tempName(target);
  await writeFile(temp, content, { mode, flag: 'wx' });
  try {
    await link(temp, target);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  } finally {
    await unlink(temp).catch(() => undefined);
  }
}

export class ApprovalStore {
  readonly approvalsDir: string;
  /**
   * This installation's identity, made once per state directory. Signed decisions name it, so a
   * signature for APR-…-001 here never counts for APR-…-001 of another installation.
   */
  readonly installation: string;
  readonly #records: string;
  readonly #decisions: string;
  /** The stamp of each approval file as this store last wrote it (see isOwnWrite). */
  readonly #written = new Map<string, FileStamp>();
  /** Claims of rollback requests, one per rollback generation of an executed request. */
  readonly #rollbacks: string;
  /** Outcomes no ledger row records: an execution that never started, or whose end is unknown. */
  readonly #outcomes: string;

  private constructor(approvalsDir: string, stateDir: string, installation: string) {
    this.approvalsDir = approvalsDir;
    this.installation = installation;
    this.#records = path.join(stateDir, 'records');
    this.#decisions = path.join(stateDir, 'decisions');
    this.#rollbacks = path.join(stateDir, 'rollbacks');
    this.#outcomes = path.join(stateDir, 'outcomes');
  }

  static async open(approvalsDir: string, stateDir: string): Promise<ApprovalStore> {
    await mkdir(approvalsDir, { recursive: true });
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
    await chmod(stateDir, 0o700);
    const identity = path.join(stateDir, 'installation');
    await createExclusive(identity, `${randomBytes(16).toString('hex')}\n`, 0o600);
    const installation = (await readFile(identity, 'utf8')).trim();
    if (!/^[0-9a-f]{32}$/.test(installation)) {
      throw new GateError(
        'STATE_CORRUPT',
        `${identity} does not hold an installation id; restore or remove it.`,
      );
    }
    const store = new ApprovalStore(approvalsDir, stateDir, installation);
    await mkdir(store.#records, { recursive: true, mode: 0o700 });
    await mkdir(store.#decisions, { recursive: true, mode: 0o700 });
    return store;
  }

  /** The approval file of `id`. Ids are validated, so no path can escape the approvals directory. */
  filePath(id: string): string {
    if (!APPROVAL_ID_PATTERN.test(id))
      throw new GateError('APPROVAL_ID_INVALID', `"${id}" is not an approval id (APR-YYYYMMDD-NNN).`);
    return path.join(this.approvalsDir, `${id}.md`);
  }

  /** Approval id of a file name in the approvals directory, or null for any other file. */
  static idOfFileName(name: string): string | null {
    return FILE_NAME.exec(name)?.[1] ?? null;
  }

  /**
   * Allocates the next id of the request's day and stores the record and the approval file. Two
   * concurrent calls, in one process or two, never get the same id.
   */
  async create(
    draft: Omit<ApprovalRequest, 'id'>,
    render: (request: ApprovalRequest) => string,
  ): Promise<ApprovalRequest> {
    const day = localDatePart(draft.created_at);
    const prefix = `APR-${day}-`;
    const taken = [...(await readdir(this.#records)), ...(await readdir(this.approvalsDir))]
      .map((name) => /^APR-\d{8}-(\d{3,6})\.(json|md)$/.exec(name))
      .filter((m): m is RegExpExecArray => m !== null && m[0].startsWith(prefix))
      .map((m) => Number(m[1]));
    let next = taken.length > 0 ? Math.max(...taken) + 1 : 1;
    for (;;) {
      if (next > 999_999) throw new GateError('APPROVAL_IDS_EXHAUSTED', `No approval ids left for ${day}.`);
      const id = `${prefix}${String(next).padStart(3, '0')}`;
      const request = ApprovalRequest.parse({ ...draft, id });
      const recorded = await createExclusive(
        path.join(this.#records, `${id}.json`),
        `${JSON.stringify(request, null, 2)}\n`,
        0o600,
      );
      if (recorded) {
        if (!(await createExclusive(this.filePath(id), render(request), 0o644))) {
          throw new GateError(
            'APPROVAL_FILE_EXISTS',
            `An approval file for ${id} already exists; nothing was overwritten.`,
          );
        }
        return request;
      }
      next += 1;
    }
  }

  /**
   * The canonical record of `id`. Its hash is recomputed, never trusted: a record edited after the
   * request (or forged with a copied hash) is refused, so nothing of it can run.
   */
  async readRequest(id: string): Promise<ApprovalRequest | null> {
    this.filePath(id);
    let request: ApprovalRequest;
    try {
      request = ApprovalRequest.parse(
        JSON.parse(await readFile(path.join(this.#records, `${id}.json`), 'utf8')),
      );
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw new GateError('RECORD_CORRUPT', `The server's record of ${id} cannot be read.`, { cause: error });
    }
    if (request.id !== id || hashCommand(request.command) !== request.request_hash) {
      throw new GateError(
        'RECORD_TAMPERED',
        `The server's record of ${id} no longer matches its own hash (or names another id): it was edited ` +
          'after the request was made. Nothing of it will run; submit a new request.',
        { context: { approvalId: id } },
      );
    }
    return request;
  }

  async listRequestIds(): Promise<string[]> {
    return (await readdir(this.#records))
      .map((name) => /^(APR-\d{8}-\d{3,6})\.json$/.exec(name)?.[1])
      .filter((id): id is string => id !== undefined)
      .sort();
  }

  /** Records `decision` unless one is already recorded; returns the decision that stands. */
  async recordDecision(id: string, decision: Decision): Promise<Decision> {
    this.filePath(id);
    if (decision.approval_id !== id) {
      throw new GateError(
        'DECISION_NOT_BOUND',
        `A decision about ${decision.approval_id} cannot be recorded for ${id}.`,
      );
    }
    const target = path.join(this.#decisions, `${id}.json`);
    if (await createExclusive(target, `${JSON.stringify(decision, null, 2)}\n`, 0o600)) return decision;
    const standing = await this.readDecision(id);
    if (!standing) throw new GateError('DECISION_CORRUPT', `The recorded decision of ${id} cannot be read.`);
    return standing;
  }

  /**
   * The recorded decision of `id`, checked to be about this id and this exact request (its hash):
   * a decision copied from another request, even one with identical SQL, is refused.
   */
  async readDecision(id: string): Promise<Decision | null> {
    this.filePath(id);
    let decision: Decision;
    try {
      decision = Decision.parse(JSON.parse(await readFile(path.join(this.#decisions, `${id}.json`), 'utf8')));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw new GateError('DECISION_CORRUPT', `The recorded decision of ${id} cannot be read.`, {
        cause: error,
      });
    }
    const request = await this.readRequest(id);
    if (decision.approval_id !== id || request?.request_hash !== decision.request_hash) {
      throw new GateError(
        'DECISION_NOT_BOUND',
        `The recorded decision of ${id} was made about ${decision.approval_id} (${decision.request_hash}), not about ` +
          `this request (copied from another request?); it does not count and nothing runs on it. ` +
          `Remove ${path.join(this.#decisions, `${id}.json`)} to let a human decide.`,
        { context: { approvalId: id } },
      );
    }
    return decision;
  }

  /**
   * Claims the `generation`-th rollback request of `id` (1 for the first, 2 after a first one ended
   * without approval, …) with an exclusive create; false when another caller holds it.
   */
  async claimRollback(id: string, generation: number): Promise<boolean> {
    this.filePath(id);
    await mkdir(this.#rollbacks, { recursive: true, mode: 0o700 });
    return createExclusive(path.join(this.#rollbacks, `${id}.${generation}`), `${generation}\n`, 0o600);
  }

  async releaseRollbackClaim(id: string, generation: number): Promise<void> {
    this.filePath(id);
    await unlink(path.join(this.#rollbacks, `${id}.${generation}`)).catch(() => undefined);
  }

  /**
   * Records that an execution ended, and how when the ledger does not say it (nothing was sent, or
   * the connection failed mid-way): the first record stands, so a restart finds a final answer.
   */
  async recordOutcome(id: string, outcome: z.input<typeof StoredOutcome>): Promise<void> {
    this.filePath(id);
    await mkdir(this.#outcomes, { recursive: true, mode: 0o700 });
    await createExclusive(path.join(this.#outcomes, `${id}.json`), `${JSON.stringify(outcome)}\n`, 0o600);
  }

  async readOutcome(id: string): Promise<StoredOutcome | null> {
    this.filePath(id);
    try {
      return StoredOutcome.parse(JSON.parse(await readFile(path.join(this.#outcomes, `${id}.json`), 'utf8')));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw new GateError('OUTCOME_CORRUPT', `The recorded outcome of ${id} cannot be read.`, {
        cause: error,
      });
    }
  }

  /** Reads the approval file as data: regular files only (no symlinks), size-capped, strict UTF-8. */
  async readApprovalFile(id: string): Promise<ApprovalFileRead> {
    const read = await this.readApprovalText(id);
    if (read.kind !== 'ok') return read;
    try {
      return { kind: 'ok', text: read.text, parsed: parseApprovalText(read.text) };
    } catch (error) {
      if (error instanceof GateError) return { kind: 'unreadable', error };
      throw error;
    }
  }

  /** The approval file's text, read as readApprovalFile reads it (safely), without parsing it. */
  async readApprovalText(
    id: string,
  ): Promise<{ readonly kind: 'ok'; readonly text: string } | Exclude<ApprovalFileRead, { kind: 'ok' }>> {
    const file = this.filePath(id);
    try {
      const stat = await lstat(file);
      if (stat.isSymbolicLink()) {
        return {
          kind: 'unreadable',
          error: new GateError(
            'FILE_SYMLINK',
            `${id}.md is a symbolic link; approval files must be regular files.`,
          ),
        };
      }
      if (!stat.isFile()) {
        return {
          kind: 'unreadable',
          error: new GateError('FILE_NOT_REGULAR', `${id}.md is not a regular file.`),
        };
      }
      if (stat.size > MAX_FILE_BYTES) {
        return {
          kind: 'unreadable',
          error: new GateError(
            'FILE_TOO_LARGE',
            `${id}.md is ${stat.size} bytes; the limit is ${MAX_FILE_BYTES}.`,
          ),
        };
      }
      // O_NOFOLLOW closes the gap between lstat and open.
      const handle = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW);
      let bytes: Buffer;
      try {
        bytes = await handle.readFile();
      } finally {
        await handle.close();
      }
      if (bytes.length > MAX_FILE_BYTES) {
        return {
          kind: 'unreadable',
          error: new GateError('FILE_TOO_LARGE', `${id}.md is larger than ${MAX_FILE_BYTES} bytes.`),
        };
      }
      if (bytes.length === 0) {
        // An in-place save truncates first and writes second; the write's own event follows.
        return {
          kind: 'unreadable',
          error: new GateError('FILE_EMPTY', `${id}.md is empty (a save in progress?).`),
        };
      }
      return { kind: 'ok', text: decodeUtf8(bytes) };
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return { kind: 'missing' };
      if (code === 'ELOOP') {
        return {
          kind: 'unreadable',
          error: new GateError(
            'FILE_SYMLINK',
            `${id}.md is a symbolic link; approval files must be regular files.`,
          ),
        };
      }
      if (error instanceof GateError) return { kind: 'unreadable', error };
      throw error;
    }
  }

  /**
   * Rewrites the approval file with `change(text)`, atomically (temp + rename). If the human saves
   * between our read and our rename, the loop starts again from their version instead of
   * overwriting it. Returns false when the file is missing or unreadable.
   */
  async updateApprovalFile(id: string, change: (text: string) => string): Promise<boolean> {
    const file = this.filePath(id);
    for (let attempt = 0; attempt < 5; attempt += 1) {
      const before = await this.readApprovalText(id);
      if (before.kind !== 'ok') return false;
      const after = change(before.text);
      if (after === before.text) return true;
      const temp = tempName(file);
      await writeFile(temp, after, { mode: 0o644, flag: 'wx' });
      const current = await this.readApprovalText(id);
      if (current.kind === 'ok' && current.text === before.text) {
        // Synchronous, so that the watcher's event for this rename cannot be handled before the
        // stamp is recorded: it must find the echo of this write (isOwnWrite), not a human's save.
        renameSync(temp, file);
        this.#written.set(id, stampFile(file));
        return true;
      }
      await unlink(temp).catch(() => undefined);
    }
    throw new GateError('FILE_BUSY', `${id}.md kept changing while the server tried to update it.`);
  }

  /**
   * True when the approval file is, by one lstat, the one this store last wrote: a file-system event
   * for it is the echo of our own write, not a human's save (whose save brings new times or a new
   * inode). Never true for a file this store has not written.
   */
  isOwnWrite(id: string): boolean {
    const written = this.#written.get(id);
    return written !== undefined && sameStamp(written, stampFile(this.filePath(id)));
  }
}
