import { GateError } from '../errors.js';
import type { AnalysedStatement } from './analyse.js';
import { executedSites, viaPrefix } from './nested-code.js';
import { child, isNode, list, stringsOf, type Node } from './parse-tree.js';
import { sideEffectsOf } from './side-effects.js';
import { DRY_RUN_REFUSED_CODES, RISK_TITLES, type RiskFinding } from './risk-codes.js';

/**
 * What each statement will really do to a live database: the lock it takes, whether it rewrites or
 * scans the table, whether it destroys data, and a safer way where one exists. Computed from the
 * Postgres parse tree, never from the agent's description. Pure: the same SQL gives the same findings.
 */

function relationName(rangeVar: unknown): string {
  if (!isNode(rangeVar) || typeof rangeVar.relname !== 'string') return '?';
  return typeof rangeVar.schemaname === 'string'
    ? `${rangeVar.schemaname}.${rangeVar.relname}`
    : rangeVar.relname;
}

/** Functions whose value differs per row: a default using one forces a table rewrite. */
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

const SERIAL_TYPES = new Set(['serial', 'serial4', 'bigserial', 'serial8', 'smallserial', 'serial2']);

type DefaultKind = 'none' | 'constant' | 'volatile' | 'unknown';

/** Classifies a column default expression without a database: literals and now() are safe. */
function defaultKind(expression: unknown): DefaultKind {
  if (!isNode(expression)) return 'none';
  if ('A_Const' in expression || 'SQLValueFunction' in expression) return 'constant';
  const cast = child(expression, 'TypeCast');
  if (cast) return defaultKind(cast.arg);
  const call = child(expression, 'FuncCall');
  if (call) {
    const fn = stringsOf(list(call, 'funcname')).at(-1)?.toLowerCase() ?? '';
    if (VOLATILE_FUNCTIONS.has(fn)) return 'volatile';
    if (['now', 'current_timestamp', 'transaction_timestamp', 'current_date'].includes(fn)) return 'constant';
    return 'unknown';
  }
  return 'unknown';
}

interface Context {
  readonly statement: AnalysedStatement;
  /** Tables created earlier in this migration: empty, so their locks and scans cost nothing. */
  readonly created: ReadonlySet<string>;
  readonly findings: RiskFinding[];
  /** Where nested SQL runs ("Inside the DO block: "), prefixed to each message; '' at top level. */
  readonly prefix: string;
}

function add(ctx: Context, finding: Omit<RiskFinding, 'statement'>): void {
  ctx.findings.push({
    statement: ctx.statement.index + 1,
    ...finding,
    message: `${ctx.prefix}${finding.message}`,
  });
}

function analyseAddColumn(ctx: Context, table: string, column: Node): void {
  const name = typeof column.colname === 'string' ? column.colname : '?';
  const typeNames = stringsOf(list(child(column, 'typeName'), 'names')).map((n) => n.toLowerCase());
  const constraints = list(column, 'constraints')
    .map((c) => child(c, 'Constraint'))
    .filter(isNode);
  const defaultConstraint = constraints.find((c) => c.contype === 'CONSTR_DEFAULT');
  const notNull = constraints.some((c) => c.contype === 'CONSTR_NOTNULL');
  const identityOrGenerated = constraints.some(
    (c) => c.contype === 'CONSTR_IDENTITY' || c.contype === 'CONSTR_GENERATED',
  );
  const kind: DefaultKind = typeNames.some((t) => SERIAL_TYPES.has(t))
    ? 'volatile'
    : identityOrGenerated
      ? 'volatile'
      : defaultKind(defaultConstraint?.raw_expr);
  const lock = `ACCESS EXCLUSIVE on ${table}`;
  if (kind === 'volatile' || kind === 'unknown') {
    add(ctx, {
      code: 'ADD_COLUMN_REWRITE',
      severity: kind === 'volatile' ? 'danger' : 'warning',
      lock,
      message:
        `Adding column ${name} with a ${kind === 'volatile' ? 'volatile default (computed per row)' : 'default Postgres may not treat as constant'} ` +
        `${kind === 'volatile' ? 'rewrites' : 'may rewrite'} all of ${table} while holding ACCESS EXCLUSIVE: no reads or writes until it finishes.`,
      safer: `Add ${name} without a default, backfill it in batches, then SET DEFAULT for new rows.`,
    });
  } else if (kind === 'constant') {
    add(ctx, {
      code: 'ADD_COLUMN_METADATA_ONLY',
      severity: 'info',
      lock,
      message: `Adding column ${name} with a constant default is a catalog change (PostgreSQL 11+): no rewrite; the lock is brief once granted.`,
      safer: null,
    });
  } else if (notNull) {
    add(ctx, {
      code: 'ADD_COLUMN_NOT_NULL_NO_DEFAULT',
      severity: 'warning',
      lock,
      message: `Column ${name} is NOT NULL without a default: the statement fails if ${table} has any row.`,
      safer: `Give ${name} a constant DEFAULT, or add it nullable and backfill before setting NOT NULL.`,
    });
  }
}

function analyseConstraint(ctx: Context, table: string, constraint: Node): void {
  const type = constraint.contype;
  const conname = typeof constraint.conname === 'string' ? constraint.conname : 'the constraint';
  if ((type === 'CONSTR_FOREIGN' || type === 'CONSTR_CHECK') && constraint.skip_validation !== true) {
    const foreign = type === 'CONSTR_FOREIGN';
    add(ctx, {
      code: 'CONSTRAINT_VALIDATION_SCAN',
      severity: 'danger',
      lock: foreign
        ? `SHARE ROW EXCLUSIVE on ${table} and ${relationName(constraint.pktable)}`
        : `ACCESS EXCLUSIVE on ${table}`,
      message:
        `${foreign ? 'FOREIGN KEY' : 'CHECK'} ${conname} without NOT VALID checks every existing row of ${table} ` +
        `while holding the lock${foreign ? ': writes to both tables wait' : ': reads and writes wait'}.`,
      safer: `ADD CONSTRAINT ${conname} ... NOT VALID, then VALIDATE CONSTRAINT ${conname} in a separate request (SHARE UPDATE EXCLUSIVE: writes continue).`,
    });
  }
  if ((type === 'CONSTR_PRIMARY' || type === 'CONSTR_UNIQUE') && typeof constraint.indexname !== 'string') {
    add(ctx, {
      code: 'UNIQUE_INDEX_UNDER_EXCLUSIVE_LOCK',
      severity: 'danger',
      lock: `ACCESS EXCLUSIVE on ${table}`,
      message: `Adding a ${type === 'CONSTR_PRIMARY' ? 'PRIMARY KEY' : 'UNIQUE'} constraint builds its index while ${table} is locked against reads and writes.`,
      safer: 'CREATE UNIQUE INDEX CONCURRENTLY first (its own request), then ADD CONSTRAINT ... USING INDEX.',
    });
  }
}

function analyseAlterTable(ctx: Context, node: Node): void {
  const table = relationName(node.relation);
  if (ctx.created.has(table)) return;
  for (const item of list(node, 'cmds')) {
    const cmd = child(item, 'AlterTableCmd');
    if (!cmd) continue;
    const column = typeof cmd.name === 'string' ? cmd.name : '?';
    switch (cmd.subtype) {
      case 'AT_AddColumn': {
        const def = child(cmd.def, 'ColumnDef');
        if (def) analyseAddColumn(ctx, table, def);
        break;
      }
      case 'AT_SetNotNull':
        add(ctx, {
          code: 'SET_NOT_NULL_SCAN',
          severity: 'danger',
          lock: `ACCESS EXCLUSIVE on ${table}`,
          message: `SET NOT NULL on ${column} scans all of ${table} while holding ACCESS EXCLUSIVE.`,
          safer: `ADD CONSTRAINT ${column}_not_null CHECK (${column} IS NOT NULL) NOT VALID; VALIDATE CONSTRAINT it in a separate request; then SET NOT NULL (PostgreSQL 12+ skips the scan) and drop the CHECK.`,
        });
        break;
      case 'AT_AlterColumnType':
        add(ctx, {
          code: 'COLUMN_TYPE_REWRITE',
          severity: 'danger',
          lock: `ACCESS EXCLUSIVE on ${table}`,
          message: `Changing the type of ${column} rewrites ${table} and its indexes under ACCESS EXCLUSIVE (unless the types are binary-coercible, such as widening a varchar).`,
          safer: `Add a new column of the new type, backfill it in batches, switch the application, then drop ${column}.`,
        });
        break;
      case 'AT_AddConstraint': {
        const constraint = child(cmd.def, 'Constraint');
        if (constraint) analyseConstraint(ctx, table, constraint);
        break;
      }
      case 'AT_DropColumn':
        add(ctx, {
          code: 'DROP_COLUMN',
          severity: 'danger',
          lock: `ACCESS EXCLUSIVE on ${table}`,
          message: `Dropping ${column} destroys its data for good; application code still reading it breaks.`,
          safer:
            'Stop using the column in the application first; back it up (backup_before) before dropping.',
        });
        break;
      default:
        break;
    }
  }
}

function analyseStatement(ctx: Context): void {
  const { kind, node } = ctx.statement;
  switch (kind) {
    case 'AlterTableStmt':
      analyseAlterTable(ctx, node);
      return;
    case 'IndexStmt': {
      const table = relationName(node.relation);
      if (ctx.created.has(table)) return;
      if (node.concurrent === true) {
        add(ctx, {
          code: 'CONCURRENT_INDEX',
          severity: 'info',
          lock: `SHARE UPDATE EXCLUSIVE on ${table}`,
          message:
            'Built CONCURRENTLY: writes continue. It runs outside a transaction; if it fails it leaves an INVALID index that must be dropped before retrying.',
          safer: null,
        });
      } else {
        add(ctx, {
          code: 'INDEX_BLOCKS_WRITES',
          severity: 'danger',
          lock: `SHARE on ${table}`,
          message: `CREATE INDEX without CONCURRENTLY blocks every INSERT, UPDATE and DELETE on ${table} for the whole index build.`,
          safer:
            `CREATE INDEX CONCURRENTLY ${typeof node.idxname === 'string' ? node.idxname : ''} ON ${table} (...) as a request of its own.`.replace(
              '  ',
              ' ',
            ),
        });
      }
      return;
    }
    case 'DropStmt':
      if (node.removeType === 'OBJECT_TABLE') {
        add(ctx, {
          code: 'DROP_TABLE',
          severity: 'danger',
          lock: `ACCESS EXCLUSIVE on ${ctx.statement.relations.join(', ')}`,
          message: `DROP TABLE destroys ${ctx.statement.relations.join(', ')} and all their data for good.`,
          safer:
            'Rename the table first and drop it in a later request once nothing uses it; back it up (backup_before).',
        });
      }
      return;
    case 'RenameStmt':
      if (node.renameType === 'OBJECT_TABLE' || node.renameType === 'OBJECT_COLUMN') {
        const table = relationName(node.relation);
        add(ctx, {
          code: 'RENAME',
          severity: 'warning',
          lock: `ACCESS EXCLUSIVE on ${table}`,
          message: `Renaming ${node.renameType === 'OBJECT_COLUMN' ? `column ${String(node.subname)} of ` : ''}${table} breaks every running query and deployed application version that uses the old name.`,
          safer:
            'Expand and contract: add the new name (column or view) alongside the old one, move the application, then remove the old name.',
        });
      }
      return;
    case 'TruncateStmt':
      add(ctx, {
        code: 'TRUNCATE',
        severity: 'danger',
        lock: `ACCESS EXCLUSIVE on ${ctx.statement.relations.join(', ')}`,
        message: `TRUNCATE deletes every row of ${ctx.statement.relations.join(', ')}.`,
        safer: 'Back the table up (backup_before), or DELETE in batches with a WHERE clause.',
      });
      return;
    case 'UpdateStmt':
    case 'DeleteStmt':
      if (node.whereClause === undefined) {
        const table = relationName(node.relation);
        const update = kind === 'UpdateStmt';
        add(ctx, {
          code: update ? 'UPDATE_WITHOUT_WHERE' : 'DELETE_WITHOUT_WHERE',
          severity: 'danger',
          lock: `ROW EXCLUSIVE on ${table}, and a lock on every row until commit`,
          message: `${update ? 'UPDATE' : 'DELETE'} without WHERE ${update ? 'changes' : 'deletes'} every row of ${table} in one transaction.`,
          safer: `Add a WHERE clause, or ${update ? 'update' : 'delete'} in batches of a few thousand rows per request.`,
        });
      }
      return;
    default:
      return;
  }
}

const STRONG_LOCK_KINDS = new Set(['AlterTableStmt', 'IndexStmt', 'DropStmt', 'RenameStmt', 'TruncateStmt']);

/** Findings for a whole migration, in statement order, migration-wide ones last. */
/** Statements that write the relation in their `relation` field (COPY only when FROM). */
const WRITING_KINDS = new Set([
  'InsertStmt',
  'UpdateStmt',
  'DeleteStmt',
  'MergeStmt',
  'CopyStmt',
  'TruncateStmt',
]);

/** Writes to a foreign table happen on another server, through its wrapper, outside this transaction. */
function foreignTableWrite(
  statement: AnalysedStatement,
  foreignTables: ReadonlySet<string>,
): RiskFinding | null {
  if (!WRITING_KINDS.has(statement.kind) || foreignTables.size === 0) return null;
  if (statement.kind === 'CopyStmt' && statement.node.is_from !== true) return null;
  const written = statement.relations.filter((relation) => foreignTables.has(relation));
  if (written.length === 0) return null;
  return {
    statement: statement.index + 1,
    code: 'FOREIGN_TABLE_WRITE',
    severity: 'danger',
    lock: null,
    message:
      `${written.join(', ')} ${written.length === 1 ? 'is a foreign table' : 'are foreign tables'} (from the live catalog): ` +
      'the write goes to another server through its foreign-data wrapper, which may commit it on its own; ' +
      'no rollback or dry run of this migration is sure to undo it.',
    safer: 'Run the change on the server that owns the data, through its own approval.',
  };
}

/**
 * Findings for a whole migration. `catalog.foreignTables`: relations (as named in the SQL) that the
 * live catalog says are foreign tables, when the catalog was read (at request time).
 */
export function assessRisks(
  statements: readonly AnalysedStatement[],
  execution: { readonly lockTimeoutMs: number; readonly lockRetries: number },
  catalog: { readonly foreignTables: ReadonlySet<string> } = { foreignTables: new Set() },
): RiskFinding[] {
  const findings: RiskFinding[] = [];
  const created = new Set<string>();
  const sites = executedSites(statements);
  // Nested SQL (DO blocks, called functions) gets the same rules, attributed to the statement running it.
  for (const site of sites) {
    const prefix = viaPrefix(site.via);
    if (site.type === 'opaque') {
      findings.push({
        statement: site.index + 1,
        ...site.effect,
        message: `${prefix}${site.effect.message}`,
      });
      continue;
    }
    const { statement } = site;
    analyseStatement({ statement, created, findings, prefix });
    for (const found of sideEffectsOf(statement)) {
      findings.push({ statement: statement.index + 1, ...found, message: `${prefix}${found.message}` });
    }
    const foreign = foreignTableWrite(statement, catalog.foreignTables);
    if (foreign) findings.push({ ...foreign, message: `${prefix}${foreign.message}` });
    if (statement.kind === 'CreateStmt' || statement.kind === 'CreateTableAsStmt') {
      for (const relation of statement.relations.slice(0, 1)) created.add(relation);
    }
  }
  if (statements.length > 1 && statements.some((s) => !s.transactional)) {
    findings.push({
      statement: null,
      code: 'NON_ATOMIC_MIGRATION',
      severity: 'warning',
      lock: null,
      message:
        'A statement here cannot run in a transaction, so every statement runs and commits on its own: if one fails, the ones before it stay applied.',
      safer:
        'Submit the statement that cannot run in a transaction (e.g. CREATE INDEX CONCURRENTLY) as a request of its own.',
    });
  }
  if (sites.some((site) => site.type === 'statement' && STRONG_LOCK_KINDS.has(site.statement.kind))) {
    findings.push({
      statement: null,
      code: 'LOCK_TIMEOUT_ENFORCED',
      severity: 'info',
      lock: null,
      message:
        `The executor sets lock_timeout = ${execution.lockTimeoutMs} ms, so a statement never queues other sessions behind it for longer; ` +
        `a transaction that gives up is rolled back whole and retried up to ${execution.lockRetries} times with backoff.`,
      safer: null,
    });
  }
  return findings;
}

/**
 * Refuses a dry run that would not be dry: call it after `assessRisks` with the request's dry_run flag.
 * A dry run rolls back at the end, which cannot undo an OS command, a remote commit or a killed session.
 */
export function assertDryRunIsDry(
  findings: readonly RiskFinding[],
  options: { readonly dryRun: boolean },
): void {
  if (!options.dryRun) return;
  const escaping = findings.find((finding) => DRY_RUN_REFUSED_CODES.has(finding.code));
  if (!escaping) return;
  const where = escaping.statement === null ? 'the migration' : `statement ${escaping.statement}`;
  throw new GateError(
    'DRY_RUN_NOT_DRY',
    `A dry run would not be dry: ${where} (${RISK_TITLES[escaping.code]}) has effects no rollback undoes, ` +
      'or that the gate cannot see. Nothing was written; remove it, or submit without dry_run for a human to review.',
    { context: { statement: escaping.statement } },
  );
}
