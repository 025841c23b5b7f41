import { describeError, GateError } from '../errors.js';

/**
 * Whether anything of a job may have reached the database. 'nothing': certain, the job may be
 * reported as not executed (and run again later). 'maybe': a statement outside a transaction was
 * sent, or COMMIT was sent and its answer lost: only the database can tell, and the job is never
 * run again by the gate.
 */
export type Sent = 'nothing' | 'maybe';

/**
 * The one error `Executor.run` rejects with: the job ended without a result. The executor decides
 * `sent` from how far it got, never from an error code. `code`, `message` and `context` are those
 * of the underlying GateError (`cause`), so callers can still wait out DATABASE_UNREACHABLE and
 * LEDGER_UNAVAILABLE, which are always 'nothing'.
 */
export class ExecutionAborted extends GateError {
  readonly sent: Sent;

  constructor(sent: Sent, cause: GateError) {
    super(cause.code, cause.message, { cause, context: { ...cause.context } });
    this.name = 'ExecutionAborted';
    this.sent = sent;
  }

  /** Wraps whatever stopped a run; an error without a code gets one that says what `sent` means. */
  static of(error: unknown, sent: Sent, approvalId: string): ExecutionAborted {
    if (error instanceof ExecutionAborted) return error;
    if (error instanceof GateError) return new ExecutionAborted(sent, error);
    const cause =
      sent === 'nothing'
        ? new GateError(
            'EXECUTION_NOT_STARTED',
            `The execution stopped before any statement of the migration was sent (${describeError(error)}); nothing changed.`,
            { cause: error, context: { approvalId } },
          )
        : new GateError(
            'EXECUTION_OUTCOME_UNKNOWN',
            `The connection failed while the migration ran outside a transaction (${describeError(error)}): ` +
              'whether the statement in flight took effect is unknown, and it will NOT be retried. Check the database by hand.',
            { cause: error, context: { approvalId } },
          );
    return new ExecutionAborted(sent, cause);
  }
}

/**
 * SQLSTATE classes by which the server reports a broken session (08 connection exception, 57
 * operator intervention such as pg_terminate_backend, 58 system error, 53 insufficient resources,
 * XX internal error): such an answer to COMMIT may come after the commit was made durable.
 */
const UNCERTAIN_CLASSES = new Set(['08', '53', '57', '58', 'XX']);

/**
 * What a failed COMMIT means. Any other error the server answers COMMIT with (a deferred
 * constraint, a serialization failure) means it rolled the transaction back: 'nothing'. No answer,
 * or one of the classes above: 'maybe'.
 */
export function sentByFailedCommit(error: unknown): Sent {
  const code = typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined;
  if (typeof code !== 'string' || !/^[0-9A-Z]{5}$/.test(code)) return 'maybe';
  return UNCERTAIN_CLASSES.has(code.slice(0, 2)) ? 'maybe' : 'nothing';
}
