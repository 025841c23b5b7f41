import { Console } from 'node:console';
import { createRequire } from 'node:module';
import type { Logger } from 'pino';

export type { Logger };

/**
 * pino, loaded with the first logger (it is CommonJS, so `require` keeps createLogger synchronous):
 * a stdio server answers `initialize` before it writes its first log line.
 */
const requirePino = (): typeof import('pino') =>
  createRequire(import.meta.url)('pino') as typeof import('pino');

/**
 * Structured logs, always to stderr: in stdio mode stdout is the MCP protocol channel. Connection
 * strings never reach a log line: configs name environment variables, and errors from drivers are
 * logged by message only.
 */
export function createLogger(level: string = process.env.APPROVAL_GATE_LOG_LEVEL ?? 'info'): Logger {
  const { pino } = requirePino();
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

/** The console methods that write to stdout, plus the ones sharing their state (timers, counters, groups). */
const STDOUT_CONSOLE_METHODS = [
  'log',
  'info',
  'debug',
  'warn',
  'dir',
  'dirxml',
  'table',
  'count',
  'countReset',
  'time',
  'timeEnd',
  'timeLog',
  'group',
  'groupCollapsed',
  'groupEnd',
] as const;

/**
 * Points every console method that would write to stdout at stderr instead. In stdio mode stdout is
 * the JSON-RPC channel, and any library printing with console.log (knex's default logger does, on a
 * failed connection) would corrupt it; the MCP transport writes to process.stdout directly.
 */
export function routeConsoleToStderr(): void {
  const toStderr = new Console({ stdout: process.stderr, stderr: process.stderr });
  for (const method of STDOUT_CONSOLE_METHODS) {
    // Node binds a Console's methods to their instance, so they can be lent to the global console.
    Object.assign(console, { [method]: toStderr[method] });
  }
}
