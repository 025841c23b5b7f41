import { alterTable } from './rules/alter-table.js';
import { EffectBuilder, type RuleContext, type StatementEffect } from './rules/context.js';
import {
  alterDomain,
  alterEnum,
  dropStatement,
  rename,
  setting,
  truncate,
  updateOrDelete,
} from './rules/data-and-names.js';
import { createIndex, maintenance } from './rules/maintenance.js';
import { rangeVarName } from './schema-facts.js';

export {
  newMigrationState,
  type Candidate,
  type MigrationState,
  type StatementEffect,
} from './rules/context.js';

/**
 * What one statement does to a live database, from its parse tree, the catalog (SchemaFacts) and
 * what the statements before it in the same migration did (MigrationState): the locks it takes, the
 * work it does in proportion to a table's size (a scan, a rewrite, an index build) and the findings
 * that do not depend on locks (data lost, code broken, a statement that will fail). risks.ts then
 * judges each piece of work by the locks held while it runs, across the whole transaction.
 */

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
