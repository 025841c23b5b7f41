import { parse, type ParseResult } from 'libpg-query';
import { GateError } from '../errors.js';

/**
 * Statement analysis with the real Postgres grammar (libpg-query), never regexes: dollar-quoted
 * bodies, comments and string literals containing `;` are split exactly as Postgres would.
 */

export interface AnalysedStatement {
  /** 0-based position in the migration. */
  readonly index: number;
  /** The parse-tree node name, e.g. `AlterTableStmt`, `IndexStmt`. */
  readonly kind: string;
  /** The statement's text exactly as submitted (without its terminating semicolon). */
  readonly text: string;
  /** Character offset of `text` within the whole SQL, for mapping error positions. */
  readonly offset: number;
  /** Relations the statement names, schema-qualified when the SQL qualifies them. */
  readonly relations: readonly string[];
  /** False for statements Postgres refuses inside a transaction block. */
  readonly transactional: boolean;
  /** The statement's parse tree (the node under `kind`), for risk analysis. */
  readonly node: Readonly<Record<string, unknown>>;
}

export interface Analysis {
  readonly statements: readonly AnalysedStatement[];
}

type Node = Record<string, unknown>;

function isNode(value: unknown): value is Node {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function defElemNames(options: unknown): string[] {
  if (!Array.isArray(options)) return [];
  return options
    .map((option) => (isNode(option) && isNode(option.DefElem) ? option.DefElem.defname : undefined))
    .filter((name): name is string => typeof name === 'string');
}

/**
 * Statements that cannot run inside a transaction block. `kind` is the node name and `body` the node.
 * Source: the Postgres docs for each command ("cannot be executed inside a transaction block").
 */
function isNonTransactional(kind: string, body: Node): boolean {
  switch (kind) {
    case 'IndexStmt':
      return body.concurrent === true;
    case 'DropStmt':
      return body.concurrent === true;
    case 'ReindexStmt':
      return (
        defElemNames(body.params).includes('concurrently') ||
        body.kind === 'REINDEX_OBJECT_SYSTEM' ||
        body.kind === 'REINDEX_OBJECT_DATABASE'
      );
    case 'VacuumStmt':
      // VACUUM cannot run in a transaction; ANALYZE alone can.
      return body.is_vacuumcmd === true;
    case 'CreatedbStmt':
    case 'DropdbStmt':
    case 'AlterSystemStmt':
    case 'CreateTableSpaceStmt':
    case 'DropTableSpaceStmt':
    case 'CreateSubscriptionStmt':
    case 'AlterSubscriptionStmt':
    case 'DropSubscriptionStmt':
      return true;
    case 'ClusterStmt':
      // CLUSTER without a table name re-clusters every table and cannot run in a transaction.
      return body.relation === undefined;
    default:
      return false;
  }
}

function collectRelations(node: unknown, into: Set<string>): void {
  if (Array.isArray(node)) {
    for (const item of node) collectRelations(item, into);
    return;
  }
  if (!isNode(node)) return;
  for (const [key, value] of Object.entries(node)) {
    if (key === 'RangeVar' && isNode(value) && typeof value.relname === 'string') {
      into.add(typeof value.schemaname === 'string' ? `${value.schemaname}.${value.relname}` : value.relname);
    } else if (
      (key === 'relation' || key === 'table') &&
      isNode(value) &&
      typeof value.relname === 'string'
    ) {
      // Some nodes embed a RangeVar without the wrapper (AlterTableStmt.relation, IndexStmt.relation).
      into.add(typeof value.schemaname === 'string' ? `${value.schemaname}.${value.relname}` : value.relname);
    } else {
      collectRelations(value, into);
    }
  }
}

const DROPPED_RELATION_TYPES = new Set([
  'OBJECT_TABLE',
  'OBJECT_VIEW',
  'OBJECT_MATVIEW',
  'OBJECT_FOREIGN_TABLE',
]);

/** DROP TABLE names its tables as string lists, not RangeVars. */
function droppedRelations(kind: string, body: Node): string[] {
  if (
    kind !== 'DropStmt' ||
    typeof body.removeType !== 'string' ||
    !DROPPED_RELATION_TYPES.has(body.removeType)
  ) {
    return [];
  }
  const objects = Array.isArray(body.objects) ? body.objects : [];
  return objects
    .map((object: unknown) => {
      const items =
        isNode(object) && isNode(object.List) && Array.isArray(object.List.items) ? object.List.items : [];
      return items
        .map((item: unknown) => (isNode(item) && isNode(item.String) ? item.String.sval : undefined))
        .filter((part): part is string => typeof part === 'string')
        .join('.');
    })
    .filter((name) => name.length > 0);
}

/** Every relation the statements name, once each, in order of appearance. */
export function relationsOf(statements: readonly Pick<AnalysedStatement, 'relations'>[]): string[] {
  return [...new Set(statements.flatMap((statement) => statement.relations))];
}

/** Converts a byte offset in `sql`'s UTF-8 encoding to a JavaScript string offset. */
function charOffset(utf8: Buffer, byteOffset: number): number {
  return utf8.subarray(0, byteOffset).toString('utf8').length;
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
  try {
    tree = await parse(sql);
  } catch (error) {
    const details = (error as { sqlDetails?: { message: string; cursorPosition: number } }).sqlDetails;
    const message = details?.message ?? (error instanceof Error ? error.message : String(error));
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
  const utf8 = Buffer.from(sql, 'utf8');
  const statements: AnalysedStatement[] = [];
  for (const [index, raw] of (tree.stmts ?? []).entries()) {
    const node = raw.stmt as Node | undefined;
    if (!node) continue;
    const [kind, body] = Object.entries(node)[0] as [string, Node];
    const startByte = raw.stmt_location ?? 0;
    const endByte = raw.stmt_len === undefined || raw.stmt_len === 0 ? utf8.length : startByte + raw.stmt_len;
    const offset = charOffset(utf8, startByte);
    const text = utf8.subarray(startByte, endByte).toString('utf8');
    const relations = new Set<string>();
    collectRelations(body, relations);
    for (const name of droppedRelations(kind, body)) relations.add(name);
    statements.push({
      index,
      kind,
      text,
      offset,
      relations: [...relations],
      transactional: !isNonTransactional(kind, body),
      node: body,
    });
  }
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
 * the migration runs in, and a dry run cannot roll back statements that run outside a transaction.
 */
export function assertExecutable(analysis: Analysis, options: { dryRun: boolean }): void {
  for (const statement of analysis.statements) {
    if (statement.kind === 'TransactionStmt') {
      throw new GateError(
        'SQL_TRANSACTION_CONTROL',
        `Statement ${statement.index + 1} controls transactions (BEGIN/COMMIT/ROLLBACK/SAVEPOINT). ` +
          'The gate manages transactions itself; remove it and resubmit.',
        { context: { statement: statement.index + 1 } },
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
