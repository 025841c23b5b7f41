import type { Config } from '../config.js';
import { openDatabase, type Database } from '../db/index.js';
import { GateError } from '../errors.js';
import type { Logger } from '../log.js';
import { Executor } from '../migration/execute.js';

export interface Target {
  readonly database: Database;
  readonly executor: Executor;
}

/** The configured databases, each opened on first use with its executor, and closed together. */
export class Targets {
  readonly #config: Config;
  readonly #env: NodeJS.ProcessEnv;
  readonly #log: Logger;
  readonly #installation: string;
  readonly #open = new Map<string, Target>();

  constructor(config: Config, options: { env: NodeJS.ProcessEnv; log: Logger; installation: string }) {
    this.#config = config;
    this.#env = options.env;
    this.#log = options.log;
    this.#installation = options.installation;
  }

  get(database: string): Target {
    let target = this.#open.get(database);
    if (!target) {
      const databaseConfig = this.#config.databases[database];
      if (!databaseConfig)
        throw new GateError('DATABASE_UNKNOWN', `Database "${database}" is not configured.`);
      const opened = openDatabase(database, databaseConfig, this.#env, this.#log);
      const executor = this.#config.executor;
      target = {
        database: opened,
        executor: new Executor(opened, {
          ledgerSchema: this.#config.ledger_schema,
          installation: this.#installation,
          lockTimeoutMs: executor.lock_timeout_ms,
          statementTimeoutMs: executor.statement_timeout_ms,
          lockRetry: {
            retries: executor.lock_retries,
            initialDelayMs: executor.retry_delay_ms,
            maxDelayMs: executor.max_retry_delay_ms,
          },
        }),
      };
      this.#open.set(database, target);
    }
    return target;
  }

  async close(): Promise<void> {
    const open = [...this.#open.values()];
    this.#open.clear();
    await Promise.all(open.map((target) => target.database.close()));
  }
}
