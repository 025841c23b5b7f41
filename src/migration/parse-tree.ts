import type * as PgQuery from 'libpg-query';
import type { ParseResult } from 'libpg-query';

/**
 * Turning a libpg-query parse result into analysed statements. Shared by the top-level analysis and by
 * the analysis of SQL nested in DO blocks and function bodies, so both see statements the same way.
 * Also the small readers of parse-tree nodes (`child`, `list`, `visitNodes`, …) every analysis uses.
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

/** The parser module once `loadParser` has loaded it (its WebAssembly included), else null. */
let loaded: typeof PgQuery | null = null;
let loading: Promise<typeof PgQuery> | null = null;

/**
 * Loads libpg-query and its WebAssembly module, once, on the first analysis: the server and the CLI
 * start without the parser (it costs tens of ms and several MB), and most commands never need it.
 */
export function loadParser(): Promise<typeof PgQuery> {
  loading ??= import('libpg-query')
    .then(async (module) => {
      await module.loadModule();
      loaded = module;
      return module;
    })
    .catch((error: unknown) => {
      // A failed load is not remembered: the next analysis tries again.
      loading = null;
      throw error;
    });
  return loading;
}

/**
 * The parser for the synchronous API (nested SQL, PL/pgSQL bodies, tokens). Statements only come
 * from `analyseSql`, which loads it first; reaching this before is a programming error.
 */
export function loadedParser(): typeof PgQuery {
  if (loaded === null) throw new Error('The SQL parser is used before analyseSql loaded it.');
  return loaded;
}

export type Node = Readonly<Record<string, unknown>>;

export function isNode(value: unknown): value is Node {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function child(node: unknown, key: string): Node | null {
  return isNode(node) && isNode(node[key]) ? node[key] : null;
}

export function list(node: unknown, key: string): unknown[] {
  return isNode(node) && Array.isArray(node[key]) ? node[key] : [];
}

export function stringsOf(items: readonly unknown[]): string[] {
  return items
    .map((item) => child(item, 'String')?.sval)
    .filter((name): name is string => typeof name === 'string');
}

/**
 * Visits every wrapped node (`{ FuncCall: {...} }` is visited as key `FuncCall`) and every embedded
 * node (`CallStmt.funccall`), depth first in document order. Iterative: a hostile tree may be deep.
 * Returning 'skip' leaves that node's children unvisited.
 */
export function visitNodes(tree: unknown, visit: (key: string, value: Node) => 'skip' | undefined): void {
  const stack: unknown[] = [tree];
  while (stack.length > 0) {
    const current = stack.pop();
    if (Array.isArray(current)) {
      for (let i = current.length - 1; i >= 0; i -= 1) stack.push(current[i]);
      continue;
    }
    if (!isNode(current)) continue;
    const children: unknown[] = [];
    for (const [key, value] of Object.entries(current)) {
      if (isNode(value)) {
        if (visit(key, value) !== 'skip') children.push(value);
      } else if (Array.isArray(value)) {
        children.push(value);
      }
    }
    for (let i = children.length - 1; i >= 0; i -= 1) stack.push(children[i]);
  }
}

export function defElem(options: readonly unknown[], name: string): Node | null {
  for (const option of options) {
    const element = child(option, 'DefElem');
    if (element?.defname === name) return element;
  }
  return null;
}

/** A string constant, seen through casts ('lock_timeout'::text); null when not a constant. */
export function stringConstant(expression: unknown): string | null {
  const cast = child(expression, 'TypeCast');
  if (cast) return stringConstant(cast.arg);
  const value = child(child(expression, 'A_Const'), 'sval')?.sval;
  return typeof value === 'string' ? value : null;
}

/**
 * A boolean option as Postgres' defGetBoolean reads it: present without a value means on; `false`,
 * `off` and 0 mean off. Postgres rejects any other value, so reading it as on changes nothing.
 */
function optionIsOn(options: readonly unknown[], name: string): boolean {
  const element = defElem(options, name);
  if (element === null) return false;
  const integer = child(element.arg, 'Integer');
  // libpg-query leaves out a zero ival.
  if (integer) return typeof integer.ival === 'number' && integer.ival !== 0;
  const text = child(element.arg, 'String')?.sval;
  return typeof text !== 'string' || !['false', 'off'].includes(text.toLowerCase());
}

/** REINDEX forms that process many tables, each in a transaction of its own. */
const REINDEX_MANY = new Set(['REINDEX_OBJECT_SCHEMA', 'REINDEX_OBJECT_SYSTEM', 'REINDEX_OBJECT_DATABASE']);

/** `{ IndexStmt: {...} }`: the wrapped statement is refused in a transaction block. */
function isNonTransactionalNode(raw: unknown): boolean {
  const entry = isNode(raw) ? Object.entries(raw)[0] : undefined;
  return entry !== undefined && isNode(entry[1]) && isNonTransactional(entry[0], entry[1]);
}

/**
 * Statements Postgres refuses inside a transaction block (SQLSTATE 25001). `kind` is the node name and
 * `body` the node. Source: the calls of PreventInTransactionBlock in PostgreSQL 15 (REL_15_STABLE's
 * src/backend/tcop/utility.c and commands/indexcmds.c, dbcommands.c, vacuum.c, cluster.c, discard.c,
 * subscriptioncmds.c), each checked against the real server by test/migration/transactional.test.ts.
 * Subscriptions count as refused even in the forms Postgres accepts, which only costs atomicity. Not
 * seen here, since it depends on the catalog rather than the text: CLUSTER, REINDEX TABLE and REINDEX
 * INDEX are refused too when they name a partitioned table or index.
 */
function isNonTransactional(kind: string, body: Node): boolean {
  switch (kind) {
    case 'IndexStmt':
    case 'DropStmt':
      // CREATE INDEX CONCURRENTLY, DROP INDEX CONCURRENTLY.
      return body.concurrent === true;
    case 'AlterTableStmt':
      return list(body, 'cmds').some((item) => {
        const command = child(item, 'AlterTableCmd');
        return (
          command?.subtype === 'AT_DetachPartition' && child(command.def, 'PartitionCmd')?.concurrent === true
        );
      });
    case 'ReindexStmt':
      return (
        optionIsOn(list(body, 'params'), 'concurrently') ||
        (typeof body.kind === 'string' && REINDEX_MANY.has(body.kind))
      );
    case 'VacuumStmt':
      // VACUUM in any form; ANALYZE alone can run in a transaction.
      return body.is_vacuumcmd === true;
    case 'ClusterStmt':
      // Without a table it re-clusters every clustered table, each in a transaction of its own.
      return body.relation === undefined;
    case 'AlterDatabaseStmt':
      // SET TABLESPACE moves the database's files; CONNECTION LIMIT and the like only update the catalog.
      return defElem(list(body, 'options'), 'tablespace') !== null;
    case 'DiscardStmt':
      return body.target === 'DISCARD_ALL';
    case 'TransactionStmt':
      return body.kind === 'TRANS_STMT_COMMIT_PREPARED' || body.kind === 'TRANS_STMT_ROLLBACK_PREPARED';
    case 'CreateSchemaStmt':
      // Its elements run as parts of it: a CREATE INDEX CONCURRENTLY among them is refused.
      return list(body, 'schemaElts').some(isNonTransactionalNode);
    case 'CreatedbStmt':
    case 'DropdbStmt':
    case 'AlterSystemStmt':
    case 'CreateTableSpaceStmt':
    case 'DropTableSpaceStmt':
      return true;
    case 'CreateSubscriptionStmt':
    case 'AlterSubscriptionStmt':
    case 'DropSubscriptionStmt':
      // Refused only when they create, drop or refresh from a replication slot, which depends on
      // options and on the subscription in the catalog. Postgres never refuses one outside a
      // transaction block; it always refuses a wrapped one that needs the slot.
      return true;
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
  return list(body, 'objects')
    .map((object) => stringsOf(list(child(object, 'List'), 'items')).join('.'))
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
  return statementsOfTree(loadedParser().parseSync(sql), sql, index);
}
