/**
 * Errors are values with a stable `code` (for agents, scripts and tests) and a sentence a human can
 * act on. `context` carries where it happened (approval id, stage) without ever carrying secrets.
 */
export class GateError extends Error {
  readonly code: string;
  readonly context: Readonly<Record<string, string | number | boolean | null>>;

  constructor(
    code: string,
    message: string,
    options: { cause?: unknown; context?: Record<string, string | number | boolean | null> } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'GateError';
    this.code = code;
    this.context = options.context ?? {};
  }
}

export function isGateError(error: unknown): error is GateError {
  return error instanceof GateError;
}

/** A one-line description of any thrown value, for logs and results. */
export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
