import type { AnalysedStatement } from '../analyse.js';
import type { LockMode } from '../lock-modes.js';
import { child, list, stringsOf, visitNodes } from '../parse-tree.js';
import type { RiskCode } from '../risk-codes.js';
import type { SchemaFacts, Volatility } from '../schema-facts.js';

/**
 * What the statement rules share: the shape of a statement's effect (locks, work judged by the locks
 * held meanwhile, findings that do not depend on locks), what earlier statements of the migration
 * left for later ones to know (MigrationState), and the lookups every rule makes.
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
  /** `table constraint` of constraints added NOT VALID earlier in this migration. */
  readonly addedNotValid: Set<string>;
}

export function newMigrationState(): MigrationState {
  return {
    created: new Set(),
    provenNotNull: new Map(),
    unvalidatedChecks: new Map(),
    timeZone: null,
    addedEnumLabels: new Set(),
    renamedAway: new Set(),
    addedNotValid: new Set(),
  };
}

export const SERIAL_TYPES = new Set(['serial', 'serial4', 'bigserial', 'serial8', 'smallserial', 'serial2']);

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
export function notNullColumnOf(expression: unknown): string | null {
  const test = child(expression, 'NullTest');
  if (!test || test.nulltesttype !== 'IS_NOT_NULL') return null;
  const fields = stringsOf(list(child(test.arg, 'ColumnRef'), 'fields'));
  return fields.length === 1 ? (fields[0] ?? null) : null;
}

/** The same from a catalog definition: `CHECK ((shipped_at IS NOT NULL))`. */
export function notNullColumnOfDefinition(definition: string): string | null {
  const match = /^CHECK \(+"?([a-z_][a-z0-9_$]*)"? IS NOT NULL\)+( NOT VALID)?$/i.exec(definition.trim());
  return match?.[1] ?? null;
}

export interface RuleContext {
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
export function existing(ctx: RuleContext, table: string): boolean {
  if (ctx.state.created.has(table)) return false;
  const facts = ctx.facts.table(table);
  if (facts === undefined) return !ctx.withCatalog;
  return true;
}

export function isEmpty(ctx: RuleContext, table: string): boolean {
  return ctx.state.created.has(table) || ctx.facts.table(table)?.empty === true;
}

export function checksOf(ctx: RuleContext, table: string): Map<string, string | null> {
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

export function provenNotNull(ctx: RuleContext, table: string, column: string): boolean {
  if (ctx.state.provenNotNull.get(table)?.has(column)) return true;
  return (ctx.facts.table(table)?.checks ?? []).some(
    (check) => check.validated && notNullColumnOfDefinition(check.definition) === column,
  );
}

export function prove(ctx: RuleContext, table: string, column: string): void {
  let columns = ctx.state.provenNotNull.get(table);
  if (!columns) {
    columns = new Set();
    ctx.state.provenNotNull.set(table, columns);
  }
  columns.add(column);
}

export class EffectBuilder {
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
