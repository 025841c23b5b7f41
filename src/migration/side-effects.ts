import {
  child,
  isNode,
  list,
  stringConstant,
  stringsOf,
  visitNodes,
  type AnalysedStatement,
  type Node,
} from './parse-tree.js';

/**
 * What a migration does beyond its own tables: statements and function calls whose effects escape the
 * transaction (an OS command, a remote connection, a killed session, a server file, a timeout the SQL
 * overrides). The agent writing the SQL is the adversary: everything here is computed from the parse
 * tree. Code the gate cannot read, and SQL nested in DO blocks and called functions, are found by
 * `executedSites` (nested-code.ts); statements the executor refuses outright by `refusalOf` (refusals.ts).
 */

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
export function isCore(call: FunctionCall): boolean {
  return call.schema === null || call.schema === 'pg_catalog';
}

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
  | 'TIMEOUT_OVERRIDE'
  | 'TIMEOUT_TIGHTENED';

export interface SideEffect {
  readonly code: SideEffectCode;
  readonly severity: 'info' | 'danger';
  readonly lock: string | null;
  readonly message: string;
  readonly safer: string | null;
}

export function effect(
  code: SideEffectCode,
  message: string,
  safer: string | null = null,
  severity: SideEffect['severity'] = 'danger',
): SideEffect {
  return { code, severity, lock: null, message, safer };
}

/** The limits the executor sets for a job: SQL may tighten them, never loosen them unseen. */
export interface GateLimits {
  readonly lockTimeoutMs: number;
  readonly statementTimeoutMs: number;
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

function statementEffect(statement: AnalysedStatement, limits: GateLimits | null): SideEffect | null {
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
  if (kind === 'CreatedbStmt') {
    // Escapes the transaction (so a dry run refuses it), but takes nothing from anyone.
    return effect(
      'DATABASE_DDL',
      'CREATE DATABASE makes a new, empty database on the server, outside any transaction: it cannot be rolled back (DROP DATABASE undoes it).',
      null,
      'info',
    );
  }
  if (DATABASE_KINDS.has(kind) || type === 'OBJECT_DATABASE') {
    return effect(
      'DATABASE_DDL',
      kind === 'DropdbStmt'
        ? 'DROP DATABASE destroys a whole database of the server and all its data, outside any transaction: it cannot be rolled back.'
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
      const limit =
        name === 'lock_timeout'
          ? limits?.lockTimeoutMs
          : name === 'statement_timeout'
            ? limits?.statementTimeoutMs
            : undefined;
      const value = node.kind === 'VAR_SET_VALUE' ? timeoutMs(list(node, 'args')[0]) : null;
      // 0 means no limit at all: only a positive value at most the gate's own is tighter.
      if (limit !== undefined && value !== null && value > 0 && value <= limit) {
        return effect(
          'TIMEOUT_TIGHTENED',
          `The SQL sets ${name} to ${value} ms, tighter than the gate's ${limit} ms, for the statements after it.`,
          null,
          'info',
        );
      }
      const verb = node.kind === 'VAR_RESET' || node.kind === 'VAR_SET_DEFAULT' ? 'resets' : 'sets';
      return timeoutOverride(name, verb);
    }
  }
  return null;
}

/** A timeout setting's value in milliseconds, as Postgres reads it (no unit: ms); null when not constant. */
export function timeoutMs(value: unknown): number | null {
  const constant = child(value, 'A_Const');
  if (constant === null) return null;
  const integer = child(constant, 'ival');
  if (integer !== null) return typeof integer.ival === 'number' ? integer.ival : 0;
  const text = stringConstant(value);
  if (text === null) return null;
  const match = /^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?\s*$/i.exec(text);
  if (!match) return null;
  const factor: Record<string, number> = {
    us: 0.001,
    ms: 1,
    s: 1000,
    min: 60_000,
    h: 3_600_000,
    d: 86_400_000,
  };
  return Number(match[1]) * (factor[(match[2] ?? 'ms').toLowerCase()] ?? 1);
}

function relationText(rangeVar: Node): string {
  const name = typeof rangeVar.relname === 'string' ? rangeVar.relname : '?';
  return typeof rangeVar.schemaname === 'string' ? `${rangeVar.schemaname}.${name}` : name;
}

/** Long hostile strings must not flood the approval file. */
export function clip(text: string): string {
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

/** Side effects of one statement (top-level or nested): its kind, then each distinct call. */
export function sideEffectsOf(statement: AnalysedStatement, limits: GateLimits | null = null): SideEffect[] {
  const effects: SideEffect[] = [];
  const own = statementEffect(statement, limits);
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
