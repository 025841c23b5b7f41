import type { SqlSession } from '../db/index.js';

/**
 * Impact facts read from the live catalog, shown to the human next to the agent's own claims
 * ("touches a small table"): what exists, what it is, how big it is.
 */

export type RelationKind =
  | 'table'
  | 'partitioned table'
  | 'foreign table'
  | 'view'
  | 'materialized view'
  | 'index'
  | 'sequence'
  | 'other';

export interface RelationFacts {
  /** As named in the SQL, e.g. "customers" or "app.customers". */
  readonly name: string;
  readonly exists: boolean;
  readonly kind: RelationKind | null;
  /** pg_class.reltuples; null when never analysed (reltuples < 0) or not a table. */
  readonly estimated_rows: number | null;
  /** pg_total_relation_size: heap, TOAST and indexes; null for relations without storage (views). */
  readonly total_bytes: number | null;
  /** Indexes on the table; null for anything but tables and materialized views. */
  readonly indexes: number | null;
}

const KINDS: Readonly<Record<string, RelationKind>> = {
  r: 'table',
  p: 'partitioned table',
  f: 'foreign table',
  v: 'view',
  m: 'materialized view',
  i: 'index',
  I: 'index',
  S: 'sequence',
};

/**
 * The text to hand to to_regclass for a relation name as analyseSql reports it. The parser has already
 * case-folded and unquoted each part, so they are quoted again: to_regclass('Customers') would look up
 * `customers`, a different (or missing) table. The name is split at its first dot; a schema or table
 * whose own name contains a dot cannot be told apart from a qualified name in that form.
 * The result is only ever a bind parameter, never part of SQL text.
 */
export function regclassText(relation: string): string {
  const quote = (part: string) => `"${part.replaceAll('"', '""')}"`;
  const dot = relation.indexOf('.');
  return dot < 0 ? quote(relation) : `${quote(relation.slice(0, dot))}.${quote(relation.slice(dot + 1))}`;
}

/*
 * One round trip per relation. A partitioned table (or index) has no storage of its own: its size is
 * the sum over the partition tree and its rows the sum over the leaf partitions, else a table of
 * hundreds of gigabytes would be shown as "0 bytes". autovacuum never analyses a partitioned parent,
 * so its own reltuples is usually -1 even when every partition is analysed.
 * float8 and int casts keep numbers as numbers in both drivers (pg returns bigint as a string).
 */
const RELATION_FACTS_SQL = `
select c.relkind::text as relkind,
       case
         when c.relkind in ('r', 'm') then case when c.reltuples < 0 then null else c.reltuples::float8 end
         when c.relkind = 'p' then (
           select case when bool_or(leaf.reltuples < 0) then null else coalesce(sum(leaf.reltuples::float8), 0) end
             from pg_partition_tree(c.oid) tree
             join pg_class leaf on leaf.oid = tree.relid
            where tree.isleaf)
       end as estimated_rows,
       case
         when c.relkind in ('p', 'I') then (
           select coalesce(sum(pg_total_relation_size(tree.relid)), 0)::float8
             from pg_partition_tree(c.oid) tree)
         when c.relkind in ('r', 'm', 'i', 'S', 't') then pg_total_relation_size(c.oid)::float8
       end as total_bytes,
       case
         when c.relkind in ('r', 'p', 'm') then (select count(*)::int from pg_index i where i.indrelid = c.oid)
       end as indexes
  from pg_class c
 where c.oid = to_regclass($1)`;

function numberOrNull(value: unknown): number | null {
  return value === null || value === undefined ? null : Number(value);
}

/**
 * Looks each relation up in the catalog as the session's search_path resolves it. A name that does not
 * resolve (not created yet, or a typo) comes back with exists: false and every other field null.
 */
export async function describeRelations(
  session: SqlSession,
  relations: readonly string[],
): Promise<RelationFacts[]> {
  const facts: RelationFacts[] = [];
  for (const name of relations) {
    const { rows } = await session.query(RELATION_FACTS_SQL, [regclassText(name)]);
    const row = rows[0];
    if (!row) {
      facts.push({ name, exists: false, kind: null, estimated_rows: null, total_bytes: null, indexes: null });
      continue;
    }
    const rowsEstimate = numberOrNull(row.estimated_rows);
    facts.push({
      name,
      exists: true,
      kind: KINDS[String(row.relkind)] ?? 'other',
      estimated_rows: rowsEstimate === null ? null : Math.round(rowsEstimate),
      total_bytes: numberOrNull(row.total_bytes),
      indexes: numberOrNull(row.indexes),
    });
  }
  return facts;
}

const UNITS = ['kB', 'MB', 'GB', 'TB', 'PB'] as const;

/** Sizes in Postgres' units (powers of 1024, as pg_size_pretty): "512 bytes", "640 kB", "1.2 GB". */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes) || Math.round(bytes) < 1024) {
    const whole = Math.round(bytes);
    return `${whole} ${whole === 1 ? 'byte' : 'bytes'}`;
  }
  let value = bytes / 1024;
  let unit = 0;
  // Moves up on the rounded value, so 1023.7 kB reads "1.0 MB", never "1024 kB".
  while (Math.round(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  // One decimal while it carries information (1.2 GB); whole numbers above (640 kB).
  const shown = value < 9.95 ? value.toFixed(1) : String(Math.round(value));
  return `${shown} ${UNITS[unit] ?? ''}`;
}
