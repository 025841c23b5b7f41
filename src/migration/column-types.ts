import { child, isNode, list, stringsOf } from './parse-tree.js';
import type { ColumnFacts } from './schema-facts.js';

/**
 * Whether ALTER COLUMN … TYPE rewrites the table, judged the way Postgres 15 does
 * (ATColumnChangeRequiresRewrite: a binary-coercible change that keeps or loosens the type modifier
 * only updates the catalog), from the column's current type in the catalog and the new type in the
 * SQL. Anything not known to be free is a rewrite.
 */

/** The parser spells SQL-standard type names by their internal names already; a few aliases remain. */
const ALIASES: Readonly<Record<string, string>> = {
  'character varying': 'varchar',
  decimal: 'numeric',
  'timestamp with time zone': 'timestamptz',
  'timestamp without time zone': 'timestamp',
  bigint: 'int8',
  integer: 'int4',
  int: 'int4',
  smallint: 'int2',
  'bit varying': 'varbit',
};

const canonical = (name: string): string => ALIASES[name] ?? name;

/** Time zones in which timestamp and timestamptz hold the same instants. */
const UTC_ZONES = new Set([
  'utc',
  'etc/utc',
  'gmt',
  'etc/gmt',
  'uct',
  'etc/uct',
  'zulu',
  'etc/zulu',
  'universal',
]);

export function isUtc(timeZone: string | null): boolean {
  return timeZone !== null && UTC_ZONES.has(timeZone.toLowerCase());
}

interface NewType {
  readonly name: string;
  /** Type modifiers as written: varchar(20) → [20], numeric(12,2) → [12, 2]. */
  readonly modifiers: readonly number[];
  readonly array: boolean;
}

export function newTypeOf(typeName: unknown): NewType | null {
  if (!isNode(typeName)) return null;
  const name = stringsOf(list(typeName, 'names')).at(-1)?.toLowerCase();
  if (name === undefined) return null;
  const modifiers: number[] = [];
  for (const modifier of list(typeName, 'typmods')) {
    const value = child(child(modifier, 'A_Const'), 'ival');
    // A zero is sent as an empty object; a modifier that is no integer constant is not understood.
    if (value === null) return { name: canonical(name), modifiers: [Number.NaN], array: false };
    modifiers.push(typeof value.ival === 'number' ? value.ival : 0);
  }
  return { name: canonical(name), modifiers, array: list(typeName, 'arrayBounds').length > 0 };
}

/** varchar(n) is stored as n + 4; numeric(p, s) as (p << 16 | s) + 4; -1 is unconstrained. */
function varcharLength(typmod: number): number | null {
  return typmod < 0 ? null : typmod - 4;
}

function numericPrecision(typmod: number): { precision: number; scale: number } | null {
  if (typmod < 0) return null;
  const packed = typmod - 4;
  return { precision: (packed >> 16) & 0xffff, scale: packed & 0xffff };
}

export type RewriteVerdict =
  { readonly rewrites: false; readonly why: string } | { readonly rewrites: true; readonly why: string };

/**
 * `using`: the ALTER has a USING clause. `timeZone`: the TimeZone in force when the statement runs.
 * Null `column` (no catalog): a rewrite, with the reason that the current type is unknown.
 */
export function typeChangeRewrites(
  column: ColumnFacts | null,
  target: NewType | null,
  options: { readonly using: boolean; readonly timeZone: string | null },
): RewriteVerdict {
  if (column === null)
    return { rewrites: true, why: 'the current type is not known here, so a rewrite is assumed' };
  if (target === null || target.array)
    return { rewrites: true, why: `${column.type} is converted value by value` };
  if (options.using) return { rewrites: true, why: 'a USING expression computes every value again' };
  const from = canonical(column.typname);
  const to = target.name;
  const [first, second] = target.modifiers;
  if (from === 'varchar' && to === 'varchar') {
    const before = varcharLength(column.typmod);
    if (first === undefined)
      return { rewrites: false, why: 'varchar without a length accepts every value as it is' };
    if (before !== null && first >= before) {
      return { rewrites: false, why: `varchar(${before}) → varchar(${first}) only raises the limit` };
    }
    return { rewrites: true, why: `every value must be checked against the shorter limit ${first}` };
  }
  if ((from === 'varchar' || from === 'text') && to === 'text') {
    return { rewrites: false, why: `${column.type} → text is binary-coercible` };
  }
  if (from === 'text' && to === 'varchar' && first === undefined) {
    return { rewrites: false, why: 'text → varchar without a length is binary-coercible' };
  }
  if (from === 'numeric' && to === 'numeric') {
    const before = numericPrecision(column.typmod);
    if (first === undefined)
      return { rewrites: false, why: 'numeric without precision accepts every value as it is' };
    const scale = second ?? 0;
    if (before !== null && scale === before.scale && first >= before.precision) {
      return {
        rewrites: false,
        why: `numeric(${before.precision},${before.scale}) → numeric(${first},${scale}) only raises the precision`,
      };
    }
    return {
      rewrites: true,
      why: 'a different scale (or a lower precision) changes how every value is stored',
    };
  }
  if ((from === 'timestamp' && to === 'timestamptz') || (from === 'timestamptz' && to === 'timestamp')) {
    return isUtc(options.timeZone)
      ? { rewrites: false, why: `with TimeZone ${options.timeZone ?? ''} the stored instants do not change` }
      : {
          rewrites: true,
          why:
            options.timeZone === null
              ? 'the session time zone is not known here; outside UTC every value is converted'
              : `with TimeZone ${options.timeZone} every value is converted`,
        };
  }
  if (from === 'cidr' && to === 'inet') return { rewrites: false, why: 'cidr → inet is binary-coercible' };
  if (from === to && target.modifiers.length === 0) {
    return { rewrites: false, why: `the type stays ${column.type}` };
  }
  return { rewrites: true, why: `${column.type} → ${to} converts every value` };
}
