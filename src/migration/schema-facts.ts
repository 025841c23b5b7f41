import type { SqlSession } from '../db/index.js';
import type { AnalysedStatement } from './analyse.js';
import { regclassText } from './catalog.js';
import { executedSites } from './nested-code.js';
import { child, isNode, list, stringsOf, visitNodes, type Node } from './parse-tree.js';

/**
 * What the risk rules need to know about the target database instead of guessing: column types,
 * constraints and whether they are validated, whether a table holds any row, partitions, who uses a
 * domain, how volatile a function is, the server's version and time zone. Read once per request from
 * the live catalog (`readSchemaFacts`); `NO_SCHEMA_FACTS` stands for a database the gate cannot read,
 * where every rule assumes the worst, as a static linter must.
 */

export interface ColumnFacts {
  /** format_type(): `character varying(10)`, `numeric(10,2)`, `timestamp without time zone`. */
  readonly type: string;
  /** pg_type.typname: `varchar`, `numeric`, `timestamp`, a domain's own name. */
  readonly typname: string;
  /** atttypmod: -1 when unconstrained. */
  readonly typmod: number;
  readonly notNull: boolean;
}

export interface CheckFacts {
  readonly name: string;
  readonly validated: boolean;
  /** pg_get_constraintdef(): `CHECK ((shipped_at IS NOT NULL))`. */
  readonly definition: string;
}

export interface TableFacts {
  /** As the SQL names it. */
  readonly name: string;
  /** pg_class.relkind. */
  readonly kind: 'r' | 'p' | 'm' | 'f' | 'v' | 'other';
  /** No row stored (no page written; for a partitioned table, in none of its partitions). */
  readonly empty: boolean;
  readonly columns: ReadonlyMap<string, ColumnFacts>;
  readonly checks: readonly CheckFacts[];
  /** Direct partitions, as regclass text. */
  readonly partitions: readonly string[];
  readonly defaultPartition: string | null;
  /** Tables whose foreign keys reference this one (TRUNCATE … CASCADE empties them too). */
  readonly referencedBy: readonly string[];
}

export interface IndexFacts {
  /** Its table, as regclass text. */
  readonly table: string;
  readonly unique: boolean;
  /** Every column of the index is NOT NULL (a primary key on it needs no scan). */
  readonly columnsNotNull: boolean;
}

export type Volatility = 'immutable' | 'stable' | 'volatile';

export interface SchemaFacts {
  /** server_version_num, e.g. 150019; null when unknown. */
  readonly serverVersion: number | null;
  /** The TimeZone a job's session starts with; null when unknown. */
  readonly timeZone: string | null;
  table(name: string): TableFacts | undefined;
  index(name: string): IndexFacts | undefined;
  /** The most volatile function of that name (any overload, any schema); undefined when unknown. */
  functionVolatility(name: string): Volatility | undefined;
  /** The most volatile function behind an operator of that name; undefined when unknown. */
  operatorVolatility(name: string): Volatility | undefined;
  /** Tables with a column of the domain, and whether each is empty; undefined when unknown. */
  domainUsers(domain: string): readonly { readonly table: string; readonly empty: boolean }[] | undefined;
  /** Tables, materialized views and foreign tables in a schema; undefined when unknown. */
  schemaTables(schema: string): readonly string[] | undefined;
}

/** No catalog: every lookup is unknown, and the rules assume the worst. */
export const NO_SCHEMA_FACTS: SchemaFacts = {
  serverVersion: null,
  timeZone: null,
  table: () => undefined,
  index: () => undefined,
  functionVolatility: () => undefined,
  operatorVolatility: () => undefined,
  domainUsers: () => undefined,
  schemaTables: () => undefined,
};

/** A name as the parse tree spells a RangeVar: `schema.table` or `table`. */
export function rangeVarName(rangeVar: unknown): string | null {
  if (!isNode(rangeVar) || typeof rangeVar.relname !== 'string') return null;
  return typeof rangeVar.schemaname === 'string'
    ? `${rangeVar.schemaname}.${rangeVar.relname}`
    : rangeVar.relname;
}

/** A qualified name given as a list of String nodes (DROP INDEX, ALTER DOMAIN, types). */
export function dottedName(items: readonly unknown[]): string {
  return stringsOf(items).join('.');
}

/** The names a migration's rules may look up, collected from its parse trees. */
interface Wanted {
  readonly tables: Set<string>;
  readonly indexes: Set<string>;
  readonly functions: Set<string>;
  readonly operators: Set<string>;
  readonly domains: Set<string>;
  readonly schemas: Set<string>;
}

function wantedBy(topLevel: readonly AnalysedStatement[]): Wanted {
  // Statements nested in DO blocks and functions get the same rules, so their names are looked up too.
  const statements = executedSites(topLevel).flatMap((site) =>
    site.type === 'statement' ? [site.statement] : [],
  );
  const wanted: Wanted = {
    tables: new Set(),
    indexes: new Set(),
    functions: new Set(),
    operators: new Set(),
    domains: new Set(),
    schemas: new Set(),
  };
  for (const statement of statements) {
    for (const relation of statement.relations) wanted.tables.add(relation);
    const { kind, node } = statement;
    if (kind === 'DropStmt' || kind === 'RenameStmt' || kind === 'AlterObjectSchemaStmt') {
      const type = node.removeType ?? node.renameType ?? node.objectType;
      const objects = kind === 'DropStmt' ? list(node, 'objects') : [node.object];
      if (type === 'OBJECT_INDEX') {
        for (const object of objects) wanted.indexes.add(dottedName(list(child(object, 'List'), 'items')));
        const renamed = rangeVarName(node.relation);
        if (renamed) wanted.indexes.add(renamed);
      }
      if (type === 'OBJECT_SCHEMA') {
        for (const object of objects) {
          const name = child(object, 'String')?.sval;
          if (typeof name === 'string') wanted.schemas.add(name);
        }
        if (typeof node.subname === 'string') wanted.schemas.add(node.subname);
      }
    }
    if (kind === 'ReindexStmt' && node.kind === 'REINDEX_OBJECT_INDEX') {
      const name = rangeVarName(node.relation);
      if (name) wanted.indexes.add(name);
    }
    if (kind === 'AlterTableStmt') {
      for (const item of list(node, 'cmds')) {
        const def = child(child(item, 'AlterTableCmd')?.def, 'Constraint');
        if (typeof def?.indexname === 'string') wanted.indexes.add(def.indexname);
      }
    }
    if (kind === 'AlterDomainStmt') wanted.domains.add(dottedName(list(node, 'typeName')));
    visitNodes(node, (key, value) => {
      if (key === 'FuncCall') {
        const name = stringsOf(list(value, 'funcname')).at(-1);
        if (name) wanted.functions.add(name.toLowerCase());
      }
      if (key === 'A_Expr') {
        const name = stringsOf(list(value, 'name')).at(-1);
        if (name) wanted.operators.add(name);
      }
      return undefined;
    });
  }
  return wanted;
}

const TABLE_FACTS_SQL = `
select c.relkind::text as relkind,
       case when c.relkind = 'p' then not exists (
              select 1 from pg_catalog.pg_partition_tree(c.oid) t
               where t.isleaf and pg_catalog.pg_relation_size(t.relid) > 0)
            when c.relkind in ('r', 'm') then pg_catalog.pg_relation_size(c.oid) = 0
            else false end as empty,
       (select coalesce(pg_catalog.json_agg(pg_catalog.json_build_object(
                 'name', a.attname, 'type', pg_catalog.format_type(a.atttypid, a.atttypmod),
                 'typname', t.typname, 'typmod', a.atttypmod, 'notNull', a.attnotnull) order by a.attnum), '[]')
          from pg_catalog.pg_attribute a join pg_catalog.pg_type t on t.oid = a.atttypid
         where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped) as columns,
       (select coalesce(pg_catalog.json_agg(pg_catalog.json_build_object(
                 'name', k.conname, 'validated', k.convalidated,
                 'definition', pg_catalog.pg_get_constraintdef(k.oid))), '[]')
          from pg_catalog.pg_constraint k where k.conrelid = c.oid and k.contype = 'c') as checks,
       (select coalesce(pg_catalog.json_agg(i.inhrelid::pg_catalog.regclass::text), '[]')
          from pg_catalog.pg_inherits i where i.inhparent = c.oid) as partitions,
       (select d.partdefid::pg_catalog.regclass::text from pg_catalog.pg_partitioned_table d
         where d.partrelid = c.oid and d.partdefid <> 0) as default_partition,
       (select coalesce(pg_catalog.json_agg(distinct k.conrelid::pg_catalog.regclass::text), '[]')
          from pg_catalog.pg_constraint k
         where k.confrelid = c.oid and k.contype = 'f' and k.conrelid <> c.oid) as referenced_by
  from pg_catalog.pg_class c
 where c.oid = pg_catalog.to_regclass($1)`;

const INDEX_FACTS_SQL = `
select i.indrelid::pg_catalog.regclass::text as "table", i.indisunique as "unique",
       coalesce((select pg_catalog.bool_and(a.attnotnull) from pg_catalog.pg_attribute a
                  where a.attrelid = i.indrelid and a.attnum = any (i.indkey::int2[])), false) as not_null
  from pg_catalog.pg_index i
 where i.indexrelid = pg_catalog.to_regclass($1)`;

const VOLATILITY_SQL = `
select p.proname as name,
       pg_catalog.max(case p.provolatile when 'v' then 3 when 's' then 2 else 1 end) as level
  from pg_catalog.pg_proc p where p.proname = any ($1::text[]) group by p.proname`;

const OPERATOR_VOLATILITY_SQL = `
select o.oprname as name,
       pg_catalog.max(case p.provolatile when 'v' then 3 when 's' then 2 else 1 end) as level
  from pg_catalog.pg_operator o join pg_catalog.pg_proc p on p.oid = o.oprcode
 where o.oprname = any ($1::text[]) group by o.oprname`;

const DOMAIN_USERS_SQL = `
select distinct a.attrelid::pg_catalog.regclass::text as "table",
       pg_catalog.pg_relation_size(a.attrelid) = 0 as empty
  from pg_catalog.pg_attribute a join pg_catalog.pg_class c on c.oid = a.attrelid
 where a.atttypid = pg_catalog.to_regtype($1) and not a.attisdropped and c.relkind in ('r', 'm')`;

const SCHEMA_TABLES_SQL = `
select c.oid::pg_catalog.regclass::text as name
  from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 where n.nspname = $1 and c.relkind in ('r', 'p', 'm', 'f') order by 1`;

const VOLATILITY: readonly Volatility[] = ['immutable', 'stable', 'volatile'];

function jsonArray(value: unknown): unknown[] {
  const parsed: unknown = typeof value === 'string' ? JSON.parse(value) : value;
  return Array.isArray(parsed) ? parsed : [];
}

function tableFactsOf(name: string, row: Record<string, unknown>): TableFacts {
  const relkind = String(row.relkind);
  const columns = new Map<string, ColumnFacts>();
  for (const column of jsonArray(row.columns)) {
    if (!isNode(column)) continue;
    columns.set(String(column.name), {
      type: String(column.type),
      typname: String(column.typname),
      typmod: Number(column.typmod),
      notNull: column.notNull === true,
    });
  }
  const checks = jsonArray(row.checks)
    .filter(isNode)
    .map((check: Node) => ({
      name: String(check.name),
      validated: check.validated === true,
      definition: String(check.definition),
    }));
  return {
    name,
    kind:
      relkind === 'r' || relkind === 'p' || relkind === 'm' || relkind === 'f' || relkind === 'v'
        ? relkind
        : 'other',
    empty: row.empty === true,
    columns,
    checks,
    partitions: jsonArray(row.partitions).map(String),
    defaultPartition: typeof row.default_partition === 'string' ? row.default_partition : null,
    referencedBy: jsonArray(row.referenced_by).map(String),
  };
}

/**
 * Reads the facts the rules need for `statements` from the catalog, as the session's search_path
 * resolves names: the tables and indexes they name, the default partitions of partitioned tables and
 * the tables referencing them (followed a few levels, for TRUNCATE … CASCADE), the volatility of every
 * function and operator they call, the users of an altered domain, the tables of a dropped schema.
 * Every value is a bind parameter; no name becomes SQL text.
 */
export async function readSchemaFacts(
  session: SqlSession,
  statements: readonly AnalysedStatement[],
): Promise<SchemaFacts> {
  const wanted = wantedBy(statements);
  const indexes = new Map<string, IndexFacts>();
  for (const name of wanted.indexes) {
    const { rows } = await session.query(INDEX_FACTS_SQL, [regclassText(name)]);
    const row = rows[0];
    if (row) {
      indexes.set(name, {
        table: String(row.table),
        unique: row.unique === true,
        columnsNotNull: row.not_null === true,
      });
    }
  }
  const tables = new Map<string, TableFacts>();
  const queue = [...wanted.tables, ...[...indexes.values()].map((index) => index.table)];
  // Follows default partitions and referencing tables a few steps; a cap keeps a hostile schema cheap.
  for (let read = 0; queue.length > 0 && read < 200; read += 1) {
    const name = queue.shift() ?? '';
    if (tables.has(name)) continue;
    const { rows } = await session.query(TABLE_FACTS_SQL, [regclassText(name)]);
    const row = rows[0];
    if (!row) continue;
    const facts = tableFactsOf(name, row);
    tables.set(name, facts);
    if (facts.defaultPartition) queue.push(facts.defaultPartition);
    queue.push(...facts.referencedBy);
  }
  const volatility = async (sql: string, names: ReadonlySet<string>) => {
    const found = new Map<string, Volatility>();
    if (names.size === 0) return found;
    const { rows } = await session.query(sql, [[...names]]);
    for (const row of rows) {
      const level = VOLATILITY[Number(row.level) - 1];
      if (level) found.set(String(row.name), level);
    }
    return found;
  };
  const functions = await volatility(VOLATILITY_SQL, wanted.functions);
  const operators = await volatility(OPERATOR_VOLATILITY_SQL, wanted.operators);
  const domains = new Map<string, { table: string; empty: boolean }[]>();
  for (const domain of wanted.domains) {
    const { rows } = await session.query(DOMAIN_USERS_SQL, [domain]);
    domains.set(
      domain,
      rows.map((row) => ({ table: String(row.table), empty: row.empty === true })),
    );
  }
  const schemas = new Map<string, string[]>();
  for (const schema of wanted.schemas) {
    const { rows } = await session.query(SCHEMA_TABLES_SQL, [schema]);
    schemas.set(
      schema,
      rows.map((row) => String(row.name)),
    );
  }
  const { rows: server } = await session.query(
    `select pg_catalog.current_setting('server_version_num')::int as version,
            pg_catalog.current_setting('TimeZone') as time_zone`,
  );
  return {
    serverVersion: server[0] ? Number(server[0].version) : null,
    timeZone: server[0] ? String(server[0].time_zone) : null,
    table: (name) => tables.get(name),
    index: (name) => indexes.get(name),
    functionVolatility: (name) => functions.get(name.toLowerCase()),
    operatorVolatility: (name) => operators.get(name),
    domainUsers: (domain) => domains.get(domain),
    schemaTables: (schema) => schemas.get(schema),
  };
}
