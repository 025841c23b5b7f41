import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * Structured logs, always to stderr: in stdio mode stdout is the MCP protocol channel. Connection
 * strings never reach a log line: configs name environment variables, and errors from drivers are
 * logged by message only.
 */
export function createLogger(level: string = process.env.APPROVAL_GATE_LOG_LEVEL ?? 'info'): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      redact: {
        paths: ['connectionString', '*.connectionString', 'password', '*.password'],
        censor: '[redacted]',
      },
    },
    pino.destination({ dest: 2, sync: true }),
  );
}

/** A logger that drops everything, for tests that do not look at logs. */
export const silentLogger: Logger = pino({ level: 'silent' });
