import { setTimeout as sleep } from 'node:timers/promises';
import { parse } from 'libpg-query';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEST_DATABASE_URL, unreachableTestDatabase, uniqueName } from '../helpers/postgres.js';
import {
  bindCaseSql,
  LOCK_MODES,
  loadMigrationCorpus,
  type CaseNames,
  type LockMode,
  type MigrationCase,
  type ObservedFacts,
} from './corpus.js';

/**
 * Every label of the migration corpus rests on facts; this runs each case on the real Postgres and
 * checks them: the locks it holds (pg_locks, read from a second connection just before COMMIT), the
 * files it rewrites (pg_class.relfilenode), the tables it reads in full (pg_stat_user_tables.seq_scan),
 * the data it removes, and whether Postgres refuses it inside a transaction block.
 */

const MINIMUM_CASES = 60;
/** What the gate sets before a migration; a case that changes it shows in `observed.settings`. */
const GATE_LOCK_TIMEOUT = '2s';
const PROBE_DEADLINE_MS = 10_000;

const corpus = await loadMigrationCorpus();

const unreachable = await unreachableTestDatabase('the corpus');

/** Statement texts, split by Postgres' own grammar (byte offsets, hence the Buffer). */
async function statementsOf(sql: string): Promise<string[]> {
  const bytes = Buffer.from(sql, 'utf8');
  const tree = await parse(sql);
  return (tree.stmts ?? []).map((entry) => {
    const start = entry.stmt_location ?? 0;
    const end = entry.stmt_len ? start + entry.stmt_len : bytes.length;
    return bytes.subarray(start, end).toString('utf8').trim();
  });
}

interface Relation {
  readonly oid: string;
  readonly name: string;
  readonly kind: string;
  readonly filenode: string;
  /** For an index, the oid of its table. */
  readonly table: string | null;
}

const INDEX_KINDS = new Set(['i', 'I']);
const HAS_FILES = new Set(['r', 'm', 'i']);

function strongest(a: LockMode | undefined, b: LockMode): LockMode {
  return a !== undefined && LOCK_MODES.indexOf(a) >= LOCK_MODES.indexOf(b) ? a : b;
}

function sqlstateOf(error: unknown): string {
  return (error as { code?: string }).code ?? `not a Postgres error: ${String(error)}`;
}

async function connect(applicationName: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: TEST_DATABASE_URL, application_name: applicationName });
  await client.connect();
  // Durability of these throw-away schemas does not matter; waiting for WAL flushes would dominate the run.
  await client.query('set synchronous_commit = off');
  return client;
}

let observer: pg.Client;
let writer: pg.Client;
const runPrefix = uniqueName('mcorpus');

/** Each case runs on a session of its own (settings it changes die with it); the next one connects meanwhile. */
let spareSession: Promise<pg.Client> | undefined;

async function freshSession(): Promise<pg.Client> {
  const session = await (spareSession ?? connect('corpus-case'));
  spareSession = connect('corpus-case');
  // An unused spare must not fail the run before it is awaited.
  spareSession.catch(() => undefined);
  return session;
}

beforeAll(async () => {
  if (unreachable !== undefined) return;
  observer = await connect('corpus-observer');
  writer = await connect('corpus-writer');
  await writer.query(`set lock_timeout = '5s'`);
});

afterAll(async () => {
  if (unreachable !== undefined) return;
  const schemas = await observer.query<{ name: string }>(
    'select nspname as name from pg_namespace where starts_with(nspname, $1)',
    [runPrefix],
  );
  for (const { name } of schemas.rows) await observer.query(`drop schema if exists "${name}" cascade`);
  const databases = await observer.query<{ name: string }>(
    'select datname as name from pg_database where starts_with(datname, $1)',
    [runPrefix],
  );
  for (const { name } of databases.rows) await observer.query(`drop database if exists "${name}"`);
  await observer.end();
  await writer.end();
  await (await spareSession)?.end();
});

async function relationsIn(schemaOid: string): Promise<Relation[]> {
  const { rows } = await observer.query<Relation>(
    `select c.oid::text as oid, c.relname as name, c.relkind::text as kind, c.relfilenode::text as filenode,
            i.indrelid::text as table
       from pg_class c left join pg_index i on i.indexrelid = c.oid
      where c.relnamespace = $1::oid and c.relkind in ('r', 'p', 'm', 'v', 'f', 'i', 'I')`,
    [schemaOid],
  );
  return rows;
}

interface DataShape {
  /** Row count per table oid. */
  readonly rows: Map<string, number>;
  /** `oid:attnum` of every live column. */
  readonly columns: Set<string>;
  readonly databaseExists: boolean;
}

async function dataShape(tables: readonly Relation[], database: string): Promise<DataShape> {
  const rows = new Map<string, number>();
  for (const table of tables) {
    const found = await observer.query<{ name: string }>('select $1::oid::regclass::text as name', [
      table.oid,
    ]);
    const name = found.rows[0]?.name;
    if (name === undefined || /^\d+$/.test(name)) continue;
    const counted = await observer.query<{ n: number }>(`select count(*)::int as n from ${name}`);
    rows.set(table.oid, counted.rows[0]?.n ?? 0);
  }
  const attributes = await observer.query<{ key: string }>(
    `select attrelid::text || ':' || attnum as key from pg_attribute
      where attrelid = any($1::oid[]) and attnum > 0 and not attisdropped`,
    [tables.map((table) => table.oid)],
  );
  // The counts above are sequential scans too: publish them now, not in the middle of a later measurement.
  await observer.query('select pg_stat_force_next_flush()');
  const databases = await observer.query('select 1 from pg_database where datname = $1', [database]);
  return {
    rows,
    columns: new Set(attributes.rows.map((row) => row.key)),
    databaseExists: databases.rowCount === 1,
  };
}

function lostData(before: DataShape, after: DataShape): boolean {
  if (before.databaseExists && !after.databaseExists) return true;
  for (const [oid, count] of before.rows) {
    const now = after.rows.get(oid);
    if (now === undefined || now < count) return true;
  }
  return [...before.columns].some((column) => !after.columns.has(column));
}

/** Sequential scans per table oid, after making `session` publish its pending statistics. */
async function seqScans(session: pg.Client, tables: readonly Relation[]): Promise<Map<string, number>> {
  await session.query('select pg_stat_force_next_flush()');
  const { rows } = await observer.query<{ oid: string; n: number }>(
    'select relid::text as oid, seq_scan::int as n from pg_stat_user_tables where relid = any($1::oid[])',
    [tables.map((table) => table.oid)],
  );
  return new Map(rows.map((row) => [row.oid, row.n]));
}

type LockFacts = Pick<ObservedFacts, 'locks' | 'index_locks'>;

function mergeLocks(into: LockFacts, from: LockFacts): void {
  for (const [name, mode] of Object.entries(from.locks)) into.locks[name] = strongest(into.locks[name], mode);
  for (const [name, mode] of Object.entries(from.index_locks)) {
    into.index_locks[name] = strongest(into.index_locks[name], mode);
  }
}

/**
 * Returns once the backend has finished aborting the failed transaction. Postgres sends the error
 * before it aborts (and releases the locks), so pg_locks read at once may still show them on a busy
 * machine; a further query is answered only after the abort (it fails: the block is aborted).
 */
async function abortDone(session: pg.Client): Promise<void> {
  await session.query('select 1').catch(() => undefined);
}

/** The relation locks `pid` holds or awaits, on relations that existed before the migration. */
async function locksOf(pid: number, before: ReadonlyMap<string, Relation>): Promise<LockFacts> {
  const { rows } = await observer.query<{ relation: string; mode: LockMode }>(
    `select relation::text as relation, mode from pg_locks
      where pid = $1 and locktype = 'relation'
        and database = (select oid from pg_database where datname = current_database())`,
    [pid],
  );
  const facts: LockFacts = { locks: {}, index_locks: {} };
  for (const { relation, mode } of rows) {
    const known = before.get(relation);
    if (known === undefined) continue;
    const map = INDEX_KINDS.has(known.kind) ? facts.index_locks : facts.locks;
    map[known.name] = strongest(map[known.name], mode);
  }
  return facts;
}

/**
 * Runs a statement Postgres refuses in a transaction block while `writer` holds ROW EXCLUSIVE on
 * every plain table (partitions, not their partitioned parents) of the case, as an in-flight write
 * would, and reads the locks the statement holds or awaits at its first wait.
 */
async function runWhileWriterActive(
  session: pg.Client,
  pid: number,
  statement: string,
  schemaOid: string,
  before: ReadonlyMap<string, Relation>,
): Promise<{ locks: LockFacts; error?: unknown }> {
  const tables = await observer.query<{ name: string }>(
    `select c.oid::regclass::text as name from pg_class c
      where c.relnamespace = $1::oid and c.relkind = 'r' and c.oid = any($2::oid[])`,
    [schemaOid, [...before.keys()]],
  );
  let locks: LockFacts = { locks: {}, index_locks: {} };
  await writer.query('begin');
  try {
    if (tables.rows.length > 0) {
      await writer.query(`lock table ${tables.rows.map((t) => t.name).join(', ')} in row exclusive mode`);
    }
    let settled = false;
    const running = session.query(statement).then(
      () => undefined,
      (error: unknown) => ({ error }),
    );
    void running.finally(() => (settled = true));
    const deadline = Date.now() + PROBE_DEADLINE_MS;
    while (!settled && Date.now() < deadline) {
      const activity = await observer.query<{ wait: string | null }>(
        'select wait_event_type as wait from pg_stat_activity where pid = $1',
        [pid],
      );
      if (activity.rows[0]?.wait === 'Lock') {
        locks = await locksOf(pid, before);
        break;
      }
      await sleep(5);
    }
    await writer.query('rollback');
    const outcome = await running;
    return outcome === undefined ? { locks } : { locks, error: outcome.error };
  } catch (error) {
    await writer.query('rollback');
    throw error;
  }
}

interface MigrationRun {
  readonly locks: LockFacts;
  readonly failedWith?: string;
  readonly settings: Record<string, string>;
}

async function settingsOf(session: pg.Client, names: readonly string[]): Promise<Record<string, string>> {
  const settings: Record<string, string> = {};
  for (const name of names) {
    const { rows } = await session.query<{ value: string }>('select current_setting($1) as value', [name]);
    settings[name] = rows[0]?.value ?? '';
  }
  return settings;
}

async function runTransactional(
  session: pg.Client,
  pid: number,
  statements: readonly string[],
  before: ReadonlyMap<string, Relation>,
  settingNames: readonly string[],
): Promise<MigrationRun> {
  await session.query('begin');
  for (const statement of statements) {
    try {
      await session.query(statement);
    } catch (error) {
      await abortDone(session);
      const locks = await locksOf(pid, before);
      await session.query('rollback');
      return { locks, failedWith: sqlstateOf(error), settings: await settingsOf(session, settingNames) };
    }
  }
  const locks = await locksOf(pid, before);
  const settings = await settingsOf(session, settingNames);
  await session.query('commit');
  return { locks, settings };
}

/** As the gate runs a migration it cannot wrap: each statement committed on its own, in order. */
async function runStepByStep(
  session: pg.Client,
  pid: number,
  statements: readonly string[],
  schemaOid: string,
  before: ReadonlyMap<string, Relation>,
  settingNames: readonly string[],
): Promise<MigrationRun> {
  const locks: LockFacts = { locks: {}, index_locks: {} };
  for (const statement of statements) {
    await session.query('begin');
    try {
      await session.query(statement);
      mergeLocks(locks, await locksOf(pid, before));
      await session.query('commit');
      continue;
    } catch (error) {
      if (sqlstateOf(error) !== '25001') {
        await abortDone(session);
        mergeLocks(locks, await locksOf(pid, before));
        await session.query('rollback');
        return { locks, failedWith: sqlstateOf(error), settings: await settingsOf(session, settingNames) };
      }
      await session.query('rollback');
    }
    const outcome = await runWhileWriterActive(session, pid, statement, schemaOid, before);
    mergeLocks(locks, outcome.locks);
    if (outcome.error !== undefined) {
      return {
        locks,
        failedWith: sqlstateOf(outcome.error),
        settings: await settingsOf(session, settingNames),
      };
    }
  }
  return { locks, settings: await settingsOf(session, settingNames) };
}

/** The SQLSTATE Postgres answers when the migration runs inside BEGIN, or undefined if it runs. */
async function sqlstateInsideBlock(
  session: pg.Client,
  statements: readonly string[],
): Promise<string | undefined> {
  await session.query('begin');
  try {
    for (const statement of statements) await session.query(statement);
    return undefined;
  } catch (error) {
    return sqlstateOf(error);
  } finally {
    await session.query('rollback');
  }
}

/** The SQLSTATE of `query`, run and rolled back, or 'succeeds'. */
async function outcomeOf(session: pg.Client, query: string): Promise<string> {
  await session.query('begin');
  try {
    await session.query(query);
    return 'succeeds';
  } catch (error) {
    return sqlstateOf(error);
  } finally {
    await session.query('rollback');
  }
}

interface CaseOutcome {
  readonly facts: ObservedFacts;
  readonly failingBefore: string[];
}

async function observeCase(entry: MigrationCase, index: number): Promise<CaseOutcome> {
  const names: CaseNames = { schema: `${runPrefix}_${index}`, database: `${runPrefix}_${index}_db` };
  await observer.query(`create schema "${names.schema}"`);
  const created = await observer.query<{ oid: string }>(
    'select oid::text as oid from pg_namespace where nspname = $1',
    [names.schema],
  );
  const schemaOid = created.rows[0]?.oid ?? '';
  const session = await freshSession();
  try {
    const pid = (await session.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid ?? 0;
    await session.query(`set search_path = "${names.schema}"`);
    await session.query(`set lock_timeout = '${GATE_LOCK_TIMEOUT}'`);
    await session.query(`set statement_timeout = '30s'`);
    for (const statement of await statementsOf(bindCaseSql(entry.setup, names)))
      await session.query(statement);

    const relations = await relationsIn(schemaOid);
    const before = new Map(relations.map((relation) => [relation.oid, relation]));
    const tables = relations.filter((relation) => relation.kind === 'r');
    const migration = await statementsOf(bindCaseSql(entry.migration, names));
    const expected = entry.observed;

    const shapeBefore = await dataShape(tables, names.database);
    const failingBefore: string[] = [];
    for (const { query } of expected.app_queries) {
      const outcome = await outcomeOf(session, bindCaseSql(query, names));
      if (outcome !== 'succeeds') failingBefore.push(`${query} fails before the migration: ${outcome}`);
    }
    // A transactional case shows whether Postgres refuses it by running; the others are tried in a block
    // first (a refused statement fails before doing anything, and the block is rolled back).
    const refusedInBlock = entry.transactional
      ? undefined
      : (await sqlstateInsideBlock(session, migration)) === '25001';

    if (entry.not_executed !== undefined) {
      return { facts: { ...expected, refused_in_transaction: refusedInBlock ?? false }, failingBefore };
    }

    const scansBefore = await seqScans(session, tables);
    const settingNames = Object.keys(expected.settings);
    const run = entry.transactional
      ? await runTransactional(session, pid, migration, before, settingNames)
      : await runStepByStep(session, pid, migration, schemaOid, before, settingNames);
    const scansAfter = await seqScans(session, tables);

    const scans: Record<string, number> = {};
    for (const table of tables) {
      const delta = (scansAfter.get(table.oid) ?? 0) - (scansBefore.get(table.oid) ?? 0);
      if (delta > 0) scans[table.name] = delta;
    }

    const after = await relationsIn(schemaOid);
    const afterByOid = new Map(after.map((relation) => [relation.oid, relation]));
    // ALTER COLUMN TYPE re-creates the indexes of its table under their old names (new oids).
    const successor = (relation: Relation): Relation | undefined =>
      afterByOid.get(relation.oid) ??
      after.find(
        (other) => other.kind === 'i' && other.name === relation.name && other.table === relation.table,
      );
    const rewrites = relations
      .filter((relation) => HAS_FILES.has(relation.kind))
      .filter((relation) => {
        const now = successor(relation);
        return now !== undefined && now.filenode !== relation.filenode;
      })
      .map((relation) => relation.name)
      .sort();

    const appQueries = [];
    for (const { query } of expected.app_queries) {
      appQueries.push({ query, after: await outcomeOf(session, bindCaseSql(query, names)) });
    }

    const facts: ObservedFacts = {
      locks: run.locks.locks,
      index_locks: run.locks.index_locks,
      rewrites,
      scans,
      data_loss: lostData(shapeBefore, await dataShape(tables, names.database)),
      refused_in_transaction: refusedInBlock ?? run.failedWith === '25001',
      app_queries: appQueries,
      settings: run.settings,
    };
    if (run.failedWith !== undefined) facts.fails_with = run.failedWith;
    return { facts, failingBefore };
  } finally {
    await session.end();
    const schema = await observer.query<{ name: string }>(
      'select nspname as name from pg_namespace where oid = $1::oid',
      [schemaOid],
    );
    for (const { name } of schema.rows) await observer.query(`drop schema "${name}" cascade`);
    await observer.query(`drop database if exists "${names.database}"`);
  }
}

describe.skipIf(unreachable !== undefined)(
  'the labelled migration corpus, checked on the real Postgres',
  () => {
    it(`holds at least ${MINIMUM_CASES} cases, dangerous and safe`, () => {
      expect(corpus.length).toBeGreaterThanOrEqual(MINIMUM_CASES);
      expect(corpus.some((entry) => entry.label === 'safe')).toBe(true);
      expect(corpus.some((entry) => entry.label === 'dangerous')).toBe(true);
    });

    it('gives every dangerous case a safe counterpart of the corpus, or says why there is none', () => {
      const labels = new Map(corpus.map((entry) => [entry.name, entry.label]));
      for (const entry of corpus.filter((candidate) => candidate.label === 'dangerous')) {
        if (entry.no_counterpart !== undefined) continue;
        expect(labels.get(entry.counterpart ?? ''), `${entry.name} → ${entry.counterpart}`).toBe('safe');
      }
    });

    it.each(corpus.map((entry, index) => [entry.name, entry, index] as const))(
      '%s: Postgres shows the facts its label rests on',
      async (_name, entry, index) => {
        const { facts, failingBefore } = await observeCase(entry, index);
        expect(failingBefore).toEqual([]);
        const expected = { ...entry.observed, rewrites: [...entry.observed.rewrites].sort() };
        expect(facts).toEqual(expected);
      },
    );
  },
);
