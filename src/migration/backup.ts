import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { link, lstat, mkdir, open, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { QueryConfig } from 'pg';
// A CommonJS module: its named export is not visible to Node's ESM loader, its default export is.
import pgConnectionString from 'pg-connection-string';
import type { SqlSession } from '../db/index.js';
import { GateError } from '../errors.js';
import { regclassText } from './catalog.js';

/**
 * "backup_before": the tables a migration touches are backed up before it runs, either with pg_dump
 * (a file outside the database, restorable with pg_restore) or as copies inside the database, made
 * in the migration's own transaction.
 */

export interface BackupRecord {
  readonly method: 'pg_dump' | 'table_copy';
  /** The dump file path, or "schema.table, schema.table" for copies. */
  readonly location: string;
  /** As named in the SQL. */
  readonly tables: readonly string[];
  /** Dump file size; null for table copies, and when there was nothing to dump. */
  readonly bytes: number | null;
}

export interface ExistingTable {
  readonly schema: string;
  readonly name: string;
  readonly as_written: string;
}

export interface DumpOptions {
  /**
   * How long pg_dump waits for its ACCESS SHARE lock on each table before giving up (pg_dump's
   * --lock-wait-timeout). Without it a session holding ACCESS EXCLUSIVE would stall the backup, and
   * the approved migration behind it, indefinitely.
   */
  readonly lockWaitTimeoutMs?: number;
}

const DEFAULT_LOCK_WAIT_TIMEOUT_MS = 30_000;
/** Seconds libpq and pg wait for a connection; without it an unreachable host hangs for minutes. */
const CONNECT_TIMEOUT_SECONDS = 10;
/** Only the end of pg_dump's stderr is kept: the error is last, and a message must stay readable. */
const STDERR_LIMIT = 8_192;
/** NAMEDATALEN - 1: Postgres truncates longer identifiers silently, which would merge distinct names. */
const MAX_IDENTIFIER_BYTES = 63;

let pgDumpProbe: Promise<boolean> | null = null;

/** True when a pg_dump binary runs here (`pg_dump --version` exits 0). Cached. */
export function pgDumpAvailable(): Promise<boolean> {
  pgDumpProbe ??= new Promise<boolean>((resolve) => {
    const child = spawn('pg_dump', ['--version'], { stdio: 'ignore' });
    child.once('error', () => resolve(false));
    child.once('close', (code) => resolve(code === 0));
  });
  return pgDumpProbe;
}

function stringField(fields: ReadonlyMap<string, unknown>, key: string): string | null {
  const value = fields.get(key);
  return typeof value === 'string' && value !== '' ? value : null;
}

/** libpq has no "no-verify"; node-postgres' name for "encrypt, do not verify" is libpq's "require". */
function libpqSslMode(mode: string): string {
  return mode === 'no-verify' ? 'require' : mode;
}

/**
 * The libpq environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE …) that points a
 * child process (pg_dump, pg_restore, psql) at the database `connectionString` names. The password
 * travels in the environment, never on a command line where `ps` shows it to every local user.
 *
 * Anything the connection string leaves out falls back to `base`'s PG* variables and then to
 * node-postgres' defaults, so the child reaches the same server as the pool: notably host "localhost"
 * where libpq alone would try the Unix socket. sslmode keeps its libpq meaning; node-postgres' own
 * `ssl=true` (which verifies the certificate) becomes verify-full rather than anything weaker.
 */
export function libpqEnvironment(
  connectionString: string,
  base: NodeJS.ProcessEnv = process.env,
): NodeJS.ProcessEnv {
  let fields: ReadonlyMap<string, unknown>;
  try {
    fields = new Map<string, unknown>(Object.entries(pgConnectionString.parse(connectionString)));
  } catch (error) {
    // The parser's error can carry the input, password included; only its class of problem is kept.
    throw new GateError(
      'BACKUP_FAILED',
      `The connection string cannot be parsed (${error instanceof Error ? error.name : 'error'}); no backup was taken.`,
    );
  }
  const env: NodeJS.ProcessEnv = { ...base };
  // Both would override what is set below: a service file's settings take precedence over PG*
  // variables, and PGHOSTADDR replaces the host's address. node-postgres ignores both.
  delete env.PGSERVICE;
  delete env.PGHOSTADDR;
  env.PGHOST = stringField(fields, 'host')?.replace(/^\[(.*)\]$/, '$1') ?? base.PGHOST ?? 'localhost';
  const settings: readonly [string, string][] = [
    ['port', 'PGPORT'],
    ['user', 'PGUSER'],
    ['password', 'PGPASSWORD'],
    ['database', 'PGDATABASE'],
    ['options', 'PGOPTIONS'],
    ['sslrootcert', 'PGSSLROOTCERT'],
    ['sslcert', 'PGSSLCERT'],
    ['sslkey', 'PGSSLKEY'],
    ['connect_timeout', 'PGCONNECT_TIMEOUT'],
  ];
  for (const [field, variable] of settings) {
    const value = stringField(fields, field);
    if (value !== null) env[variable] = value;
  }
  const sslMode = stringField(fields, 'sslmode');
  if (sslMode !== null) {
    env.PGSSLMODE = libpqSslMode(sslMode);
  } else if (fields.get('ssl') === true) {
    env.PGSSLMODE = 'verify-full';
  } else if (fields.get('ssl') === false) {
    env.PGSSLMODE = 'disable';
  } else if (env.PGSSLMODE !== undefined) {
    env.PGSSLMODE = libpqSslMode(env.PGSSLMODE);
  }
  env.PGCONNECT_TIMEOUT ??= String(CONNECT_TIMEOUT_SECONDS);
  // Shows as application_name in pg_stat_activity, so a DBA can tell the gate's dump from others.
  env.PGAPPNAME = 'approval-gate pg_dump';
  return env;
}

/** Removes the password, raw and URL-encoded, from text that is about to be shown or logged. */
function redact(text: string, password: string | undefined): string {
  if (!password) return text;
  let redacted = text;
  for (const form of new Set([password, encodeURIComponent(password)])) {
    redacted = redacted.replaceAll(form, '***');
  }
  return redacted;
}

/**
 * Resolves names as analyseSql reports them to existing tables (plain or partitioned) via to_regclass,
 * respecting the session's search_path. Views, sequences, system catalogs (which pg_dump never dumps)
 * and names that do not resolve are left out. Two names for one table ("customers" and
 * "public.customers") give one entry, the first as written.
 */
export async function existingTables(
  session: SqlSession,
  relations: readonly string[],
): Promise<ExistingTable[]> {
  const found = new Map<string, ExistingTable>();
  for (const relation of relations) {
    const { rows } = await session.query(
      `select n.nspname as schema, c.relname as name
         from pg_class c
         join pg_namespace n on n.oid = c.relnamespace
        where c.oid = to_regclass($1)
          and c.relkind in ('r', 'p')
          and n.nspname not in ('pg_catalog', 'information_schema')`,
      [regclassText(relation)],
    );
    const row = rows[0];
    if (!row) continue;
    const table = { schema: String(row.schema), name: String(row.name), as_written: relation };
    const key = JSON.stringify([table.schema, table.name]);
    if (!found.has(key)) found.set(key, table);
  }
  return [...found.values()];
}

/**
 * The tables pg_dump must name: the given ones plus, recursively, their partitions and inheritance
 * children. pg_dump 15 dumps only a parent's own rows (--table-and-children came in 16), which for a
 * partitioned table is none at all, while UPDATE, DELETE and ALTER on the parent reach every child.
 */
async function withDescendants(
  session: SqlSession,
  tables: readonly ExistingTable[],
): Promise<{ schema: string; name: string }[]> {
  const { rows } = await session.query(
    `with recursive tree(oid) as (
       select c.oid
         from unnest($1::text[], $2::text[]) as given(schema, name)
         join pg_namespace n on n.nspname = given.schema
         join pg_class c on c.relnamespace = n.oid and c.relname = given.name
       union
       select i.inhrelid from pg_inherits i join tree on i.inhparent = tree.oid
     )
     select n.nspname as schema, c.relname as name
       from tree
       join pg_class c on c.oid = tree.oid
       join pg_namespace n on n.oid = c.relnamespace
      where c.relkind in ('r', 'p')
      order by 1, 2`,
    [tables.map((t) => t.schema), tables.map((t) => t.name)],
  );
  return rows.map((row) => ({ schema: String(row.schema), name: String(row.name) }));
}

/** An exact-match pg_dump --table pattern: inside double quotes, `*`, `?` and `.` are literal. */
function exactTablePattern(table: { schema: string; name: string }): string {
  const quote = (part: string) => `"${part.replaceAll('"', '""')}"`;
  return `${quote(table.schema)}.${quote(table.name)}`;
}

/** Connects with the same connection string the pool uses, for the few catalog lookups a dump needs. */
async function withClient<T>(
  connectionString: string,
  password: string | undefined,
  work: (session: SqlSession) => Promise<T>,
): Promise<T> {
  // Loaded here, not at startup: a server that never takes a pg_dump backup need not load pg for it.
  const { default: pg } = await import('pg');
  const client = new pg.Client({
    connectionString,
    application_name: 'approval-gate',
    connectionTimeoutMillis: CONNECT_TIMEOUT_SECONDS * 1000,
  });
  // An error after connecting (the server going away) would otherwise crash the process.
  client.on('error', () => undefined);
  try {
    await client.connect();
    const session: SqlSession = {
      async query(text, params) {
        // The extended protocol, like every session of the gate (see SqlSession).
        const config: QueryConfig & { queryMode: 'extended' } = {
          text,
          ...(params === undefined ? {} : { values: [...params] }),
          queryMode: 'extended',
        };
        const result = await client.query<Record<string, unknown>>(config);
        return { rows: result.rows, rowCount: result.rowCount };
      },
    };
    return await work(session);
  } catch (error) {
    if (error instanceof GateError) throw error;
    // No cause attached: driver errors are not guaranteed free of connection details.
    throw new GateError(
      'BACKUP_FAILED',
      `Cannot look up the tables to back up: ${redact(error instanceof Error ? error.message : String(error), password)}. No backup was taken.`,
      { context: { method: 'pg_dump' } },
    );
  } finally {
    await client.end().catch(() => undefined);
  }
}

function runPgDump(
  args: readonly string[],
  env: NodeJS.ProcessEnv,
): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('pg_dump', args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-STDERR_LIMIT);
    });
    child.once('error', reject);
    child.once('close', (code, signal) => {
      resolve({ code, stderr: signal === null ? stderr : `${stderr}\n(killed by ${signal})` });
    });
  });
}

function pathExists(file: string): Promise<boolean> {
  return lstat(file).then(
    () => true,
    () => false,
  );
}

/**
 * Dumps schema and data of the `tables` that exist (as analyseSql names them) with
 * `pg_dump --format=custom` into `file`, and returns what was dumped. Tables the SQL names that do not
 * exist yet are skipped and not listed; when none exists, nothing is dumped and no file is written.
 *
 * The dump goes to a private (0600) temporary file beside `file` and is linked into place only when
 * pg_dump succeeded, so `file` is either a complete dump or absent, and an existing backup is never
 * overwritten. Throws GateError BACKUP_FAILED with pg_dump's stderr, password redacted.
 *
 * The dump is a consistent snapshot of its own, taken before the migration's transaction begins;
 * writes in between are not in it. tableCopyStatements is the variant consistent with the migration.
 */
export async function dumpTables(
  connectionString: string,
  tables: readonly string[],
  file: string,
  options: DumpOptions = {},
): Promise<BackupRecord> {
  const env = libpqEnvironment(connectionString);
  const password = env.PGPASSWORD;
  const fail = (message: string) =>
    new GateError('BACKUP_FAILED', redact(message, password), { context: { method: 'pg_dump' } });

  const { existing, dumped } = await withClient(connectionString, password, async (session) => {
    const found = await existingTables(session, tables);
    return { existing: found, dumped: found.length === 0 ? [] : await withDescendants(session, found) };
  });
  if (existing.length === 0) return { method: 'pg_dump', location: file, tables: [], bytes: null };

  if (await pathExists(file)) {
    throw fail(`The backup file ${file} already exists; an earlier backup is never overwritten.`);
  }
  const directory = path.dirname(file);
  await mkdir(directory, { recursive: true, mode: 0o700 });
  const partial = `${file}.${randomBytes(4).toString('hex')}.partial`;
  // Created 0600 before pg_dump writes data into it; pg_dump truncates it and keeps the mode.
  await (await open(partial, 'wx', 0o600)).close();
  try {
    const args = [
      '--format=custom',
      `--file=${partial}`,
      // Never prompt for a password: there is no terminal, and pg_dump would wait forever.
      '--no-password',
      // A listed table that vanished before pg_dump ran is an error, not a silently smaller dump.
      '--strict-names',
      `--lock-wait-timeout=${options.lockWaitTimeoutMs ?? DEFAULT_LOCK_WAIT_TIMEOUT_MS}`,
      ...dumped.map((table) => `--table=${exactTablePattern(table)}`),
    ];
    let outcome: { code: number | null; stderr: string };
    try {
      outcome = await runPgDump(args, env);
    } catch (error) {
      throw fail(
        `pg_dump could not be started (${error instanceof Error ? error.message : String(error)}); ` +
          'install the PostgreSQL client tools or use table copies instead. No backup was taken.',
      );
    }
    if (outcome.code !== 0) {
      throw fail(
        `pg_dump failed (exit code ${String(outcome.code)}): ${outcome.stderr.trim()}. No backup was taken.`,
      );
    }
    try {
      await link(partial, file);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
        throw fail(`The backup file ${file} appeared while dumping; an earlier backup is never overwritten.`);
      }
      throw error;
    }
  } finally {
    await rm(partial, { force: true });
  }
  // pg_dump fsyncs the file; the directory entry of its new name needs the same, to survive a crash.
  const handle = await open(directory, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
  return {
    method: 'pg_dump',
    location: file,
    tables: existing.map((table) => table.as_written),
    bytes: (await stat(file)).size,
  };
}

/**
 * Quotes an SQL identifier. Refuses what cannot be one: NUL, the empty string, and names over 63
 * bytes, which Postgres would truncate silently, so two long names could become one.
 */
export function quoteIdentifier(name: string): string {
  if (name === '' || name.includes('\0') || Buffer.byteLength(name, 'utf8') > MAX_IDENTIFIER_BYTES) {
    throw new GateError(
      'INVALID_IDENTIFIER',
      `${JSON.stringify(name.slice(0, 80))} cannot be an identifier: it must be 1 to ${MAX_IDENTIFIER_BYTES} bytes without NUL.`,
    );
  }
  return `"${name.replaceAll('"', '""')}"`;
}

/** An SQL string literal, correct whatever standard_conforming_strings is (as Postgres' quote_literal). */
function quoteLiteral(text: string): string {
  const body = `'${text.replaceAll("'", "''").replaceAll('\\', '\\\\')}'`;
  return text.includes('\\') ? `E${body}` : body;
}

/** The longest prefix of `text` within `maxBytes` of UTF-8, never splitting a character. */
function truncateUtf8(text: string, maxBytes: number): string {
  let bytes = 0;
  let end = 0;
  for (const character of text) {
    bytes += Buffer.byteLength(character, 'utf8');
    if (bytes > maxBytes) break;
    end += character.length;
  }
  return text.slice(0, end);
}

/**
 * Each copy's name: "<approvalId>__<table>" for tables in public, "<approvalId>__<schema>__<table>"
 * elsewhere. Names over 63 bytes, and names two tables would share ("public"."app__t" and "app"."t"),
 * are cut and end in a hash of approval id, schema and table, which keeps them distinct; the approval
 * id stays at the front so `LIKE 'APR-…__%'` finds every copy of one approval.
 */
function withCopyNames<T extends { schema: string; name: string }>(
  approvalId: string,
  tables: readonly T[],
): { table: T; copy: string }[] {
  const plain = tables.map((table) => ({
    table,
    copy:
      table.schema === 'public'
        ? `${approvalId}__${table.name}`
        : `${approvalId}__${table.schema}__${table.name}`,
  }));
  const uses = new Map<string, number>();
  for (const { copy } of plain) uses.set(copy, (uses.get(copy) ?? 0) + 1);
  const named = plain.map(({ table, copy }) => {
    if (uses.get(copy) === 1 && Buffer.byteLength(copy, 'utf8') <= MAX_IDENTIFIER_BYTES)
      return { table, copy };
    const hash = createHash('sha256')
      .update(JSON.stringify([approvalId, table.schema, table.name]))
      .digest('hex')
      .slice(0, 12);
    return { table, copy: `${truncateUtf8(copy, MAX_IDENTIFIER_BYTES - hash.length - 1)}_${hash}` };
  });
  if (new Set(named.map(({ copy }) => copy)).size !== named.length) {
    throw new GateError('BACKUP_FAILED', 'Two tables would be copied under one backup name.', {
      context: { approvalId, method: 'table_copy' },
    });
  }
  return named;
}

/** One entry per table, the first where a table is named twice. */
function uniqueTables<T extends { schema: string; name: string }>(tables: readonly T[]): T[] {
  const byName = new Map<string, T>();
  for (const table of tables) {
    const key = JSON.stringify([table.schema, table.name]);
    if (!byName.has(key)) byName.set(key, table);
  }
  return [...byName.values()];
}

/**
 * SQL that copies each table's rows into `backupSchema`, e.g.
 *   CREATE SCHEMA IF NOT EXISTS "gate_backup";
 *   CREATE TABLE "gate_backup"."APR-20260213-003__customers" AS TABLE "public"."customers";
 *   COMMENT ON TABLE … IS 'approval-gate backup of "public"."customers" before APR-20260213-003';
 * Meant to run first inside the migration's own transaction: the copy sees exactly the rows the
 * migration starts from, and a migration that rolls back takes its copies with it. CREATE TABLE
 * without IF NOT EXISTS: an existing copy is an error, never replaced. A copy holds rows and column
 * types only (no constraints, indexes, defaults or grants), and costs the table's size again in the
 * database and its WAL, inside the transaction.
 */
export function tableCopyStatements(
  backupSchema: string,
  approvalId: string,
  tables: readonly { schema: string; name: string }[],
): string[] {
  const schema = quoteIdentifier(backupSchema);
  const copies = withCopyNames(approvalId, uniqueTables(tables));
  if (copies.length === 0) return [];
  const statements = [`CREATE SCHEMA IF NOT EXISTS ${schema}`];
  for (const { table, copy: copyName } of copies) {
    const source = `${quoteIdentifier(table.schema)}.${quoteIdentifier(table.name)}`;
    const copy = `${schema}.${quoteIdentifier(copyName)}`;
    statements.push(
      `CREATE TABLE ${copy} AS TABLE ${source}`,
      `COMMENT ON TABLE ${copy} IS ${quoteLiteral(`approval-gate backup of ${source} before ${approvalId}`)}`,
    );
  }
  return statements;
}

/**
 * The record of table copies made by tableCopyStatements with the same arguments; `location` lists
 * the copies as quoted, schema-qualified names, ready to paste into SQL.
 */
export function tableCopyRecord(
  backupSchema: string,
  approvalId: string,
  tables: readonly ExistingTable[],
): BackupRecord {
  const schema = quoteIdentifier(backupSchema);
  const copies = withCopyNames(approvalId, uniqueTables(tables));
  return {
    method: 'table_copy',
    location: copies.map(({ copy }) => `${schema}.${quoteIdentifier(copy)}`).join(', '),
    tables: copies.map(({ table }) => table.as_written),
    bytes: null,
  };
}
