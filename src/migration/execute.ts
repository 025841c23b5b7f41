import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import { performance } from 'node:perf_hooks';
import type { Knex } from 'knex';
import { gateMigrationSource } from '../../migrations/index.js';
import { withSession, type SqlSession } from '../db.js';
import { GateError } from '../errors.js';
import { lineAndColumn, type AnalysedStatement } from './analyse.js';
import { ExecutionResult, type ExecutionError } from './result.js';

export interface MigrationJob {
  readonly approvalId: string;
  readonly requestHash: string;
  /** The whole SQL as approved, for mapping error positions to line and column. */
  readonly sql: string;
  readonly statements: readonly AnalysedStatement[];
  readonly dryRun: boolean;
}

export interface ExecutorOptions {
  readonly ledgerSchema: string;
  readonly lockTimeoutMs: number;
  readonly statementTimeoutMs: number;
  readonly instanceId?: string;
}

/** First key of every advisory lock this gate takes ('APRG'), so it cannot collide with others' locks. */
export const ADVISORY_LOCK_NAMESPACE = 0x41505247;

/** Second key: a stable 32-bit hash of the approval id. A collision only serialises two executions. */
export function advisoryLockKey(approvalId: string): number {
  return createHash('sha256').update(approvalId).digest().readInt32BE(0);
}

/** Statements whose row count means rows changed; for DDL drivers report 0 or null, which says nothing. */
const ROW_COUNTING_KINDS = new Set([
  'InsertStmt',
  'UpdateStmt',
  'DeleteStmt',
  'MergeStmt',
  'CreateTableAsStmt',
]);

interface PgErrorFields {
  code?: string;
  message?: string;
  detail?: string;
  hint?: string;
  position?: string | number;
}

function toExecutionError(error: unknown, statement: AnalysedStatement, sql: string): ExecutionError {
  const fields = (typeof error === 'object' && error !== null ? error : {}) as PgErrorFields;
  const message = fields.message ?? String(error);
  let where: { line: number; column: number } | null = null;
  const position = Number(fields.position);
  if (Number.isInteger(position) && position > 0) {
    where = lineAndColumn(sql, statement.offset + position - 1);
  }
  return {
    sqlstate: typeof fields.code === 'string' && /^[0-9A-Z]{5}$/.test(fields.code) ? fields.code : null,
    message,
    detail: fields.detail ?? null,
    hint: fields.hint ?? null,
    statement: statement.index + 1,
    line: where?.line ?? lineAndColumn(sql, statement.offset).line,
    column: where?.column ?? null,
  };
}

/**
 * Runs approved migrations. Every run happens in one transaction that also takes an advisory lock on
 * the approval id and inserts the ledger row, so "executed" and "recorded as executed" commit together
 * and a second instance (or a second call) finds the row instead of running the SQL again.
 */
export class Executor {
  readonly #knex: Knex;
  readonly #options: ExecutorOptions;
  readonly #instanceId: string;
  #prepared: Promise<void> | null = null;

  constructor(knex: Knex, options: ExecutorOptions) {
    this.#knex = knex;
    this.#options = options;
    this.#instanceId = options.instanceId ?? `${hostname()}:${process.pid}`;
  }

  get #ledger(): string {
    return `"${this.#options.ledgerSchema}".ledger`;
  }

  /** Creates or upgrades the gate's own tables (migrations/), once per process. */
  prepare(): Promise<void> {
    const schema = this.#options.ledgerSchema;
    this.#prepared ??= this.#knex.schema
      .createSchemaIfNotExists(schema)
      .then(() =>
        this.#knex.migrate.latest({
          migrationSource: gateMigrationSource(schema),
          schemaName: schema,
          tableName: 'knex_migrations',
        }),
      )
      .then(() => undefined)
      .catch((error: unknown) => {
        this.#prepared = null;
        throw new GateError(
          'LEDGER_UNAVAILABLE',
          `Cannot create the gate's ledger in schema "${this.#options.ledgerSchema}": ${error instanceof Error ? error.message : String(error)}`,
          { cause: error },
        );
      });
    return this.#prepared;
  }

  /**
   * The recorded result for an approval, or null when it never reached the executor. Throws
   * LEDGER_CONFLICT when the ledger holds the id for a different request.
   */
  async lookup(approvalId: string, requestHash: string): Promise<ExecutionResult | null> {
    await this.prepare();
    return withSession(this.#knex, (session) => this.#readLedger(session, approvalId, requestHash));
  }

  async #readLedger(
    session: SqlSession,
    approvalId: string,
    requestHash: string,
  ): Promise<ExecutionResult | null> {
    const { rows } = await session.query(`select * from ${this.#ledger} where approval_id = $1`, [
      approvalId,
    ]);
    const row = rows[0];
    if (!row) return null;
    if (row.request_hash !== requestHash) {
      throw new GateError(
        'LEDGER_CONFLICT',
        `The ledger already holds ${approvalId} for a different request. Two gate installations share ` +
          `the ledger schema "${this.#options.ledgerSchema}" on this database; give each its own ledger_schema. Nothing was executed.`,
        { context: { approvalId } },
      );
    }
    const iso = (value: unknown) => (value instanceof Date ? value.toISOString() : String(value));
    return ExecutionResult.parse({
      state: row.state,
      dry_run: row.dry_run,
      started_at: iso(row.started_at),
      finished_at: iso(row.finished_at),
      duration_ms: Number(row.duration_ms),
      rows_affected: row.rows_affected === null ? null : Number(row.rows_affected),
      statements: typeof row.statements === 'string' ? JSON.parse(row.statements) : row.statements,
      error: typeof row.error === 'string' ? JSON.parse(row.error) : row.error,
      executed_by: row.executed_by,
    });
  }

  /**
   * Runs `job` at most once. Returns the result recorded in the ledger: this run's, or an earlier
   * one's if the approval was already executed (by this or another instance).
   */
  async run(job: MigrationJob): Promise<ExecutionResult> {
    await this.prepare();
    return withSession(this.#knex, async (session) => {
      await session.query('begin');
      try {
        const result = await this.#runInTransaction(session, job);
        await session.query('commit');
        return result;
      } catch (error) {
        await session.query('rollback').catch(() => undefined);
        throw error;
      }
    });
  }

  async #runInTransaction(session: SqlSession, job: MigrationJob): Promise<ExecutionResult> {
    // Waits while another instance runs the same approval; its commit makes the ledger row visible.
    await session.query('select pg_advisory_xact_lock($1, $2)', [
      ADVISORY_LOCK_NAMESPACE,
      advisoryLockKey(job.approvalId),
    ]);
    const earlier = await this.#readLedger(session, job.approvalId, job.requestHash);
    if (earlier) return earlier;

    const startedAt = new Date();
    const start = performance.now();
    await session.query('savepoint gate_migration');
    // Local to the savepoint: they bind the migration's statements, and roll back with them.
    await session.query(
      `select set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true)`,
      [`${this.#options.lockTimeoutMs}ms`, `${this.#options.statementTimeoutMs}ms`],
    );
    const statements: { statement: number; kind: string; rows_affected: number | null }[] = [];
    let error: ExecutionError | null = null;
    for (const statement of job.statements) {
      try {
        const { rowCount } = await session.query(statement.text);
        statements.push({
          statement: statement.index + 1,
          kind: statement.kind,
          rows_affected: ROW_COUNTING_KINDS.has(statement.kind) ? rowCount : null,
        });
      } catch (caught) {
        error = toExecutionError(caught, statement, job.sql);
        break;
      }
    }
    if (error !== null || job.dryRun) {
      await session.query('rollback to savepoint gate_migration');
    } else {
      await session.query('release savepoint gate_migration');
    }
    const finishedAt = new Date();
    const counted = statements.map((s) => s.rows_affected).filter((n): n is number => n !== null);
    const result: ExecutionResult = {
      state: error !== null ? 'failed' : job.dryRun ? 'rolled_back' : 'succeeded',
      dry_run: job.dryRun,
      started_at: startedAt.toISOString(),
      finished_at: finishedAt.toISOString(),
      duration_ms: Math.round(performance.now() - start),
      rows_affected: counted.length > 0 ? counted.reduce((a, b) => a + b, 0) : null,
      statements,
      error,
      executed_by: this.#instanceId,
    };
    await session.query(
      `insert into ${this.#ledger}
         (approval_id, request_hash, state, dry_run, attempts, started_at, finished_at, duration_ms,
          rows_affected, statements, error, executed_by)
       values ($1, $2, $3, $4, 1, $5, $6, $7, $8, $9, $10, $11)`,
      [
        job.approvalId,
        job.requestHash,
        result.state,
        result.dry_run,
        result.started_at,
        result.finished_at,
        result.duration_ms,
        result.rows_affected,
        JSON.stringify(result.statements),
        result.error === null ? null : JSON.stringify(result.error),
        result.executed_by,
      ],
    );
    return result;
  }
}
