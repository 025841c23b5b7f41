import type { ParseResult } from 'libpg-query';
import { describeError, GateError } from '../errors.js';
import { loadParser, statementsOfTree, type AnalysedStatement } from './parse-tree.js';
import { executedSites } from './nested-code.js';
import { refusalOf } from './refusals.js';

export type { AnalysedStatement } from './parse-tree.js';

/**
 * Statement analysis with the real Postgres grammar (libpg-query), never regexes: dollar-quoted
 * bodies, comments and string literals containing `;` are split exactly as Postgres would.
 */

export interface Analysis {
  readonly statements: readonly AnalysedStatement[];
}

/** Every relation the statements name, once each, in order of appearance. */
export function relationsOf(statements: readonly Pick<AnalysedStatement, 'relations'>[]): string[] {
  return [...new Set(statements.flatMap((statement) => statement.relations))];
}

/** 1-based line and column of a 0-based character offset. */
export function lineAndColumn(sql: string, offset: number): { line: number; column: number } {
  const before = sql.slice(0, offset);
  const lines = before.split('\n');
  return { line: lines.length, column: (lines.at(-1)?.length ?? 0) + 1 };
}

/**
 * Splits and classifies `sql`. Throws GateError SQL_PARSE_ERROR (with line and column) when Postgres'
 * grammar rejects it, SQL_EMPTY when it holds no statement.
 */
export async function analyseSql(sql: string): Promise<Analysis> {
  let tree: ParseResult;
  // Loaded on the first analysis, not at start. Nested SQL (DO blocks, function bodies) is parsed
  // later with the synchronous API, which needs it loaded.
  const parser = await loadParser();
  try {
    tree = await parser.parse(sql);
  } catch (error) {
    const details = (error as { sqlDetails?: { message: string; cursorPosition: number } }).sqlDetails;
    const message = details?.message ?? describeError(error);
    if (details) {
      const { line, column } = lineAndColumn(sql, details.cursorPosition);
      throw new GateError(
        'SQL_PARSE_ERROR',
        `Postgres' parser rejects the SQL: ${message} (line ${line}, column ${column}). Nothing was written or executed.`,
        { context: { line, column } },
      );
    }
    throw new GateError(
      'SQL_PARSE_ERROR',
      `Postgres' parser rejects the SQL: ${message}. Nothing was written or executed.`,
    );
  }
  const statements = statementsOfTree(tree, sql);
  if (statements.length === 0) {
    throw new GateError(
      'SQL_EMPTY',
      'The SQL holds no statement (only whitespace or comments). Nothing was written.',
    );
  }
  return { statements };
}

/** True when every statement can run inside one transaction (the all-or-nothing path). */
export function isTransactional(analysis: Analysis): boolean {
  return analysis.statements.every((statement) => statement.transactional);
}

/**
 * Refuses what this executor cannot run honestly: transaction control would break the transaction
 * the migration runs in; a dry run cannot roll back statements that run outside a transaction; SQL
 * that changes how the rest is read, resets the gate's session, loads a library, needs a data stream,
 * or touches the gate's own schemas (`gateSchemas`: the ledger and backup schemas). Statements nested
 * in DO blocks and in functions the migration creates and calls are checked too.
 */
export function assertExecutable(
  analysis: Analysis,
  options: { readonly dryRun: boolean; readonly gateSchemas: readonly string[] },
): void {
  for (const site of executedSites(analysis.statements)) {
    if (site.type !== 'statement') continue;
    const { statement } = site;
    const number = statement.index + 1;
    const where = site.via.length === 0 ? '' : ` (${site.via.join(', ')})`;
    if (statement.kind === 'TransactionStmt') {
      throw new GateError(
        'SQL_TRANSACTION_CONTROL',
        `Statement ${number}${where} controls transactions (BEGIN/COMMIT/ROLLBACK/SAVEPOINT). ` +
          'The gate manages transactions itself; remove it and resubmit.',
        { context: { statement: number } },
      );
    }
    const refusal = refusalOf(statement, options.gateSchemas);
    if (refusal) {
      throw new GateError(
        refusal.code,
        `Statement ${number}${where} ${refusal.reason} Nothing was written.`,
        { context: { statement: number } },
      );
    }
  }
  if (options.dryRun && !isTransactional(analysis)) {
    const statement = analysis.statements.find((s) => !s.transactional);
    throw new GateError(
      'DRY_RUN_IMPOSSIBLE',
      `Statement ${(statement?.index ?? 0) + 1} (${statement?.kind ?? ''}) cannot run inside a transaction, so a dry run ` +
        'could not roll it back. Nothing was written; submit without dry_run, or rehearse on a copy of the database.',
    );
  }
}
