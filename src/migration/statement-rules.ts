import type { AnalysedStatement } from './analyse.js';
import { newTypeOf, typeChangeRewrites } from './column-types.js';
import type { LockMode } from './lock-modes.js';
import { child, isNode, list, stringConstant, stringsOf, visitNodes, type Node } from './parse-tree.js';
import type { RiskCode } from './risk-codes.js';
import { dottedName, rangeVarName, type SchemaFacts, type Volatility } from './schema-facts.js';

/**
 * What one statement does to a live database, from its parse tree, the catalog (SchemaFacts) and
 * what the statements before it in the same migration did (MigrationState): the locks it takes, the
 * work it does in proportion to a table's size (a scan, a rewrite, an index build) and the findings
 * that do not depend on locks (data lost, code broken, a statement that will fail). risks.ts then
 * judges each piece of work by the locks held while it runs, across the whole transaction.
 */

export type Severity = 'info' | 'warning' | 'danger';

/** Work whose duration grows with a table: it is only as harmful as the locks held while it runs. */
export interface Work {
  readonly relation: string;
  /** Verb phrase: "rewrites", "scans", "builds an index on". */
  readonly does: string;
}

export interface Candidate {
  readonly code: RiskCode;
  /** Fixed, or 'by lock': danger when a lock blocking the application is held during `work`. */
  readonly severity: Severity | 'by lock';
  readonly message: string;
  readonly safer: string | null;
  /** For 'by lock' candidates, the work judged. */
  readonly work?: Work;
}

export interface StatementEffect {
  readonly locks: readonly { readonly relation: string; readonly mode: LockMode }[];
  readonly candidates: readonly Candidate[];
  /** Work on several tables (TRUNCATE … CASCADE, an unqualified UPDATE): counts as long for the lock hold. */
  readonly long: readonly string[];
}

/** What earlier statements of the same migration changed, as far as later rules care. */
export interface MigrationState {
  /** Tables created earlier in this migration: no application uses them yet. */
  readonly created: Set<string>;
  /** Columns proven NOT NULL by a validated CHECK (col IS NOT NULL): SET NOT NULL skips its scan. */
  readonly provenNotNull: Map<string, Set<string>>;
  /** NOT VALID checks (catalog and this migration) by table and name, with the column they prove. */
  readonly unvalidatedChecks: Map<string, Map<string, string | null>>;
  /** TimeZone set by the migration; null until it sets one. */
  timeZone: string | null;
  /** Enum labels added earlier in this migration. */
  readonly addedEnumLabels: Set<string>;
  /** Old names of tables renamed earlier in this migration. */
  readonly renamedAway: Set<string>;
}

export function newMigrationState(): MigrationState {
  return {
    created: new Set(),
    provenNotNull: new Map(),
    unvalidatedChecks: new Map(),
    timeZone: null,
    addedEnumLabels: new Set(),
    renamedAway: new Set(),
  };
}

const SERIAL_TYPES = new Set(['serial', 'serial4', 'bigserial', 'serial8', 'smallserial', 'serial2']);

/** Without a catalog: functions known to differ per row. */
const VOLATILE_FUNCTIONS = new Set([
  'random',
  'gen_random_uuid',
  'uuid_generate_v1',
  'uuid_generate_v1mc',
  'uuid_generate_v4',
  'clock_timestamp',
  'timeofday',
  'nextval',
  'txid_current',
  'statement_timestamp',
]);

const STABLE_FUNCTIONS = new Set(['now', 'current_timestamp', 'transaction_timestamp', 'current_date']);

/**
 * How volatile an expression is: the most volatile function or operator it calls, from pg_proc when
 * the catalog was read (a function it does not know counts as volatile), else from the lists above.
 * Constants, casts of constants, arrays of them and SQL value functions (CURRENT_TIMESTAMP) are stable
 * at worst: Postgres evaluates such a default once, when the column is added.
 */
export function volatilityOf(
  expression: unknown,
  facts: SchemaFacts,
  withCatalog: boolean,
): Volatility | 'unknown' {
  let worst = 'immutable' as Volatility;
  let unknown = false;
  const raise = (level: Volatility | undefined) => {
    if (level === undefined) unknown = true;
    else if (
      ['immutable', 'stable', 'volatile'].indexOf(level) > ['immutable', 'stable', 'volatile'].indexOf(worst)
    )
      worst = level;
  };
  visitNodes({ expression }, (key, value) => {
    if (key === 'FuncCall') {
      const name = stringsOf(list(value, 'funcname')).at(-1)?.toLowerCase() ?? '';
      if (withCatalog) raise(facts.functionVolatility(name) ?? 'volatile');
      else if (VOLATILE_FUNCTIONS.has(name)) raise('volatile');
      else if (STABLE_FUNCTIONS.has(name)) raise('stable');
      else raise(undefined);
    } else if (key === 'A_Expr' && withCatalog) {
      const name = stringsOf(list(value, 'name')).at(-1);
      if (name) raise(facts.operatorVolatility(name) ?? 'volatile');
    } else if (key === 'SubLink') {
      unknown = true;
    }
    return undefined;
  });
  return worst === 'volatile' ? 'volatile' : unknown ? 'unknown' : worst;
}

/** The column a constraint expression proves NOT NULL (`col IS NOT NULL`), or null. */
function notNullColumnOf(expression: unknown): string | null {
  const test = child(expression, 'NullTest');
  if (!test || test.nulltesttype !== 'IS_NOT_NULL') return null;
  const fields = stringsOf(list(child(test.arg, 'ColumnRef'), 'fields'));
  return fields.length === 1 ? (fields[0] ?? null) : null;
}

/** The same from a catalog definition: `CHECK ((shipped_at IS NOT NULL))`. */
function notNullColumnOfDefinition(definition: string): string | null {
  const match = /^CHECK \(+"?([a-z_][a-z0-9_$]*)"? IS NOT NULL\)+( NOT VALID)?$/i.exec(definition.trim());
  return match?.[1] ?? null;
}

interface RuleContext {
  readonly statement: AnalysedStatement;
  /** Every statement of the migration, for rules that look ahead (a compatibility view, an enum label used). */
  readonly statements: readonly AnalysedStatement[];
  readonly facts: SchemaFacts;
  /** True when the catalog was read: unknown names are then known not to exist. */
  readonly withCatalog: boolean;
  readonly state: MigrationState;
  /** The whole migration runs in one transaction. */
  readonly transactional: boolean;
}

/**
 * Whether work on `table` reaches data an application uses: not a table this migration created, and
 * one the catalog knows (without the catalog, any table). Findings about data lost or code broken do
 * not ask this: the catalog of request time does not bind the database of execution time, so they
 * only spare tables this migration creates itself (`created`).
 */
function existing(ctx: RuleContext, table: string): boolean {
  if (ctx.state.created.has(table)) return false;
  const facts = ctx.facts.table(table);
  if (facts === undefined) return !ctx.withCatalog;
  return true;
}

function isEmpty(ctx: RuleContext, table: string): boolean {
  return ctx.state.created.has(table) || ctx.facts.table(table)?.empty === true;
}

function checksOf(ctx: RuleContext, table: string): Map<string, string | null> {
  let checks = ctx.state.unvalidatedChecks.get(table);
  if (!checks) {
    checks = new Map();
    for (const check of ctx.facts.table(table)?.checks ?? []) {
      if (!check.validated) checks.set(check.name, notNullColumnOfDefinition(check.definition));
    }
    ctx.state.unvalidatedChecks.set(table, checks);
  }
  return checks;
}

function provenNotNull(ctx: RuleContext, table: string, column: string): boolean {
  if (ctx.state.provenNotNull.get(table)?.has(column)) return true;
  return (ctx.facts.table(table)?.checks ?? []).some(
    (check) => check.validated && notNullColumnOfDefinition(check.definition) === column,
  );
}

function prove(ctx: RuleContext, table: string, column: string): void {
  let columns = ctx.state.provenNotNull.get(table);
  if (!columns) {
    columns = new Set();
    ctx.state.provenNotNull.set(table, columns);
  }
  columns.add(column);
}

class EffectBuilder {
  readonly locks: { relation: string; mode: LockMode }[] = [];
  readonly candidates: Candidate[] = [];
  readonly long: string[] = [];

  lock(relation: string, mode: LockMode): this {
    this.locks.push({ relation, mode });
    return this;
  }

  add(candidate: Candidate): this {
    this.candidates.push(candidate);
    return this;
  }

  build(): StatementEffect {
    return { locks: this.locks, candidates: this.candidates, long: this.long };
  }
}

function addColumn(ctx: RuleContext, out: EffectBuilder, table: string, column: Node): void {
  const name = typeof column.colname === 'string' ? column.colname : '?';
  const typeNames = stringsOf(list(child(column, 'typeName'), 'names')).map((n) => n.toLowerCase());
  const constraints = list(column, 'constraints')
    .map((c) => child(c, 'Constraint'))
    .filter(isNode);
  const byType = (type: string) => constraints.find((c) => c.contype === type);
  const defaultExpression = byType('CONSTR_DEFAULT')?.raw_expr;
  const notNull = byType('CONSTR_NOTNULL') !== undefined || byType('CONSTR_PRIMARY') !== undefined;
  const serial = typeNames.some((t) => SERIAL_TYPES.has(t));
  const identity = byType('CONSTR_IDENTITY') !== undefined;
  const generated = byType('CONSTR_GENERATED') !== undefined;
  if (!existing(ctx, table)) return;
  if (typeNames.at(-1) === 'json') {
    out.add({
      code: 'JSON_COLUMN',
      severity: 'danger',
      message:
        `Column ${name} is json, which has no equality operator: queries of ${table} that compare whole rows ` +
        '(SELECT DISTINCT *, UNION, GROUP BY over every column) start failing with "could not identify an equality operator".',
      safer: `Make ${name} jsonb.`,
    });
  }
  const volatility =
    serial || identity || generated
      ? 'volatile'
      : defaultExpression === undefined
        ? null
        : volatilityOf(defaultExpression, ctx.facts, ctx.withCatalog);
  const empty = isEmpty(ctx, table);
  if (volatility === 'volatile' || volatility === 'unknown') {
    const what = serial
      ? 'a serial column (its default calls nextval for every row)'
      : identity
        ? 'an identity column (a sequence value for every row)'
        : generated
          ? 'a stored generated column (computed for every row)'
          : volatility === 'volatile'
            ? 'a volatile default (computed for every row)'
            : 'a default whose volatility is not known here';
    out.add({
      code: 'ADD_COLUMN_REWRITE',
      severity: volatility === 'unknown' && !empty ? 'warning' : 'by lock',
      message: `Adding column ${name} with ${what} ${volatility === 'unknown' ? 'may rewrite' : 'rewrites'} all of ${table}.`,
      safer: `Add ${name} without a default, backfill it in batches, then SET DEFAULT for new rows.`,
      work: { relation: table, does: 'rewrites' },
    });
  } else if (volatility !== null) {
    out.add({
      code: 'ADD_COLUMN_METADATA_ONLY',
      severity: 'info',
      message: `Adding column ${name} with a default that is ${volatility}, the same for every row, is a catalog change (PostgreSQL 11+): the value is stored once, no row is rewritten.`,
      safer: null,
    });
  } else if (notNull && !empty) {
    out.add({
      code: 'ADD_COLUMN_NOT_NULL_NO_DEFAULT',
      severity: ctx.withCatalog ? 'danger' : 'warning',
      message: `Column ${name} is NOT NULL without a default: the statement fails (23502) because ${table} has rows.`,
      safer: `Give ${name} a constant DEFAULT, or add it nullable and backfill before setting NOT NULL.`,
    });
  }
  const unique = byType('CONSTR_UNIQUE') ?? byType('CONSTR_PRIMARY');
  if (unique) {
    out.add({
      code: 'UNIQUE_INDEX_UNDER_EXCLUSIVE_LOCK',
      severity: 'by lock',
      message: `The ${unique.contype === 'CONSTR_PRIMARY' ? 'PRIMARY KEY' : 'UNIQUE'} constraint on ${name} builds its index over every row of ${table}.`,
      safer: `Add ${name} without the constraint, CREATE UNIQUE INDEX CONCURRENTLY (its own request), then ADD CONSTRAINT ... USING INDEX.`,
      work: { relation: table, does: 'builds an index on' },
    });
  }
  const foreign = byType('CONSTR_FOREIGN');
  if (foreign) {
    const parent = rangeVarName(foreign.pktable) ?? '?';
    out.lock(parent, 'SHARE ROW EXCLUSIVE');
    if (defaultExpression !== undefined) {
      out.add({
        code: 'CONSTRAINT_VALIDATION_SCAN',
        severity: 'by lock',
        message: `The new column's default must be found in ${parent}: every row of ${table} is checked.`,
        safer: `Add ${name} without the default, then ADD CONSTRAINT ... NOT VALID and VALIDATE it in a separate request.`,
        work: { relation: table, does: 'scans' },
      });
    }
  }
  const check = byType('CONSTR_CHECK');
  if (check && check.skip_validation !== true && defaultExpression !== undefined) {
    out.add({
      code: 'CONSTRAINT_VALIDATION_SCAN',
      severity: 'by lock',
      message: `The CHECK on ${name} is verified against every row of ${table}.`,
      safer: 'Add the column first, then the CHECK as NOT VALID, and VALIDATE it in a separate request.',
      work: { relation: table, does: 'scans' },
    });
  }
}

function addConstraint(ctx: RuleContext, out: EffectBuilder, table: string, constraint: Node): void {
  const type = constraint.contype;
  const conname = typeof constraint.conname === 'string' ? constraint.conname : 'the constraint';
  const notValid = constraint.skip_validation === true;
  if (type === 'CONSTR_CHECK') {
    const column = notNullColumnOf(constraint.raw_expr);
    if (notValid) {
      checksOf(ctx, table).set(conname, column);
      return;
    }
    if (column) prove(ctx, table, column);
    if (!existing(ctx, table)) return;
    out.add({
      code: 'CONSTRAINT_VALIDATION_SCAN',
      severity: 'by lock',
      message: `CHECK ${conname} without NOT VALID is verified against every row of ${table}.`,
      safer: `ADD CONSTRAINT ${conname} ... NOT VALID, then VALIDATE CONSTRAINT ${conname} in a separate request (SHARE UPDATE EXCLUSIVE: writes continue).`,
      work: { relation: table, does: 'scans' },
    });
    return;
  }
  if (type === 'CONSTR_FOREIGN') {
    const parent = rangeVarName(constraint.pktable) ?? '?';
    out.lock(table, 'SHARE ROW EXCLUSIVE').lock(parent, 'SHARE ROW EXCLUSIVE');
    if (notValid) {
      checksOf(ctx, table).set(conname, null);
      return;
    }
    if (!existing(ctx, table)) return;
    out.add({
      code: 'CONSTRAINT_VALIDATION_SCAN',
      severity: 'by lock',
      message: `FOREIGN KEY ${conname} without NOT VALID checks every row of ${table} against ${parent}; writes to both wait meanwhile.`,
      safer: `ADD CONSTRAINT ${conname} ... NOT VALID, then VALIDATE CONSTRAINT ${conname} in a separate request (writes continue).`,
      work: { relation: table, does: 'scans' },
    });
    return;
  }
  if (type === 'CONSTR_PRIMARY' || type === 'CONSTR_UNIQUE') {
    if (!existing(ctx, table)) return;
    const primary = type === 'CONSTR_PRIMARY';
    if (typeof constraint.indexname === 'string') {
      const index = ctx.facts.index(constraint.indexname);
      if (primary && index?.columnsNotNull !== true) {
        out.add({
          code: 'SET_NOT_NULL_SCAN',
          severity: index === undefined && !ctx.withCatalog ? 'warning' : 'by lock',
          message: `PRIMARY KEY USING INDEX ${constraint.indexname} makes its ${index === undefined ? 'columns' : 'nullable columns'} NOT NULL, which scans all of ${table}.`,
          safer:
            'Make the columns NOT NULL first through a validated CHECK (col IS NOT NULL) (see SET NOT NULL), then add the key.',
          work: { relation: table, does: 'scans' },
        });
      }
      return;
    }
    out.add({
      code: 'UNIQUE_INDEX_UNDER_EXCLUSIVE_LOCK',
      severity: 'by lock',
      message: `Adding a ${primary ? 'PRIMARY KEY' : 'UNIQUE'} constraint builds its index over every row of ${table}.`,
      safer: 'CREATE UNIQUE INDEX CONCURRENTLY first (its own request), then ADD CONSTRAINT ... USING INDEX.',
      work: { relation: table, does: 'builds an index on' },
    });
    return;
  }
  if (type === 'CONSTR_EXCLUSION') {
    if (!existing(ctx, table)) return;
    out.add({
      code: 'EXCLUSION_CONSTRAINT',
      severity: 'by lock',
      message: `EXCLUDE ${conname} builds its index over every row of ${table}; an exclusion constraint cannot use an index built beforehand.`,
      safer: 'Add exclusion constraints when the table is created, or while it is still empty.',
      work: { relation: table, does: 'builds an index on' },
    });
  }
}

function validateConstraint(ctx: RuleContext, out: EffectBuilder, table: string, name: string): void {
  out.lock(table, 'SHARE UPDATE EXCLUSIVE');
  const checks = checksOf(ctx, table);
  const column = checks.get(name);
  if (column) prove(ctx, table, column);
  checks.delete(name);
  if (!existing(ctx, table)) return;
  out.add({
    code: 'CONSTRAINT_VALIDATION_SCAN',
    severity: 'by lock',
    message: `VALIDATE CONSTRAINT ${name} checks every row of ${table}.`,
    safer: `Validate in a request of its own, after the one that added ${name} NOT VALID has committed.`,
    work: { relation: table, does: 'scans' },
  });
}

/** Whether a validated CHECK of `table` proves `definition`'s parts (a partition's range bound). */
function checkContains(ctx: RuleContext, table: string, parts: readonly string[]): boolean {
  return (ctx.facts.table(table)?.checks ?? []).some(
    (check) => check.validated && parts.every((part) => check.definition.includes(part)),
  );
}

function attachPartition(ctx: RuleContext, out: EffectBuilder, parent: string, command: Node): void {
  const partition = rangeVarName(command.name) ?? '?';
  out.lock(parent, 'SHARE UPDATE EXCLUSIVE').lock(partition, 'ACCESS EXCLUSIVE');
  const bound = child(command, 'bound');
  const literal = (items: readonly unknown[]) => stringConstant(items[0]);
  const from = literal(list(bound, 'lowerdatums'));
  const to = literal(list(bound, 'upperdatums'));
  const range = from !== null && to !== null;
  if (existing(ctx, partition) && !(range && checkContains(ctx, partition, [`>= '${from}'`, `< '${to}'`]))) {
    out.add({
      code: 'ATTACH_PARTITION_SCAN',
      severity: 'by lock',
      message: `ATTACH PARTITION scans all of ${partition} to prove its rows fit the bound: no validated CHECK of ${partition} implies it.`,
      safer: `ADD CONSTRAINT ... CHECK (<the bound>) NOT VALID on ${partition} and VALIDATE it first (writes continue); then the attach needs no scan.`,
      work: { relation: partition, does: 'scans' },
    });
  }
  const defaultPartition = ctx.facts.table(parent)?.defaultPartition;
  if (defaultPartition) {
    out.lock(defaultPartition, 'ACCESS EXCLUSIVE');
    if (!(range && checkContains(ctx, defaultPartition, [`< '${from}'`, `>= '${to}'`]))) {
      out.add({
        code: 'ATTACH_PARTITION_SCAN',
        severity: 'by lock',
        message: `ATTACH PARTITION also scans the default partition ${defaultPartition} for rows that belong to the new bound.`,
        safer: `Give ${defaultPartition} a validated CHECK that excludes the new range first.`,
        work: { relation: defaultPartition, does: 'scans' },
      });
    }
  } else if (!ctx.withCatalog) {
    out.add({
      code: 'ATTACH_PARTITION_SCAN',
      severity: 'warning',
      message: `Without the catalog, whether ${parent} has a default partition (scanned under ACCESS EXCLUSIVE) is not known here.`,
      safer: null,
    });
  }
}

function alterTable(ctx: RuleContext, out: EffectBuilder): void {
  const { node } = ctx.statement;
  const table = rangeVarName(node.relation) ?? '?';
  if (node.objtype === 'OBJECT_INDEX') {
    out.lock(table, 'SHARE UPDATE EXCLUSIVE');
    return;
  }
  for (const item of list(node, 'cmds')) {
    const command = child(item, 'AlterTableCmd');
    if (!command) continue;
    const column = typeof command.name === 'string' ? command.name : '?';
    switch (command.subtype) {
      case 'AT_AddColumn': {
        out.lock(table, 'ACCESS EXCLUSIVE');
        const def = child(command.def, 'ColumnDef');
        if (def) addColumn(ctx, out, table, def);
        break;
      }
      case 'AT_SetNotNull':
        out.lock(table, 'ACCESS EXCLUSIVE');
        if (!existing(ctx, table)) break;
        if (provenNotNull(ctx, table, column)) {
          out.add({
            code: 'SET_NOT_NULL_SCAN',
            severity: 'info',
            message: `SET NOT NULL on ${column} needs no scan: a validated CHECK (${column} IS NOT NULL) proves it.`,
            safer: null,
          });
          break;
        }
        out.add({
          code: 'SET_NOT_NULL_SCAN',
          severity: 'by lock',
          message: `SET NOT NULL on ${column} scans all of ${table}: no validated CHECK (${column} IS NOT NULL) proves it.`,
          safer: `ADD CONSTRAINT ${column}_not_null CHECK (${column} IS NOT NULL) NOT VALID; VALIDATE CONSTRAINT it in a separate request; then SET NOT NULL skips the scan (PostgreSQL 12+) and the CHECK can go.`,
          work: { relation: table, does: 'scans' },
        });
        break;
      case 'AT_AlterColumnType': {
        out.lock(table, 'ACCESS EXCLUSIVE');
        if (!existing(ctx, table)) break;
        const def = child(command.def, 'ColumnDef');
        const verdict = typeChangeRewrites(
          ctx.facts.table(table)?.columns.get(column) ?? null,
          newTypeOf(def?.typeName),
          {
            using: def?.raw_default !== undefined,
            timeZone: ctx.state.timeZone ?? ctx.facts.timeZone,
          },
        );
        out.add(
          verdict.rewrites
            ? {
                code: 'COLUMN_TYPE_REWRITE',
                severity: 'by lock',
                message: `Changing the type of ${column} rewrites ${table} and its indexes: ${verdict.why}.`,
                safer: `Add a new column of the new type, backfill it in batches, switch the application, then drop ${column}.`,
                work: { relation: table, does: 'rewrites' },
              }
            : {
                code: 'COLUMN_TYPE_NO_REWRITE',
                severity: 'info',
                message: `Changing the type of ${column} needs no rewrite: ${verdict.why}.`,
                safer: null,
              },
        );
        break;
      }
      case 'AT_AddConstraint': {
        const constraint = child(command.def, 'Constraint');
        if (constraint?.contype !== 'CONSTR_FOREIGN') out.lock(table, 'ACCESS EXCLUSIVE');
        if (constraint) addConstraint(ctx, out, table, constraint);
        break;
      }
      case 'AT_ValidateConstraint':
        validateConstraint(ctx, out, table, column);
        break;
      case 'AT_DropColumn':
        out.lock(table, 'ACCESS EXCLUSIVE');
        if (ctx.state.created.has(table)) break;
        out.add({
          code: 'DROP_COLUMN',
          severity: 'danger',
          message: `Dropping ${column} destroys its data for good; application code still reading it breaks.`,
          safer:
            'Stop using the column in the application first; back it up (backup_before) before dropping.',
        });
        break;
      case 'AT_SetUnLogged':
      case 'AT_SetLogged':
      case 'AT_SetTableSpace':
        out.lock(table, 'ACCESS EXCLUSIVE');
        if (!existing(ctx, table)) break;
        out.add({
          code: 'TABLE_REWRITE',
          severity: 'by lock',
          message: `${command.subtype === 'AT_SetTableSpace' ? 'SET TABLESPACE copies' : `SET ${command.subtype === 'AT_SetLogged' ? 'LOGGED' : 'UNLOGGED'} rewrites`} all of ${table}${command.subtype === 'AT_SetUnLogged' ? ', and an unlogged table is emptied by a crash' : ''}.`,
          safer: 'Do it in a maintenance window, or build a new table alongside and switch.',
          work: { relation: table, does: 'rewrites' },
        });
        break;
      case 'AT_AttachPartition': {
        const partitionCommand = child(command.def, 'PartitionCmd');
        if (partitionCommand) attachPartition(ctx, out, table, partitionCommand);
        break;
      }
      case 'AT_DetachPartition': {
        const partitionCommand = child(command.def, 'PartitionCmd');
        const partition = rangeVarName(partitionCommand?.name) ?? '?';
        if (partitionCommand?.concurrent === true) {
          out.lock(table, 'SHARE UPDATE EXCLUSIVE').lock(partition, 'ACCESS EXCLUSIVE');
          break;
        }
        out.lock(table, 'ACCESS EXCLUSIVE').lock(partition, 'ACCESS EXCLUSIVE');
        if (!existing(ctx, table)) break;
        out.add({
          code: 'DETACH_PARTITION_LOCKS',
          severity: 'warning',
          message: `DETACH PARTITION takes ACCESS EXCLUSIVE on ${table} itself: every query of the partitioned table waits, and waits behind the queries already running.`,
          safer: `ALTER TABLE ${table} DETACH PARTITION ${partition} CONCURRENTLY (its own request; SHARE UPDATE EXCLUSIVE on ${table}).`,
        });
        break;
      }
      case 'AT_SetStatistics':
      case 'AT_SetOptions':
      case 'AT_ResetOptions':
      case 'AT_SetRelOptions':
      case 'AT_ResetRelOptions':
      case 'AT_ClusterOn':
      case 'AT_DropCluster':
        out.lock(table, 'SHARE UPDATE EXCLUSIVE');
        break;
      default:
        // Catalog changes (defaults, DROP NOT NULL, DROP CONSTRAINT, triggers, ownership …): instant.
        out.lock(table, 'ACCESS EXCLUSIVE');
        break;
    }
  }
}

function createIndex(ctx: RuleContext, out: EffectBuilder): void {
  const { node } = ctx.statement;
  const table = rangeVarName(node.relation) ?? '?';
  const facts = ctx.facts.table(table);
  const partitioned = facts?.kind === 'p';
  const only = isNode(node.relation) && node.relation.inh !== true;
  if (node.concurrent === true) {
    out.lock(table, 'SHARE UPDATE EXCLUSIVE');
    if (partitioned) {
      out.add({
        code: 'CONCURRENT_INDEX_ON_PARTITIONED_TABLE',
        severity: 'danger',
        message: `${table} is partitioned: Postgres refuses CREATE INDEX CONCURRENTLY on it (0A000), so the migration fails.`,
        safer: `CREATE INDEX ... ON ONLY ${table}; then CREATE INDEX CONCURRENTLY on each partition and ALTER INDEX ... ATTACH PARTITION each.`,
      });
      return;
    }
    if (!existing(ctx, table)) return;
    out.add({
      code: 'CONCURRENT_INDEX',
      severity: 'info',
      message:
        'Built CONCURRENTLY: writes continue. It runs outside a transaction; if it fails it leaves an INVALID index that must be dropped before retrying.',
      safer: null,
    });
    return;
  }
  out.lock(table, 'SHARE');
  if (partitioned && only) return;
  if (partitioned) for (const partition of facts.partitions) out.lock(partition, 'SHARE');
  if (!existing(ctx, table)) return;
  const name = typeof node.idxname === 'string' ? `${node.idxname} ` : '';
  out.add({
    code: 'INDEX_BLOCKS_WRITES',
    severity: 'by lock',
    message: `CREATE INDEX without CONCURRENTLY builds the index over every row of ${partitioned ? `${table} (partitions ${facts.partitions.join(', ')})` : table}.`,
    safer: partitioned
      ? `CREATE INDEX ${name}ON ONLY ${table} (...); CREATE INDEX CONCURRENTLY on each partition; ALTER INDEX ... ATTACH PARTITION each.`
      : `CREATE INDEX CONCURRENTLY ${name}ON ${table} (...) as a request of its own.`,
    work: { relation: table, does: 'builds an index on' },
  });
}

function dropStatement(ctx: RuleContext, out: EffectBuilder): void {
  const { node, relations } = ctx.statement;
  switch (node.removeType) {
    case 'OBJECT_TABLE': {
      for (const table of relations) out.lock(table, 'ACCESS EXCLUSIVE');
      const lost = relations.filter((table) => !ctx.state.created.has(table));
      if (lost.length === 0) return;
      const missing = ctx.withCatalog ? lost.filter((table) => ctx.facts.table(table) === undefined) : [];
      out.add({
        code: 'DROP_TABLE',
        severity: 'danger',
        message:
          `DROP TABLE destroys ${lost.join(', ')} and all their data for good` +
          (missing.length > 0
            ? ` (${missing.join(', ')} did not exist when this was requested, but would be dropped if it exists when this runs)`
            : '') +
          '.',
        safer:
          'Rename the table first and drop it in a later request once nothing uses it; back it up (backup_before).',
      });
      return;
    }
    case 'OBJECT_INDEX': {
      const names = list(node, 'objects').map((object) => dottedName(list(child(object, 'List'), 'items')));
      const tables = names.map((name) => ctx.facts.index(name)?.table ?? `the table of ${name}`);
      if (node.concurrent === true) {
        for (const table of tables) out.lock(table, 'SHARE UPDATE EXCLUSIVE');
        return;
      }
      for (const table of tables) out.lock(table, 'ACCESS EXCLUSIVE');
      if (tables.every((table) => ctx.state.created.has(table))) return;
      if (ctx.withCatalog && names.every((name) => ctx.facts.index(name) === undefined)) return;
      out.add({
        code: 'DROP_INDEX_LOCKS_TABLE',
        severity: 'warning',
        message: `DROP INDEX without CONCURRENTLY takes ACCESS EXCLUSIVE on ${tables.join(', ')}: every query of the table waits, and waits behind the queries already running.`,
        safer: `DROP INDEX CONCURRENTLY ${names.join(', ')} (its own request).`,
      });
      return;
    }
    case 'OBJECT_SCHEMA': {
      const schemas = list(node, 'objects')
        .map((object) => child(object, 'String')?.sval)
        .filter((name): name is string => typeof name === 'string');
      const tables = schemas.flatMap((schema) => ctx.facts.schemaTables(schema) ?? []);
      if (ctx.withCatalog && tables.length === 0 && node.behavior !== 'DROP_CASCADE') return;
      for (const table of tables) out.lock(table, 'ACCESS EXCLUSIVE');
      out.add({
        code: 'DROP_SCHEMA',
        severity: 'danger',
        message:
          `DROP SCHEMA ${schemas.join(', ')}${node.behavior === 'DROP_CASCADE' ? ' CASCADE' : ''} destroys ` +
          (tables.length > 0 ? `${tables.join(', ')} and all their data` : 'every object in it') +
          ' for good.',
        safer: 'Drop the objects one by one, each backed up, once nothing uses them.',
      });
      return;
    }
    default:
      return;
  }
}

/** Every table TRUNCATE … CASCADE empties: the named ones and, transitively, those referencing them. */
function truncatedTables(ctx: RuleContext, named: readonly string[], cascade: boolean): string[] {
  const all = [...named];
  if (!cascade) return all;
  for (let i = 0; i < all.length; i += 1) {
    for (const child of ctx.facts.table(all[i] ?? '')?.referencedBy ?? [])
      if (!all.includes(child)) all.push(child);
  }
  return all;
}

function truncate(ctx: RuleContext, out: EffectBuilder): void {
  const { node, relations } = ctx.statement;
  const cascade = node.behavior === 'DROP_CASCADE';
  const tables = truncatedTables(ctx, relations, cascade).filter((table) => !ctx.state.created.has(table));
  for (const table of tables) out.lock(table, 'ACCESS EXCLUSIVE');
  if (tables.length === 0) return;
  out.long.push(...tables);
  out.add({
    code: 'TRUNCATE',
    severity: 'danger',
    message:
      `TRUNCATE deletes every row of ${tables.join(', ')}` +
      (cascade && tables.length > relations.length
        ? ` (CASCADE empties every table referencing ${relations.join(', ')})`
        : '') +
      '.',
    safer: 'Back the tables up (backup_before), or DELETE in batches with a WHERE clause.',
  });
}

function updateOrDelete(ctx: RuleContext, out: EffectBuilder): void {
  const { node, kind } = ctx.statement;
  const table = rangeVarName(node.relation) ?? '?';
  out.lock(table, 'ROW EXCLUSIVE');
  const update = kind === 'UpdateStmt';
  if (node.whereClause !== undefined || ctx.state.created.has(table)) return;
  // Rows deleted are lost whatever the table held when this was requested; an update of an empty
  // table costs nothing.
  if (update && (!existing(ctx, table) || isEmpty(ctx, table))) return;
  out.long.push(table);
  out.add({
    code: update ? 'UPDATE_WITHOUT_WHERE' : 'DELETE_WITHOUT_WHERE',
    severity: 'danger',
    message: `${update ? 'UPDATE' : 'DELETE'} without WHERE ${update ? 'changes' : 'deletes'} every row of ${table} in one transaction, holding a lock on each row until it commits: writers of those rows wait.`,
    safer: `Add a WHERE clause, or ${update ? 'update' : 'delete'} in batches of a few thousand rows per request.`,
  });
}

function rename(ctx: RuleContext, out: EffectBuilder): void {
  const { node } = ctx.statement;
  const type = node.renameType;
  if (type === 'OBJECT_TABLE' || type === 'OBJECT_COLUMN') {
    const table = rangeVarName(node.relation) ?? '?';
    out.lock(table, 'ACCESS EXCLUSIVE');
    if (ctx.state.created.has(table)) return;
    const column = type === 'OBJECT_COLUMN';
    if (!column) {
      ctx.state.renamedAway.add(table);
      const view = ctx.statements
        .slice(ctx.statement.index + 1)
        .some((later) => later.kind === 'ViewStmt' && rangeVarName(later.node.view) === table);
      if (view && ctx.transactional) {
        out.add({
          code: 'RENAME',
          severity: 'info',
          message: `${table} is renamed and a view of the old name takes its place in the same transaction: queries using the old name keep working.`,
          safer: null,
        });
        return;
      }
    }
    out.add({
      code: 'RENAME',
      severity: 'danger',
      message: `Renaming ${column ? `column ${String(node.subname)} of ` : ''}${table} breaks every running query and deployed application version that uses the old name.`,
      safer: column
        ? 'Expand and contract: add the new column alongside the old one, move the application, then drop the old one.'
        : 'Rename, and create a view with the old name in the same request (SELECT * FROM the new name); drop the view once nothing uses it.',
    });
    return;
  }
  if (type === 'OBJECT_SCHEMA') {
    out.add({
      code: 'RENAME',
      severity: 'danger',
      message: `Renaming schema ${String(node.subname)} breaks every query, view and function that names it, and every search_path that lists it.`,
      safer:
        'Create the new schema and move objects one by one, with compatibility views, or leave the name.',
    });
  }
  if (type === 'OBJECT_INDEX') out.lock(rangeVarName(node.relation) ?? '?', 'SHARE UPDATE EXCLUSIVE');
}

function alterEnum(ctx: RuleContext, out: EffectBuilder): void {
  const { node } = ctx.statement;
  const type = dottedName(list(node, 'typeName'));
  if (typeof node.oldVal === 'string') {
    out.add({
      code: 'RENAME',
      severity: 'danger',
      message: `Renaming value '${node.oldVal}' of ${type} breaks every query and application version that compares with '${node.oldVal}'.`,
      safer: `Add the new value, move the application and the rows to it, and stop using '${node.oldVal}'.`,
    });
    return;
  }
  if (typeof node.newVal !== 'string' || !ctx.transactional) return;
  const label = node.newVal;
  const usedAt = ctx.statements.slice(ctx.statement.index + 1).find((later) => {
    let found = false;
    visitNodes(later.node, (_key, value) => {
      if (stringConstant({ A_Const: value }) === label || stringConstant(value) === label) found = true;
      return undefined;
    });
    return found;
  });
  if (usedAt) {
    out.add({
      code: 'ENUM_VALUE_USED_TOO_SOON',
      severity: 'danger',
      message: `Value '${label}' added to ${type} cannot be used before the transaction that added it commits: statement ${usedAt.index + 1} fails (55P04) and the migration rolls back.`,
      safer: `Add the value in a request of its own; use it in a later one.`,
    });
  }
}

function alterDomain(ctx: RuleContext, out: EffectBuilder): void {
  const { node } = ctx.statement;
  const domain = dottedName(list(node, 'typeName'));
  const constraint = child(node.def, 'Constraint');
  const adds = node.subtype === 'C' && constraint?.contype === 'CONSTR_CHECK';
  const validates = node.subtype === 'V';
  if (!(adds && constraint?.skip_validation !== true) && !validates) return;
  const users = ctx.facts.domainUsers(domain);
  for (const user of users ?? []) out.lock(user.table, 'SHARE');
  const scanned = (users ?? []).filter((user) => !user.empty && !ctx.state.created.has(user.table));
  if (users !== undefined && scanned.length === 0) return;
  out.add({
    code: 'DOMAIN_CONSTRAINT_SCAN',
    severity: 'danger',
    message:
      `${adds ? 'ADD CONSTRAINT' : 'VALIDATE CONSTRAINT'} on domain ${domain} checks every row of ` +
      (users === undefined
        ? 'every table with a column of the domain'
        : scanned.map((user) => user.table).join(', ')) +
      ' under SHARE locks: writes to them wait until it ends (a table constraint validates without blocking writes; a domain constraint does not).',
    safer: adds
      ? 'Put a CHECK NOT VALID on each table column instead and VALIDATE those (writes continue), or add the domain constraint while the tables are empty.'
      : 'Validate when the tables are small or quiet; there is no non-blocking way for a domain.',
  });
}

/**
 * CLUSTER and REINDEX of a partitioned table are refused in a transaction block (25001), which only
 * the catalog can tell: the executor runs them in one, so the migration would fail, rolled back.
 */
function refusedOnPartitionedTable(
  ctx: RuleContext,
  out: EffectBuilder,
  table: string | null,
  what: string,
): boolean {
  if (table === null || ctx.facts.table(table)?.kind !== 'p' || !ctx.transactional) return false;
  out.add({
    code: 'REFUSED_IN_TRANSACTION',
    severity: 'danger',
    message: `${table} is partitioned: Postgres refuses ${what} of a partitioned table inside a transaction (25001), so this migration fails and is rolled back.`,
    safer: `Run ${what} on each partition instead, or submit it as a request of its own next to a statement that cannot run in a transaction.`,
  });
  return true;
}

function maintenance(ctx: RuleContext, out: EffectBuilder): void {
  const { node, kind } = ctx.statement;
  if (kind === 'ClusterStmt') {
    const table = rangeVarName(node.relation);
    if (table === null) {
      out.add({
        code: 'TABLE_REWRITE',
        severity: 'danger',
        message:
          'CLUSTER without a table rewrites every clustered table of the database, each under ACCESS EXCLUSIVE.',
        safer: 'Leave re-clustering to a maintenance window (or pg_repack).',
      });
      return;
    }
    out.lock(table, 'ACCESS EXCLUSIVE');
    if (!existing(ctx, table) || refusedOnPartitionedTable(ctx, out, table, 'CLUSTER')) return;
    out.add({
      code: 'TABLE_REWRITE',
      severity: 'by lock',
      message: `CLUSTER rewrites all of ${table} in index order.`,
      safer: 'Leave re-clustering to a maintenance window (or pg_repack, which does not block).',
      work: { relation: table, does: 'rewrites' },
    });
    return;
  }
  if (kind === 'VacuumStmt') {
    const full = list(node, 'options').some((option) => child(option, 'DefElem')?.defname === 'full');
    const tables = list(node, 'rels')
      .map((rel) => rangeVarName(child(rel, 'VacuumRelation')?.relation))
      .filter((name): name is string => name !== null);
    if (!full) {
      for (const table of tables) out.lock(table, 'SHARE UPDATE EXCLUSIVE');
      return;
    }
    if (tables.length === 0) {
      out.add({
        code: 'TABLE_REWRITE',
        severity: 'danger',
        message:
          'VACUUM FULL without a table rewrites every table of the database, each under ACCESS EXCLUSIVE.',
        safer: 'Plain VACUUM (no lock against the application), or pg_repack for bloat.',
      });
      return;
    }
    for (const table of tables) {
      out.lock(table, 'ACCESS EXCLUSIVE');
      if (!existing(ctx, table)) continue;
      out.add({
        code: 'TABLE_REWRITE',
        severity: 'by lock',
        message: `VACUUM FULL rewrites all of ${table} into a new file.`,
        safer: 'Plain VACUUM (no lock against the application), or pg_repack for bloat.',
        work: { relation: table, does: 'rewrites' },
      });
    }
    return;
  }
  if (kind === 'ReindexStmt') {
    const concurrent = list(node, 'params').some(
      (param) => child(param, 'DefElem')?.defname === 'concurrently',
    );
    const named = rangeVarName(node.relation);
    const table =
      node.kind === 'REINDEX_OBJECT_INDEX'
        ? (ctx.facts.index(named ?? '')?.table ?? `the table of ${named ?? '?'}`)
        : node.kind === 'REINDEX_OBJECT_TABLE'
          ? named
          : null;
    if (concurrent) {
      if (table) out.lock(table, 'SHARE UPDATE EXCLUSIVE');
      return;
    }
    if (table === null) {
      out.add({
        code: 'REINDEX_BLOCKS_WRITES',
        severity: 'danger',
        message:
          'REINDEX of a whole schema, database or the system catalogs rebuilds every index there, blocking writes to each table in turn.',
        safer: 'REINDEX ... CONCURRENTLY, table by table.',
      });
      return;
    }
    out.lock(table, 'SHARE');
    if (
      !existing(ctx, table) ||
      refusedOnPartitionedTable(ctx, out, node.kind === 'REINDEX_OBJECT_TABLE' ? table : null, 'REINDEX')
    )
      return;
    out.add({
      code: 'REINDEX_BLOCKS_WRITES',
      severity: 'by lock',
      message: `REINDEX rebuilds ${node.kind === 'REINDEX_OBJECT_INDEX' ? `${named ?? '?'} over every row of ${table}` : `every index of ${table}`}; queries that would use ${node.kind === 'REINDEX_OBJECT_INDEX' ? 'the index' : 'its indexes'} wait too.`,
      safer: `REINDEX ${node.kind === 'REINDEX_OBJECT_INDEX' ? 'INDEX' : 'TABLE'} CONCURRENTLY ${named ?? ''} (its own request).`,
      work: { relation: table, does: 'rebuilds indexes of' },
    });
    return;
  }
  if (kind === 'RefreshMatViewStmt') {
    const view = rangeVarName(node.relation) ?? '?';
    if (node.concurrent === true) {
      out.lock(view, 'EXCLUSIVE');
      return;
    }
    out.lock(view, 'ACCESS EXCLUSIVE');
    if (!existing(ctx, view)) return;
    out.add({
      code: 'MATVIEW_REFRESH_BLOCKS_READS',
      severity: 'by lock',
      message: `REFRESH MATERIALIZED VIEW recomputes ${view} from its query and rewrites it.`,
      safer: `REFRESH MATERIALIZED VIEW CONCURRENTLY ${view} (needs a unique index on it; reads continue).`,
      work: { relation: view, does: 'rewrites' },
    });
  }
}

function setting(ctx: RuleContext): void {
  const { node } = ctx.statement;
  if (typeof node.name !== 'string') return;
  if (node.name.toLowerCase() === 'timezone' && node.kind === 'VAR_SET_VALUE') {
    ctx.state.timeZone = stringConstant(list(node, 'args')[0]) ?? ctx.state.timeZone;
  }
}

/** The effect of one statement; updates `state` with what later statements need to know. */
export function statementEffect(ctx: RuleContext): StatementEffect {
  const out = new EffectBuilder();
  const { kind, node, relations } = ctx.statement;
  switch (kind) {
    case 'AlterTableStmt':
      alterTable(ctx, out);
      break;
    case 'IndexStmt':
      createIndex(ctx, out);
      break;
    case 'DropStmt':
      dropStatement(ctx, out);
      break;
    case 'TruncateStmt':
      truncate(ctx, out);
      break;
    case 'UpdateStmt':
    case 'DeleteStmt':
      updateOrDelete(ctx, out);
      break;
    case 'RenameStmt':
      rename(ctx, out);
      break;
    case 'AlterEnumStmt':
      alterEnum(ctx, out);
      break;
    case 'AlterDomainStmt':
      alterDomain(ctx, out);
      break;
    case 'ClusterStmt':
    case 'VacuumStmt':
    case 'ReindexStmt':
    case 'RefreshMatViewStmt':
      maintenance(ctx, out);
      break;
    case 'VariableSetStmt':
      setting(ctx);
      break;
    case 'CreateStmt':
    case 'CreateTableAsStmt': {
      const [created, ...referenced] = relations;
      if (created) ctx.state.created.add(created);
      // A new table's foreign keys lock the tables they reference, for an instant.
      for (const table of referenced)
        out.lock(table, kind === 'CreateStmt' ? 'SHARE ROW EXCLUSIVE' : 'ACCESS SHARE');
      break;
    }
    case 'CreateTrigStmt':
      out.lock(rangeVarName(node.relation) ?? '?', 'SHARE ROW EXCLUSIVE');
      break;
    default:
      break;
  }
  return out.build();
}

export type { RuleContext };
