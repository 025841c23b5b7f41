import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, type Database } from '../../src/db/index.js';
import { describeRelations, formatBytes, regclassText } from '../../src/migration/catalog.js';
import { connectTestDatabase, openTestDatabase, uniqueName } from '../helpers/postgres.js';

let knex: Knex;
let database: Database;
const schema = uniqueName('catalog_test');
const analysed = uniqueName('orders');
const unanalysed = uniqueName('fresh');
const view = uniqueName('orders_view');
const mixedCase = `${uniqueName('Mixed')}Case`;
const partitioned = uniqueName('events');
const ROWS = 2_000;

beforeAll(async () => {
  knex = await connectTestDatabase();
  database = openTestDatabase();
  await knex.raw(`create schema ${schema}`);
  await knex.raw(`create table ${analysed} (id int primary key, email text, note text)`);
  await knex.raw(`create index on ${analysed} (email)`);
  await knex.raw(
    `insert into ${analysed} select g, 'u' || g || '@example.com', repeat('x', 200) from generate_series(1, ${ROWS}) g`,
  );
  await knex.raw(`analyze ${analysed}`);
  // autovacuum off for this table: it must stay never-analysed while the test looks at it.
  await knex.raw(`create table ${schema}.${unanalysed} (id int) with (autovacuum_enabled = false)`);
  await knex.raw(`insert into ${schema}.${unanalysed} select generate_series(1, 10)`);
  await knex.raw(`create view ${view} as select id from ${analysed}`);
  await knex.raw(`create table "${mixedCase}" (id int)`);
  await knex.raw(`create table ${partitioned} (id int primary key) partition by range (id)`);
  await knex.raw(`create table ${partitioned}_low partition of ${partitioned} for values from (0) to (500)`);
  await knex.raw(
    `create table ${partitioned}_high partition of ${partitioned} for values from (500) to (1000)`,
  );
  await knex.raw(`insert into ${partitioned} select generate_series(0, 999)`);
  // As autovacuum would: partitions analysed, the parent never.
  await knex.raw(`analyze ${partitioned}_low`);
  await knex.raw(`analyze ${partitioned}_high`);
});

afterAll(async () => {
  await knex.raw(`drop view if exists ${view}`);
  await knex.raw(`drop table if exists ${analysed}, "${mixedCase}", ${partitioned}`);
  await knex.raw(`drop schema if exists ${schema} cascade`);
  await database.close();
  await knex.destroy();
});

describe('impact facts from the live catalog (real Postgres)', () => {
  it('reports an analysed table: estimated rows close to the real count, its size and its indexes', async () => {
    const [facts] = await database.withClient((s) => describeRelations(s, [analysed]));
    expect(facts).toMatchObject({ name: analysed, exists: true, kind: 'table', indexes: 2 });
    expect(facts?.estimated_rows).toBeGreaterThanOrEqual(ROWS * 0.9);
    expect(facts?.estimated_rows).toBeLessThanOrEqual(ROWS * 1.1);
    // Heap, TOAST and both indexes: 2 000 rows of ~230 bytes need well over 400 kB.
    expect(facts?.total_bytes).toBeGreaterThan(400 * 1024);
  });

  it('resolves a schema-qualified name, and reports a never-analysed table with unknown rows', async () => {
    const [facts] = await database.withClient((s) => describeRelations(s, [`${schema}.${unanalysed}`]));
    expect(facts).toMatchObject({
      name: `${schema}.${unanalysed}`,
      exists: true,
      kind: 'table',
      estimated_rows: null,
      indexes: 0,
    });
    expect(facts?.total_bytes).toBeGreaterThan(0);
  });

  it('reports a missing table as not existing, every other field null', async () => {
    const missing = uniqueName('not_created_yet');
    expect(await database.withClient((s) => describeRelations(s, [missing, `${schema}.${missing}`]))).toEqual(
      [
        { name: missing, exists: false, kind: null, estimated_rows: null, total_bytes: null, indexes: null },
        {
          name: `${schema}.${missing}`,
          exists: false,
          kind: null,
          estimated_rows: null,
          total_bytes: null,
          indexes: null,
        },
      ],
    );
  });

  it('reports a view as a view, without rows, size or indexes', async () => {
    const [facts] = await database.withClient((s) => describeRelations(s, [view]));
    expect(facts).toEqual({
      name: view,
      exists: true,
      kind: 'view',
      estimated_rows: null,
      total_bytes: null,
      indexes: null,
    });
  });

  it('finds a mixed-case table by the name the parser reports, not its lower-cased namesake', async () => {
    const [facts] = await database.withClient((s) => describeRelations(s, [mixedCase]));
    expect(facts).toMatchObject({ name: mixedCase, exists: true, kind: 'table' });
  });

  it('sums a partitioned table over its partitions instead of reporting the empty parent', async () => {
    const [facts] = await database.withClient((s) => describeRelations(s, [partitioned]));
    expect(facts).toMatchObject({ kind: 'partitioned table', estimated_rows: 1000, indexes: 1 });
    expect(facts?.total_bytes).toBeGreaterThan(0);
  });

  it('respects the session search_path for unqualified names', async () => {
    const facts = await database.withClient(async (s) => {
      await s.query(`select set_config('search_path', $1, false)`, [`${schema}, public`]);
      try {
        return await describeRelations(s, [unanalysed]);
      } finally {
        await s.query('reset search_path');
      }
    });
    expect(facts[0]).toMatchObject({ exists: true, kind: 'table' });
  });

  it('passes names only as parameters: a hostile name is looked up, never executed', async () => {
    const hostile = `x'); drop table ${analysed}; --`;
    const [facts] = await database.withClient((s) => describeRelations(s, [hostile]));
    expect(facts?.exists).toBe(false);
    const [still] = await database.withClient((s) => describeRelations(s, [analysed]));
    expect(still?.exists).toBe(true);
  });
});

describe('impact facts on PGlite', () => {
  it('reads the same facts with the same SQL', async () => {
    const embedded = openDatabase('embedded', { client: 'pglite', path: 'memory://' });
    try {
      const facts = await embedded.withClient(async (s) => {
        await s.query('create table customers (id int primary key, name text)');
        await s.query('insert into customers select g, $1 from generate_series(1, 100) g', ['n']);
        await s.query('analyze customers');
        await s.query('create view customer_names as select name from customers');
        return describeRelations(s, ['customers', 'public.customer_names', 'nowhere']);
      });
      expect(facts.map((f) => [f.name, f.exists, f.kind, f.estimated_rows, f.indexes])).toEqual([
        ['customers', true, 'table', 100, 1],
        ['public.customer_names', true, 'view', null, null],
        ['nowhere', false, null, null, null],
      ]);
      expect(facts[0]?.total_bytes).toBeGreaterThan(0);
    } finally {
      await embedded.close();
    }
  });
});

describe('regclassText', () => {
  it('quotes each part, so case and quotes in names survive to_regclass', () => {
    expect(regclassText('customers')).toBe('"customers"');
    expect(regclassText('app.Customers')).toBe('"app"."Customers"');
    expect(regclassText('we"ird')).toBe('"we""ird"');
  });
});

describe('formatBytes', () => {
  it('renders sizes in Postgres units, one decimal only below ten', () => {
    expect(formatBytes(0)).toBe('0 bytes');
    expect(formatBytes(1)).toBe('1 byte');
    expect(formatBytes(1023)).toBe('1023 bytes');
    expect(formatBytes(1024)).toBe('1.0 kB');
    expect(formatBytes(640 * 1024)).toBe('640 kB');
    expect(formatBytes(1.2 * 1024 ** 3)).toBe('1.2 GB');
    expect(formatBytes(1023.7 * 1024)).toBe('1.0 MB');
    expect(formatBytes(3 * 1024 ** 5)).toBe('3.0 PB');
    expect(formatBytes(2048 * 1024 ** 5)).toBe('2048 PB');
  });
});
