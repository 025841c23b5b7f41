import { parsePlPgSQLSync, scanSync } from 'libpg-query';
import { isNode, parseNestedSql, statementOfNode, type AnalysedStatement, type Node } from './parse-tree.js';

/**
 * What a migration does beyond its own tables: statements and function calls whose effects escape the
 * transaction (an OS command, a remote connection, a killed session, a server file), code the gate
 * cannot read (dynamic SQL, other languages), and SQL nested in DO blocks and in functions the
 * migration creates and then calls. The agent writing the SQL is the adversary: everything here is
 * computed from the parse tree, and whatever cannot be read is reported as such, never assumed safe.
 */

// ---------------------------------------------------------------------------------------------------
// Parse-tree helpers

function child(node: unknown, key: string): Node | null {
  return isNode(node) && isNode(node[key]) ? node[key] : null;
}

function list(node: unknown, key: string): unknown[] {
  return isNode(node) && Array.isArray(node[key]) ? node[key] : [];
}

function stringsOf(items: readonly unknown[]): string[] {
  return items
    .map((item) => child(item, 'String')?.sval)
    .filter((name): name is string => typeof name === 'string');
}

/**
 * Visits every wrapped node (`{ FuncCall: {...} }` is visited as key `FuncCall`) and every embedded
 * node (`CallStmt.funccall`), depth first in document order. Iterative: a hostile tree may be deep.
 * Returning 'skip' leaves that node's children unvisited.
 */
function visitNodes(tree: unknown, visit: (key: string, value: Node) => 'skip' | undefined): void {
  const stack: unknown[] = [tree];
  while (stack.length > 0) {
    const current = stack.pop();
    if (Array.isArray(current)) {
      for (let i = current.length - 1; i >= 0; i -= 1) stack.push(current[i]);
      continue;
    }
    if (!isNode(current)) continue;
    const children: unknown[] = [];
    for (const [key, value] of Object.entries(current)) {
      if (isNode(value)) {
        if (visit(key, value) !== 'skip') children.push(value);
      } else if (Array.isArray(value)) {
        children.push(value);
      }
    }
    for (let i = children.length - 1; i >= 0; i -= 1) stack.push(children[i]);
  }
}

function defElem(options: readonly unknown[], name: string): Node | null {
  for (const option of options) {
    const element = child(option, 'DefElem');
    if (element?.defname === name) return element;
  }
  return null;
}

/** A string constant, seen through casts ('lock_timeout'::text); null when not a constant. */
function stringConstant(expression: unknown): string | null {
  const cast = child(expression, 'TypeCast');
  if (cast) return stringConstant(cast.arg);
  const value = child(child(expression, 'A_Const'), 'sval')?.sval;
  return typeof value === 'string' ? value : null;
}

export interface FunctionCall {
  /** The schema the call names, or null when unqualified. */
  readonly schema: string | null;
  /** The function's name, lower-case (the parser already folds unquoted names). */
  readonly name: string;
  readonly args: readonly unknown[];
}

/**
 * Every function call in a statement: FuncCall anywhere (select lists, FROM, defaults, checks, index
 * expressions, VALUES) and CALL. A new function's BEGIN ATOMIC body does not run when it is created;
 * it is analysed where the function is called.
 */
export function functionCalls(node: unknown): FunctionCall[] {
  const calls: FunctionCall[] = [];
  visitNodes(node, (key, value) => {
    if (key === 'sql_body') return 'skip';
    if (key !== 'FuncCall' && key !== 'funccall') return;
    const parts = stringsOf(list(value, 'funcname'));
    const name = parts.at(-1);
    if (name === undefined) return;
    calls.push({ schema: parts.at(-2) ?? null, name: name.toLowerCase(), args: list(value, 'args') });
  });
  return calls;
}

/** A core function is found unqualified (pg_catalog comes first) or qualified with pg_catalog. */
function isCore(call: FunctionCall): boolean {
  return call.schema === null || call.schema === 'pg_catalog';
}

// ---------------------------------------------------------------------------------------------------
// Findings: statements and calls with effects outside the transaction

export type SideEffectCode =
  | 'COPY_PROGRAM'
  | 'COPY_SERVER_FILE'
  | 'REMOTE_SQL'
  | 'SESSION_SIGNAL'
  | 'SERVER_FILE_ACCESS'
  | 'SERVER_ADMIN'
  | 'DATABASE_DDL'
  | 'TABLESPACE_DDL'
  | 'ROLE_DDL'
  | 'DYNAMIC_SQL'
  | 'UNANALYSED_CODE'
  | 'TIMEOUT_OVERRIDE';

export interface SideEffect {
  readonly code: SideEffectCode;
  readonly severity: 'danger';
  readonly lock: string | null;
  readonly message: string;
  readonly safer: string | null;
}

function effect(code: SideEffectCode, message: string, safer: string | null = null): SideEffect {
  return { code, severity: 'danger', lock: null, message, safer };
}

/** The executor's safety timeouts: SQL that changes one lifts the gate's protection. */
const TIMEOUT_SETTINGS = new Set([
  'lock_timeout',
  'statement_timeout',
  'idle_in_transaction_session_timeout',
  'idle_session_timeout',
  'transaction_timeout',
]);

const SESSION_SIGNAL_FUNCTIONS = new Set(['pg_terminate_backend', 'pg_cancel_backend']);

const CORE_FILE_FUNCTIONS = new Set([
  'lo_import',
  'lo_export',
  'pg_read_file',
  'pg_read_binary_file',
  'pg_ls_dir',
  'pg_stat_file',
  'pg_ls_logdir',
  'pg_ls_waldir',
  'pg_ls_tmpdir',
  'pg_ls_archive_statusdir',
  'pg_ls_logicalsnapdir',
  'pg_ls_logicalmapdir',
  'pg_ls_replslotdir',
]);

/** adminpack installs into any schema, so its functions match whatever schema names them. */
const ADMINPACK_FUNCTIONS = new Set([
  'pg_file_write',
  'pg_file_rename',
  'pg_file_unlink',
  'pg_file_sync',
  'pg_logdir_ls',
]);

const SERVER_ADMIN_FUNCTIONS = new Set([
  'pg_reload_conf',
  'pg_rotate_logfile',
  'pg_switch_wal',
  'pg_create_restore_point',
  'pg_promote',
  'pg_backup_start',
  'pg_backup_stop',
  'pg_create_physical_replication_slot',
  'pg_create_logical_replication_slot',
  'pg_drop_replication_slot',
  'pg_replication_slot_advance',
  'pg_copy_physical_replication_slot',
  'pg_copy_logical_replication_slot',
  'pg_logical_emit_message',
]);

function isRemoteSql(call: FunctionCall): boolean {
  // dblink installs into any schema; `dblinkish` is someone else's function.
  return call.name === 'dblink' || call.name.startsWith('dblink_');
}

function timeoutOverride(name: string, verb: string): SideEffect {
  const configurable = name === 'lock_timeout' || name === 'statement_timeout';
  return effect(
    'TIMEOUT_OVERRIDE',
    `The SQL ${verb} ${name} itself, overriding the gate's safety timeout for the statements after it.`,
    configurable
      ? `Remove the SET ${name}; the gate's executor sets it (configure executor.${name}_ms).`
      : `Remove it; the gate's executor bounds how long the migration may wait and run.`,
  );
}

function callEffect(call: FunctionCall): SideEffect | null {
  const shown = `${call.schema === null ? '' : `${call.schema}.`}${call.name}()`;
  if (isRemoteSql(call)) {
    return effect(
      'REMOTE_SQL',
      `${shown} runs SQL over a separate connection that commits on its own: no rollback or dry run of this migration undoes it, and the gate does not analyse the SQL it sends.`,
      'Run the SQL as statements of this migration, against the database it is meant for.',
    );
  }
  if (ADMINPACK_FUNCTIONS.has(call.name)) {
    return effect(
      'SERVER_FILE_ACCESS',
      `${shown} (adminpack) writes, renames, deletes or lists files on the database server; no rollback undoes it.`,
    );
  }
  if (!isCore(call)) return null;
  if (SESSION_SIGNAL_FUNCTIONS.has(call.name)) {
    const terminate = call.name === 'pg_terminate_backend';
    return effect(
      'SESSION_SIGNAL',
      `${shown} ${terminate ? "ends another session's connection, rolling back its work" : "cancels another session's running query"}; it happens at once and no rollback of this migration undoes it.`,
      "Let the executor's lock_timeout bound lock waits instead of killing the sessions that hold locks.",
    );
  }
  if (CORE_FILE_FUNCTIONS.has(call.name)) {
    return effect(
      'SERVER_FILE_ACCESS',
      `${shown} reads, writes or lists files on the database server's file system, outside any transaction: what it reads is exposed and what it writes stays written.`,
    );
  }
  if (SERVER_ADMIN_FUNCTIONS.has(call.name) || call.name.startsWith('pg_replication_origin_')) {
    return effect(
      'SERVER_ADMIN',
      `${shown} acts on the whole server (configuration, logs, WAL, backup or replication state); its effect is immediate and no rollback undoes it.`,
      'Leave server administration to the DBA, outside migrations.',
    );
  }
  if (call.name === 'set_config') {
    const setting = stringConstant(call.args[0])?.toLowerCase();
    if (setting === undefined) {
      return effect(
        'TIMEOUT_OVERRIDE',
        `${shown} sets a setting chosen at run time, which may be one of the gate's safety timeouts (lock_timeout, statement_timeout), overriding it for the statements after it.`,
        'Set only named settings, with a constant name, and never the timeouts: the executor sets those.',
      );
    }
    if (TIMEOUT_SETTINGS.has(setting)) return timeoutOverride(setting, `calls set_config on`);
  }
  return null;
}

const ROLE_KINDS = new Set([
  'CreateRoleStmt',
  'AlterRoleStmt',
  'AlterRoleSetStmt',
  'DropRoleStmt',
  'GrantRoleStmt',
  'ReassignOwnedStmt',
  'DropOwnedStmt',
]);

const DATABASE_KINDS = new Set([
  'CreatedbStmt',
  'DropdbStmt',
  'AlterDatabaseStmt',
  'AlterDatabaseSetStmt',
  'AlterDatabaseRefreshCollStmt',
]);

const TABLESPACE_KINDS = new Set([
  'CreateTableSpaceStmt',
  'DropTableSpaceStmt',
  'AlterTableSpaceOptionsStmt',
]);

/** RenameStmt and AlterOwnerStmt say what they act on in different fields. */
function objectType(kind: string, node: Node): unknown {
  if (kind === 'RenameStmt') return node.renameType;
  if (kind === 'AlterOwnerStmt') return node.objectType;
  return undefined;
}

function statementEffect(statement: AnalysedStatement): SideEffect | null {
  const { kind, node } = statement;
  const type = objectType(kind, node);
  if (kind === 'CopyStmt') {
    const target = isNode(node.relation) ? relationText(node.relation) : 'a query';
    const from = node.is_from === true;
    const file = typeof node.filename === 'string' ? node.filename : '';
    if (node.is_program === true) {
      return effect(
        'COPY_PROGRAM',
        `COPY ${from ? 'FROM' : 'TO'} PROGRAM runs the operating-system command "${clip(file)}" on the database server, as the server's operating-system user; no rollback undoes what the command does.`,
        `${from ? 'Put the data in INSERT statements' : 'Export the data with a SELECT run outside the gate'} instead of running a command on the server.`,
      );
    }
    if (file !== '') {
      return effect(
        'COPY_SERVER_FILE',
        from
          ? `COPY FROM reads the database server's file "${clip(file)}" into ${target}, exposing whatever the server's operating-system user can read.`
          : `COPY TO writes ${target} to the database server's file "${clip(file)}"; no rollback removes a written file.`,
        'Put the data in INSERT statements instead of reading or writing files on the server.',
      );
    }
    return null;
  }
  if (kind === 'AlterSystemStmt') {
    return effect(
      'SERVER_ADMIN',
      'ALTER SYSTEM rewrites the server configuration (postgresql.auto.conf) for every database; it cannot run in a transaction and no rollback undoes it.',
      'Leave server configuration to the DBA, outside migrations.',
    );
  }
  if (kind === 'CheckPointStmt') {
    return effect(
      'SERVER_ADMIN',
      'CHECKPOINT forces a server-wide checkpoint, a burst of disk writes felt by every database on the server.',
      'Remove it: Postgres checkpoints on its own schedule.',
    );
  }
  if (DATABASE_KINDS.has(kind) || type === 'OBJECT_DATABASE') {
    return effect(
      'DATABASE_DDL',
      kind === 'CreatedbStmt' || kind === 'DropdbStmt'
        ? `${kind === 'CreatedbStmt' ? 'CREATE' : 'DROP'} DATABASE acts on a whole database of the server, outside any transaction: it cannot be rolled back.`
        : 'The statement changes a whole database (its name, owner, settings or properties), for every session and application that uses it.',
      'Leave databases to the DBA, outside migrations.',
    );
  }
  if (TABLESPACE_KINDS.has(kind) || type === 'OBJECT_TABLESPACE') {
    return effect(
      'TABLESPACE_DDL',
      'The statement changes a tablespace, a directory on the database server shared by every database; CREATE and DROP TABLESPACE run outside any transaction and cannot be rolled back.',
      'Leave tablespaces to the DBA, outside migrations.',
    );
  }
  if (ROLE_KINDS.has(kind) || type === 'OBJECT_ROLE') {
    return effect(
      'ROLE_DDL',
      'The statement changes roles or role membership. Roles are cluster-wide: the change affects every database on the server, not only this one.',
      "Manage roles through the DBA's own process, outside migrations.",
    );
  }
  if (kind === 'VariableSetStmt' && typeof node.name === 'string') {
    const name = node.name.toLowerCase();
    if (TIMEOUT_SETTINGS.has(name)) {
      const verb = node.kind === 'VAR_RESET' || node.kind === 'VAR_SET_DEFAULT' ? 'resets' : 'sets';
      return timeoutOverride(name, verb);
    }
  }
  return null;
}

function relationText(rangeVar: Node): string {
  const name = typeof rangeVar.relname === 'string' ? rangeVar.relname : '?';
  return typeof rangeVar.schemaname === 'string' ? `${rangeVar.schemaname}.${name}` : name;
}

/** Long hostile strings must not flood the approval file. */
function clip(text: string): string {
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

/** Side effects of one statement (top-level or nested): its kind, then each distinct call. */
export function sideEffectsOf(statement: AnalysedStatement): SideEffect[] {
  const effects: SideEffect[] = [];
  const own = statementEffect(statement);
  if (own) effects.push(own);
  const seen = new Set<string>();
  for (const call of functionCalls(statement.node)) {
    const found = callEffect(call);
    const key = `${found?.code ?? ''}:${call.schema ?? ''}.${call.name}`;
    if (found && !seen.has(key)) {
      seen.add(key);
      effects.push(found);
    }
  }
  return effects;
}

// ---------------------------------------------------------------------------------------------------
// Refusals: statements the executor cannot run honestly

export type RefusalCode =
  'SQL_LEXER_SETTING' | 'SQL_SESSION_RESET' | 'SQL_LOAD' | 'SQL_COPY_STDIO' | 'SQL_TOUCHES_GATE';

export interface Refusal {
  readonly code: RefusalCode;
  /** Completes "Statement N …": what it does and what to do instead. */
  readonly reason: string;
}

/** Settings that change how Postgres reads string literals and bytes of the SQL that follows. */
const LEXER_SETTINGS = new Set([
  'standard_conforming_strings',
  'client_encoding',
  'backslash_quote',
  'escape_string_warning',
]);

function lexerRefusal(name: string): Refusal {
  return {
    code: 'SQL_LEXER_SETTING',
    reason:
      `changes ${name}, which changes how Postgres reads the SQL that follows, so the reviewer and the ` +
      "gate's parser would no longer see what runs. Remove it and resubmit.",
  };
}

const SESSION_AUTHORIZATION: Refusal = {
  code: 'SQL_SESSION_RESET',
  reason:
    'changes the session authorization (the role everything after it runs as). Remove it and resubmit; grant the migration role what it needs instead.',
};

function settingRefusal(name: string): Refusal | null {
  if (LEXER_SETTINGS.has(name)) return lexerRefusal(name);
  if (name === 'session_authorization') return SESSION_AUTHORIZATION;
  return null;
}

/** What the statement does that the gate refuses outright, or null. */
export function refusalOf(statement: AnalysedStatement, gateSchemas: readonly string[]): Refusal | null {
  const { kind, node } = statement;
  if (kind === 'VariableSetStmt') {
    if (node.kind === 'VAR_RESET_ALL') {
      return {
        code: 'SQL_SESSION_RESET',
        reason:
          "runs RESET ALL, which would lift the gate's safety timeouts and every other session setting. Remove it and resubmit.",
      };
    }
    const refusal = typeof node.name === 'string' ? settingRefusal(node.name.toLowerCase()) : null;
    if (refusal) return refusal;
  }
  if (kind === 'DiscardStmt') {
    return {
      code: 'SQL_SESSION_RESET',
      reason:
        "runs DISCARD, which resets the gate's own session (settings, prepared statements, temporary tables) under the executor. Remove it and resubmit.",
    };
  }
  if (kind === 'LoadStmt') {
    return {
      code: 'SQL_LOAD',
      reason:
        'runs LOAD, which loads a shared library into the database server. Install libraries and extensions outside migrations, then resubmit without LOAD.',
    };
  }
  if (kind === 'CopyStmt' && node.is_program !== true && typeof node.filename !== 'string') {
    const from = node.is_from === true;
    return {
      code: 'SQL_COPY_STDIO',
      reason: `runs COPY ${from ? 'FROM STDIN' : 'TO STDOUT'}, but the gate has no data stream to ${from ? 'feed' : 'drain'}. Put the data in INSERT statements${from ? '' : ' (read it with a separate query)'} and resubmit.`,
    };
  }
  for (const call of functionCalls(node)) {
    if (call.name !== 'set_config' || !isCore(call)) continue;
    const setting = stringConstant(call.args[0])?.toLowerCase();
    const refusal = setting === undefined ? null : settingRefusal(setting);
    if (refusal) return refusal;
  }
  const schema = gateSchemaNamed(statement, gateSchemas);
  if (schema !== null) {
    return {
      code: 'SQL_TOUCHES_GATE',
      reason: `names the gate's own schema ${schema}: the gate's ledger and backups are not the migration's to read or change. Remove it and resubmit.`,
    };
  }
  return null;
}

const SCHEMA_OBJECT_KINDS = new Set([
  'DropStmt',
  'GrantStmt',
  'RenameStmt',
  'AlterOwnerStmt',
  'CommentStmt',
  'SecLabelStmt',
]);

/** Splits a search_path value ('app, "ledger"') into schema names. */
function searchPathSchemas(value: string): string[] {
  return value.split(',').map((part) => part.trim().replace(/^"(.*)"$/, '$1'));
}

/**
 * The first of the gate's schemas the statement names: a relation or other object qualified with it,
 * the schema itself (CREATE/DROP/ALTER SCHEMA, GRANT … ON SCHEMA, SET SCHEMA), or a search_path
 * that would resolve unqualified names into it. Exact, case-sensitive: as Postgres compares them.
 */
function gateSchemaNamed(statement: AnalysedStatement, gateSchemas: readonly string[]): string | null {
  if (gateSchemas.length === 0) return null;
  const gate = new Set(gateSchemas);
  for (const relation of statement.relations) {
    const schema = relation.split('.').at(-2);
    if (schema !== undefined && gate.has(schema)) return schema;
  }
  const { kind, node } = statement;
  const schemaObject =
    SCHEMA_OBJECT_KINDS.has(kind) &&
    [node.removeType, node.objtype, node.renameType, node.objectType].includes('OBJECT_SCHEMA');
  const allInSchema = kind === 'GrantStmt' && node.targtype === 'ACL_TARGET_ALL_IN_SCHEMA';
  let found: string | null = null;
  const hit = (name: unknown): void => {
    if (found === null && typeof name === 'string' && gate.has(name)) found = name;
  };
  if (kind === 'RenameStmt' && node.renameType === 'OBJECT_SCHEMA') {
    hit(node.subname);
    hit(node.newname);
  }
  hit(node.schemaname);
  hit(node.newschema);
  visitNodes(node, (key, value) => {
    if (found !== null || key === 'ColumnRef') return 'skip';
    hit(value.schemaname);
    hit(value.newschema);
    if (key === 'String' && (schemaObject || allInSchema)) hit(value.sval);
    if (key === 'DefElem' && (value.defname === 'schema' || value.defname === 'schemas')) {
      visitNodes(value, (inner, innerValue) => {
        if (inner === 'String') hit(innerValue.sval);
        return undefined;
      });
    }
    if (key === 'VariableSetStmt' && String(value.name).toLowerCase() === 'search_path') {
      for (const arg of list(value, 'args')) {
        for (const schema of searchPathSchemas(stringConstant(arg) ?? '')) hit(schema);
      }
    }
    if (key === 'FuncCall' || key === 'funccall') {
      const parts = stringsOf(list(value, 'funcname'));
      if (parts.at(-1) === 'set_config' && stringConstant(list(value, 'args')[0]) === 'search_path') {
        for (const schema of searchPathSchemas(stringConstant(list(value, 'args')[1]) ?? '')) hit(schema);
      }
    }
    // Qualified names are string lists: funcname, type names, DROP/GRANT/COMMENT objects.
    for (const items of Object.values(value)) {
      if (Array.isArray(items) && items.length >= 2 && stringsOf(items).length === items.length) {
        hit(stringsOf(items)[0]);
      }
    }
  });
  if (kind === 'VariableSetStmt' && String(node.name).toLowerCase() === 'search_path') {
    for (const arg of list(node, 'args')) {
      for (const schema of searchPathSchemas(stringConstant(arg) ?? '')) hit(schema);
    }
  }
  return found;
}

// ---------------------------------------------------------------------------------------------------
// Expansion: every statement the migration runs, including SQL nested in DO blocks and called functions

/** A statement that runs, with the path that reaches it ([] for a top-level statement). */
export interface StatementSite {
  readonly type: 'statement';
  readonly statement: AnalysedStatement;
  readonly via: readonly string[];
}

/** Code that runs but cannot be read: dynamic SQL, another language, a body that does not parse. */
export interface OpaqueSite {
  readonly type: 'opaque';
  /** 0-based index of the top-level statement that runs it. */
  readonly index: number;
  readonly via: readonly string[];
  readonly effect: SideEffect;
}

export type Site = StatementSite | OpaqueSite;

/** "Inside the DO block, inside function f (created by statement 2): " — or '' at top level. */
export function viaPrefix(via: readonly string[]): string {
  if (via.length === 0) return '';
  const text = via.join(', ');
  return `${text.charAt(0).toUpperCase()}${text.slice(1)}: `;
}

/** Nesting bombs (a DO in a DO in a DO …, functions calling each other) stop here. */
export const MAX_NESTING = 8;
/** Total statements analysed per migration, nested included: a bound on work for hostile input. */
const MAX_SITES = 5000;

interface CreatedFunction {
  /** Lower-case last name part: calls are matched schema-insensitively. */
  readonly key: string;
  readonly shown: string;
  /** 1-based number of the top-level statement that creates it. */
  readonly createdBy: number;
  readonly language: string;
  readonly trigger: 'trigger' | 'event_trigger' | null;
  readonly statement: AnalysedStatement;
}

/** Statements that can fire a trigger (DML, COPY) or run code that can (DO, CALL, SELECT). */
const TRIGGER_FIRING_KINDS = new Set([
  'InsertStmt',
  'UpdateStmt',
  'DeleteStmt',
  'MergeStmt',
  'CopyStmt',
  'DoStmt',
  'CallStmt',
  'SelectStmt',
]);

const DYNAMIC_STATEMENTS: Readonly<Record<string, string>> = {
  PLpgSQL_stmt_dynexecute: 'EXECUTE',
  PLpgSQL_stmt_dynfors: 'FOR ... IN EXECUTE',
  PLpgSQL_stmt_open: 'OPEN ... FOR EXECUTE',
  PLpgSQL_stmt_return_query: 'RETURN QUERY EXECUTE',
};

function dynamicSql(how: string): SideEffect {
  return effect(
    'DYNAMIC_SQL',
    `${how} runs SQL built at run time: its contents cannot be analysed, so it may do anything the migration role can, including what the policy refuses, and the reviewer cannot see it.`,
    'Write the statements out as plain SQL in the migration.',
  );
}

function unanalysed(what: string): SideEffect {
  return effect(
    'UNANALYSED_CODE',
    `${what}: its contents cannot be analysed, so neither the gate nor the reviewer can tell what it does.`,
    'Write the work as plain SQL statements, or as a LANGUAGE plpgsql or sql function.',
  );
}

/** A dollar-quote tag the body does not contain, so the body cannot close the quote early. */
function dollarTag(body: string): string {
  for (let n = 0; ; n += 1) {
    const tag = n === 0 ? '$gate$' : `$gate${n}$`;
    if (!body.includes(tag)) return tag;
  }
}

/** The source libpg-query's PL/pgSQL parser accepts for a DO block body. */
export function doBlockSource(body: string): string {
  const tag = dollarTag(body);
  return `CREATE FUNCTION pg_temp.gate_do() RETURNS void LANGUAGE plpgsql AS ${tag}${body}${tag}`;
}

/**
 * SQL text of a PL/pgSQL expression. Statements (mode 0) are SQL; expressions are wrapped in SELECT;
 * assignments (`target := expr`, modes 3 to 5) become `SELECT target, expr` so calls on either side
 * (a subscript, the value) are seen.
 */
function expressionSql(query: string, parseMode: number): string | null {
  if (parseMode === 0) return query;
  if (parseMode === 1) return null;
  if (parseMode >= 3 && parseMode <= 5) {
    const utf8 = Buffer.from(query, 'utf8');
    let depth = 0;
    for (const token of scanSync(query).tokens) {
      if (token.text === '(' || token.text === '[') depth += 1;
      else if (token.text === ')' || token.text === ']') depth -= 1;
      else if (depth === 0 && (token.text === ':=' || token.text === '=')) {
        const target = utf8.subarray(0, token.start).toString('utf8');
        const value = utf8.subarray(token.end).toString('utf8');
        return `SELECT ${target}, ${value}`;
      }
    }
  }
  return `SELECT ${query}`;
}

function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Every statement the migration runs, in order: each top-level statement, then what it runs itself
 * (its DO block's statements; the bodies of functions created earlier in the migration that it calls,
 * or whose trigger it may fire), and opaque sites for code that cannot be read.
 */
export function executedSites(statements: readonly AnalysedStatement[]): Site[] {
  const sites: Site[] = [];
  const functions = new Map<string, CreatedFunction>();
  const unfiredTriggers = new Map<string, CreatedFunction>();
  let exhausted = false;

  const push = (site: Site): boolean => {
    if (sites.length < MAX_SITES) {
      sites.push(site);
      return true;
    }
    if (!exhausted) {
      exhausted = true;
      const index = site.type === 'statement' ? site.statement.index : site.index;
      sites.push({
        type: 'opaque',
        index,
        via: [],
        effect: unanalysed(
          `The migration nests more than ${MAX_SITES} statements in DO blocks and functions`,
        ),
      });
    }
    return false;
  };

  const opaque = (index: number, via: readonly string[], found: SideEffect): void => {
    push({ type: 'opaque', index, via, effect: found });
  };

  const register = (statement: AnalysedStatement): void => {
    const { node } = statement;
    const parts = stringsOf(list(node, 'funcname'));
    const name = parts.at(-1);
    if (name === undefined) return;
    const options = list(node, 'options');
    const language = child(defElem(options, 'language')?.arg, 'String')?.sval;
    const returns = stringsOf(list(child(node, 'returnType'), 'names'))
      .at(-1)
      ?.toLowerCase();
    const created: CreatedFunction = {
      key: name.toLowerCase(),
      shown: parts.join('.'),
      createdBy: statement.index + 1,
      language: typeof language === 'string' ? language.toLowerCase() : 'sql',
      trigger: returns === 'trigger' || returns === 'event_trigger' ? returns : null,
      statement,
    };
    functions.set(created.key, created);
    if (created.trigger) unfiredTriggers.set(created.key, created);
    else unfiredTriggers.delete(created.key);
    if (created.language === 'c') {
      // Creating a C function loads its shared library into the server (and runs its init code).
      opaque(
        statement.index,
        [],
        unanalysed(
          `Function ${created.shown} is written in C; creating it loads a shared library into the server`,
        ),
      );
    }
  };

  const runPlpgsql = (
    source: string,
    index: number,
    via: readonly string[],
    depth: number,
    expanded: Set<string>,
  ): void => {
    let tree: unknown;
    try {
      tree = parsePlPgSQLSync(source);
    } catch (error) {
      opaque(index, via, unanalysed(`The PL/pgSQL body does not parse (${clip(describeError(error))})`));
      return;
    }
    visitNodes(tree, (key, value) => {
      const how = DYNAMIC_STATEMENTS[key];
      if (
        how !== undefined &&
        (key === 'PLpgSQL_stmt_dynexecute' || key === 'PLpgSQL_stmt_dynfors' || 'dynquery' in value)
      ) {
        opaque(index, via, dynamicSql(how));
        return;
      }
      if (key === 'PLpgSQL_stmt_commit' || key === 'PLpgSQL_stmt_rollback') {
        // Transaction control inside a body: the executor refuses it as it does at top level.
        const text = key === 'PLpgSQL_stmt_commit' ? 'COMMIT' : 'ROLLBACK';
        const statement = statementOfNode(
          { TransactionStmt: { kind: `TRANS_STMT_${text}` } },
          { index, text, offset: 0 },
        );
        if (statement) visit(statement, via, depth, expanded);
        return;
      }
      if (key !== 'PLpgSQL_expr' || typeof value.query !== 'string') return;
      const sql = expressionSql(value.query, typeof value.parseMode === 'number' ? value.parseMode : 2);
      if (sql === null) return;
      let nested: AnalysedStatement[];
      try {
        nested = parseNestedSql(sql, index);
      } catch (error) {
        opaque(
          index,
          via,
          unanalysed(`An expression in the PL/pgSQL body does not parse (${clip(describeError(error))})`),
        );
        return;
      }
      for (const statement of nested) visit(statement, via, depth, expanded);
      return undefined;
    });
  };

  const runDo = (
    statement: AnalysedStatement,
    via: readonly string[],
    depth: number,
    expanded: Set<string>,
  ): void => {
    const inside = [...via, 'inside the DO block'];
    if (depth > MAX_NESTING) {
      opaque(statement.index, inside, unanalysed(`The code is nested more than ${MAX_NESTING} levels deep`));
      return;
    }
    const args = list(statement.node, 'args');
    const language = child(defElem(args, 'language')?.arg, 'String')?.sval;
    const body = child(defElem(args, 'as')?.arg, 'String')?.sval;
    const lang = typeof language === 'string' ? language.toLowerCase() : 'plpgsql';
    if (lang !== 'plpgsql') {
      opaque(statement.index, inside, unanalysed(`The DO block is written in ${lang}`));
      return;
    }
    runPlpgsql(doBlockSource(typeof body === 'string' ? body : ''), statement.index, inside, depth, expanded);
  };

  const runFunction = (
    fn: CreatedFunction,
    index: number,
    via: readonly string[],
    depth: number,
    expanded: Set<string>,
    how: string,
  ): void => {
    const inside = [...via, `inside ${how} ${fn.shown} (created by statement ${fn.createdBy})`];
    if (depth > MAX_NESTING) {
      opaque(index, inside, unanalysed(`The code is nested more than ${MAX_NESTING} levels deep`));
      return;
    }
    if (fn.language === 'plpgsql') {
      // The whole CREATE statement, so parameters, trigger variables and the return type are known.
      runPlpgsql(fn.statement.text, index, inside, depth, expanded);
      return;
    }
    if (fn.language !== 'sql') {
      opaque(index, inside, unanalysed(`Function ${fn.shown} is written in ${fn.language}`));
      return;
    }
    const sqlBody = fn.statement.node.sql_body;
    if (sqlBody !== undefined) {
      const bodies: unknown[] = [];
      visitNodes({ sql_body: sqlBody }, (key, value) => {
        if (key === 'List' || key === 'sql_body') return;
        bodies.push({ [key]: value });
        return 'skip';
      });
      for (const raw of bodies) {
        const statement = statementOfNode(raw, { index, text: '', offset: 0 });
        if (statement) visit(statement, inside, depth, expanded);
      }
      return;
    }
    const as = list(child(defElem(list(fn.statement.node, 'options'), 'as')?.arg, 'List'), 'items');
    const body = stringsOf(as)[0] ?? '';
    let nested: AnalysedStatement[];
    try {
      nested = parseNestedSql(body, index);
    } catch (error) {
      opaque(
        index,
        inside,
        unanalysed(`The body of ${fn.shown} does not parse (${clip(describeError(error))})`),
      );
      return;
    }
    for (const statement of nested) visit(statement, inside, depth, expanded);
  };

  const visit = (
    statement: AnalysedStatement,
    via: readonly string[],
    depth: number,
    expanded: Set<string>,
  ): void => {
    if (!push({ type: 'statement', statement, via })) return;
    if (statement.kind === 'DoStmt') runDo(statement, via, depth + 1, expanded);
    for (const call of functionCalls(statement.node)) {
      const fn = functions.get(call.name);
      // Once per top-level statement: stops recursion and fan-out bombs.
      if (fn === undefined || expanded.has(fn.key)) continue;
      expanded.add(fn.key);
      runFunction(fn, statement.index, via, depth + 1, expanded, 'function');
    }
    if (statement.kind === 'CreateFunctionStmt') register(statement);
  };

  for (const statement of statements) {
    const expanded = new Set<string>();
    visit(statement, [], 0, expanded);
    for (const fn of [...unfiredTriggers.values()]) {
      if (fn.createdBy > statement.index) continue;
      if (fn.trigger === 'trigger' && !TRIGGER_FIRING_KINDS.has(statement.kind)) continue;
      // Reported once, on the first later statement that could fire it.
      unfiredTriggers.delete(fn.key);
      if (expanded.has(fn.key)) continue;
      expanded.add(fn.key);
      runFunction(
        fn,
        statement.index,
        [],
        1,
        expanded,
        `${fn.trigger === 'trigger' ? 'trigger' : 'event trigger'} function`,
      );
    }
  }
  return sites;
}
