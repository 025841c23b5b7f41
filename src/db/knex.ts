import { inspect } from 'node:util';
import type { Knex } from 'knex';
import { createLogger, type Logger } from '../log.js';

let defaultKnexLog: Logger | undefined;

/**
 * knex's own logger prints warnings (a failed connection, with its stack) with console.log, i.e. to
 * stdout: the MCP protocol channel in stdio mode, and the data of `approvals show --json`. Every knex
 * instance logs through pino to stderr instead.
 */
function knexLog(log?: Logger): Knex.Logger {
  defaultKnexLog ??= createLogger();
  const logger = (log ?? defaultKnexLog).child({ component: 'knex' });
  const text = (message: unknown) => (typeof message === 'string' ? message : inspect(message, { depth: 5 }));
  return {
    warn: (message: unknown) => logger.warn(text(message)),
    error: (message: unknown) => logger.error(text(message)),
    debug: (message: unknown) => logger.debug(text(message)),
    deprecate: (method: string, alternative: string) =>
      logger.warn(`${method} is deprecated, please use ${alternative}`),
  };
}

/**
 * Runs `work` with a knex instance made from `config` and destroys it afterwards. knex is loaded on
 * first use: only the gate's own migrations need it, once per process.
 */
export async function withKnexInstance<T>(
  config: Knex.Config,
  log: Logger | undefined,
  work: (knex: Knex) => Promise<T>,
): Promise<T> {
  const { default: knexFactory } = await import('knex');
  const knex = knexFactory({ ...config, log: knexLog(log) });
  try {
    return await work(knex);
  } finally {
    await knex.destroy();
  }
}
