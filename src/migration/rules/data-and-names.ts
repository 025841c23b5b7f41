import { child, list, stringConstant, visitNodes } from '../parse-tree.js';
import { dottedName, rangeVarName } from '../schema-facts.js';
import { EffectBuilder, existing, isEmpty, type RuleContext } from './context.js';

/** What destroys data or breaks the code that uses a name: drops, TRUNCATE, unqualified writes, renames, enums, domains. */

export function dropStatement(ctx: RuleContext, out: EffectBuilder): void {
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

export function truncate(ctx: RuleContext, out: EffectBuilder): void {
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

export function updateOrDelete(ctx: RuleContext, out: EffectBuilder): void {
  const { node, kind } = ctx.statement;
  const table = rangeVarName(node.relation) ?? '?';
  out.lock(table, 'ROW EXCLUSIVE');
  const update = kind === 'UpdateStmt';
  if (node.whereClause !== undefined || ctx.state.created.has(table)) return;
  // Rows deleted are lost whatever the table held when this was requested; an update of an empty
  // table costs nothing.
  if (update && (!existing(ctx, table) || isEmpty(ctx, table))) return;
  out.add({
    code: update ? 'UPDATE_WITHOUT_WHERE' : 'DELETE_WITHOUT_WHERE',
    severity: 'danger',
    message: `${update ? 'UPDATE' : 'DELETE'} without WHERE ${update ? 'changes' : 'deletes'} every row of ${table} in one transaction, holding a lock on each row until it commits: writers of those rows wait.`,
    safer: `Add a WHERE clause, or ${update ? 'update' : 'delete'} in batches of a few thousand rows per request.`,
    // Judged by the table lock too: under an earlier ALTER's ACCESS EXCLUSIVE, reads wait as well.
    work: { relation: table, does: update ? 'updates' : 'deletes from' },
  });
}

export function rename(ctx: RuleContext, out: EffectBuilder): void {
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

export function alterEnum(ctx: RuleContext, out: EffectBuilder): void {
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

export function alterDomain(ctx: RuleContext, out: EffectBuilder): void {
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

export function setting(ctx: RuleContext): void {
  const { node } = ctx.statement;
  if (typeof node.name !== 'string') return;
  if (node.name.toLowerCase() === 'timezone' && node.kind === 'VAR_SET_VALUE') {
    ctx.state.timeZone = stringConstant(list(node, 'args')[0]) ?? ctx.state.timeZone;
  }
}
