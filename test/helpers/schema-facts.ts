import { NO_SCHEMA_FACTS, type SchemaFacts, type TableFacts } from '../../src/migration/schema-facts.js';

/** A table of the catalog as the risk rules see it: a non-empty plain table unless told otherwise. */
export function tableFacts(name: string, facts: Partial<Omit<TableFacts, 'name'>> = {}): TableFacts {
  return {
    name,
    kind: 'r',
    empty: false,
    columns: new Map(),
    checks: [],
    partitions: [],
    defaultPartition: null,
    referencedBy: [],
    ...facts,
  };
}

/** A catalog that knows only `tables` (and nothing else), for rules judged without a database. */
export function schemaFacts(tables: readonly TableFacts[], rest: Partial<SchemaFacts> = {}): SchemaFacts {
  const byName = new Map(tables.map((table) => [table.name, table]));
  return { ...NO_SCHEMA_FACTS, table: (name) => byName.get(name), ...rest };
}
