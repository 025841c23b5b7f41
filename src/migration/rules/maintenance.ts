import { child, isNode, list } from '../parse-tree.js';
import { rangeVarName } from '../schema-facts.js';
import { EffectBuilder, existing, type RuleContext } from './context.js';

/** Index builds and the maintenance commands that rewrite or rebuild a table: REINDEX, VACUUM, CLUSTER, REFRESH. */

export function createIndex(ctx: RuleContext, out: EffectBuilder): void {
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

export function maintenance(ctx: RuleContext, out: EffectBuilder): void {
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
