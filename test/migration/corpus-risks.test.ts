import { parse } from 'libpg-query';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Database } from '../../src/db/index.js';
import { analyseSql } from '../../src/migration/analyse.js';
import type { RiskFinding } from '../../src/migration/risk-codes.js';
import { assessRisks } from '../../src/migration/risks.js';
import { readSchemaFacts } from '../../src/migration/schema-facts.js';
import { openTestDatabase, TEST_DATABASE_URL, uniqueName } from '../helpers/postgres.js';
import { bindCaseSql, loadMigrationCorpus, type CaseNames, type MigrationCase } from './corpus.js';

/*
 * The analyser against the labelled corpus (whose labels corpus-labels.test.ts checks on the real
 * server): each case's setup builds a schema of its own on the real Postgres, the gate reads that
 * schema's catalog as it does at request time, and the migration must be flagged (a warning or a
 * danger) exactly when it is labelled dangerous: no miss, no false alarm.
 */

/** The executor's limits the corpus assumes (corpus-labels.test.ts runs cases with lock_timeout 2s). */
const LIMITS = { lockTimeoutMs: 2000, statementTimeoutMs: 60_000, lockRetries: 5 };

const corpus = await loadMigrationCorpus();

async function statementsOf(sql: string): Promise<string[]> {
  const bytes = Buffer.from(sql, 'utf8');
  return ((await parse(sql)).stmts ?? []).map((entry) => {
    const start = entry.stmt_location ?? 0;
    const end = entry.stmt_len ? start + entry.stmt_len : bytes.length;
    return bytes.subarray(start, end).toString('utf8').trim();
  });
}

export function flagged(findings: readonly RiskFinding[]): boolean {
  return findings.some((finding) => finding.severity !== 'info');
}

let admin: pg.Client;
let database: Database;
const runPrefix = uniqueName('rcorpus');

beforeAll(async () => {
  admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await admin.connect();
  await admin.query('set synchronous_commit = off');
  database = openTestDatabase();
});

afterAll(async () => {
  const schemas = await admin.query<{ name: string }>(
    'select nspname as name from pg_namespace where starts_with(nspname, $1)',
    [runPrefix],
  );
  for (const { name } of schemas.rows) await admin.query(`drop schema if exists "${name}" cascade`);
  const databases = await admin.query<{ name: string }>(
    'select datname as name from pg_database where starts_with(datname, $1)',
    [runPrefix],
  );
  for (const { name } of databases.rows) await admin.query(`drop database if exists "${name}"`);
  await admin.end();
  await database.close();
});

/** The findings the gate gives the case's migration, on the catalog its setup built. */
async function judge(entry: MigrationCase, index: number): Promise<RiskFinding[]> {
  const names: CaseNames = { schema: `${runPrefix}_${index}`, database: `${runPrefix}_${index}_db` };
  await admin.query(`create schema "${names.schema}"`);
  await admin.query(`set search_path = "${names.schema}"`);
  for (const statement of await statementsOf(bindCaseSql(entry.setup, names))) await admin.query(statement);
  await admin.query('reset search_path');
  const analysis = await analyseSql(bindCaseSql(entry.migration, names));
  const facts = await database.withClient(async (session) => {
    await session.query(`select pg_catalog.set_config('search_path', $1, false)`, [`"${names.schema}"`]);
    try {
      return await readSchemaFacts(session, analysis.statements);
    } finally {
      await session.query('reset search_path');
    }
  });
  return assessRisks(analysis.statements, LIMITS, facts).findings;
}

const describeFindings = (findings: readonly RiskFinding[]) =>
  findings
    .map((f) => `[${f.severity}] ${f.code} (statement ${f.statement ?? '-'}): ${f.message}`)
    .join('\n  ');

describe('the analyser on the labelled corpus, with the catalog of the real Postgres', () => {
  it.each(corpus.map((entry, index) => [entry.name, entry, index] as const))(
    '%s',
    async (_name, entry, index) => {
      const findings = await judge(entry, index);
      expect(
        flagged(findings),
        `${entry.label} (${entry.why})\n  gate said:\n  ${describeFindings(findings) || '(nothing)'}`,
      ).toBe(entry.label === 'dangerous');
    },
  );
});
