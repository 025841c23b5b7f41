import { parseSync, type ParseResult } from 'libpg-query';

/**
 * Turning a libpg-query parse result into analysed statements. Shared by the top-level analysis and by
 * the analysis of SQL nested in DO blocks and function bodies, so both see statements the same way.
 */

export interface AnalysedStatement {
  /** 0-based position in the migration; for nested SQL, the top-level statement that runs it. */
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

export type Node = Readonly<Record<string, unknown>>;

export function isNode(value: unknown): value is Node {
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

/** Converts a byte offset in `sql`'s UTF-8 encoding to a JavaScript string offset. */
function charOffset(utf8: Buffer, byteOffset: number): number {
  return utf8.subarray(0, byteOffset).toString('utf8').length;
}

/** An analysed statement from one raw statement node (`{ SelectStmt: {...} }`). */
export function statementOfNode(
  raw: unknown,
  position: { readonly index: number; readonly text: string; readonly offset: number },
): AnalysedStatement | null {
  if (!isNode(raw)) return null;
  const entry = Object.entries(raw)[0];
  if (!entry || !isNode(entry[1])) return null;
  const [kind, body] = entry as [string, Node];
  const relations = new Set<string>();
  collectRelations(body, relations);
  for (const name of droppedRelations(kind, body)) relations.add(name);
  return {
    index: position.index,
    kind,
    text: position.text,
    offset: position.offset,
    relations: [...relations],
    transactional: !isNonTransactional(kind, body),
    node: body,
  };
}

/**
 * The statements of a parse result. `index` of each is its position, or `fixedIndex` for nested SQL
 * (whose findings belong to the top-level statement that runs it).
 */
export function statementsOfTree(tree: ParseResult, sql: string, fixedIndex?: number): AnalysedStatement[] {
  const utf8 = Buffer.from(sql, 'utf8');
  const statements: AnalysedStatement[] = [];
  for (const [position, raw] of (tree.stmts ?? []).entries()) {
    const startByte = raw.stmt_location ?? 0;
    const endByte = raw.stmt_len === undefined || raw.stmt_len === 0 ? utf8.length : startByte + raw.stmt_len;
    const statement = statementOfNode(raw.stmt, {
      index: fixedIndex ?? position,
      text: utf8.subarray(startByte, endByte).toString('utf8'),
      offset: charOffset(utf8, startByte),
    });
    if (statement) statements.push(statement);
  }
  return statements;
}

/**
 * Parses SQL nested in another statement (a DO block, a function body). Synchronous: the parser's WASM
 * module is loaded by `analyseSql` before any nested SQL is met. Throws when the grammar rejects it.
 */
export function parseNestedSql(sql: string, index: number): AnalysedStatement[] {
  return statementsOfTree(parseSync(sql), sql, index);
}
