import { newTypeOf, typeChangeRewrites } from '../column-types.js';
import { child, isNode, list, stringConstant, stringsOf, type Node } from '../parse-tree.js';
import { rangeVarName } from '../schema-facts.js';
import {
  checksOf,
  EffectBuilder,
  existing,
  isEmpty,
  notNullColumnOf,
  prove,
  provenNotNull,
  SERIAL_TYPES,
  volatilityOf,
  type RuleContext,
} from './context.js';

/** ALTER TABLE: columns, constraints, type changes, partitions, storage. */

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
      ctx.state.addedNotValid.add(`${table} ${conname}`);
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
      ctx.state.addedNotValid.add(`${table} ${conname}`);
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
  const sameTransaction = ctx.transactional && ctx.state.addedNotValid.has(`${table} ${name}`);
  out.add({
    code: 'CONSTRAINT_VALIDATION_SCAN',
    severity: 'by lock',
    message:
      `VALIDATE CONSTRAINT ${name} checks every row of ${table}.` +
      (sameTransaction
        ? ` ${name} was added NOT VALID earlier in this same transaction, so NOT VALID bought nothing: the lock that ADD took is still held.`
        : ''),
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

export function alterTable(ctx: RuleContext, out: EffectBuilder): void {
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
