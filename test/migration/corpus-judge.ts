import { parse } from 'libpg-query';
import pg from 'pg';
import type { Database } from '../../src/db/index.js';
import { analyseSql } from '../../src/migration/analyse.js';
import type { RiskFinding } from '../../src/migration/risk-codes.js';
import { assessRisks } from '../../src/migration/risks.js';
import { readSchemaFacts } from '../../src/migration/schema-facts.js';
import { openPgDatabase } from '../../src/db/index.js';
import { bindCaseSql, type CaseNames, type MigrationCase } from './corpus.js';

/**
 * Runs the gate's analyser on corpus cases the way a request is judged: the case's setup builds a
 * schema of its own on the real Postgres, the gate reads that schema's catalog, and the migration is
 * assessed with it (and, for comparison, without it). Shared by the corpus test and `npm run bench:risk`.
 */

/** The executor's limits the corpus assumes (corpus-labels.test.ts runs cases with lock_timeout 2s). */
export const CORPUS_LIMITS = { lockTimeoutMs: 2000, statementTimeoutMs: 60_000, lockRetries: 5 };

/** What a reviewer is warned about: any finding above info. */
export function flagged(findings: readonly RiskFinding[]): boolean {
  return findings.some((finding) => finding.severity !== 'info');
}

export interface Judgement {
  readonly sql: string;
  readonly withCatalog: RiskFinding[];
  readonly withoutCatalog: RiskFinding[];
}

async function statementsOf(sql: string): Promise<string[]> {
  const bytes = Buffer.from(sql, 'utf8');
  return ((await parse(sql)).stmts ?? []).map((entry) => {
    const start = entry.stmt_location ?? 0;
    const end = entry.stmt_len ? start + entry.stmt_len : bytes.length;
    return bytes.subarray(start, end).toString('utf8').trim();
  });
}

export class CorpusJudge {
  readonly #admin: pg.Client;
  readonly #database: Database;
  readonly #prefix: string;

  private constructor(admin: pg.Client, database: Database, prefix: string) {
    this.#admin = admin;
    this.#database = database;
    this.#prefix = prefix;
  }

  /** `prefix` names the schemas (and databases) the cases build; `close` drops them. */
  static async open(databaseUrl: string, prefix: string): Promise<CorpusJudge> {
    const admin = new pg.Client({ connectionString: databaseUrl, application_name: 'corpus-judge' });
    await admin.connect();
    await admin.query('set synchronous_commit = off');
    return new CorpusJudge(admin, openPgDatabase('corpus', databaseUrl), prefix);
  }

  async judge(entry: MigrationCase, index: number): Promise<Judgement> {
    const names: CaseNames = { schema: `${this.#prefix}_${index}`, database: `${this.#prefix}_${index}_db` };
    await this.#admin.query(`create schema "${names.schema}"`);
    await this.#admin.query(`set search_path = "${names.schema}"`);
    try {
      for (const statement of await statementsOf(bindCaseSql(entry.setup, names)))
        await this.#admin.query(statement);
    } finally {
      await this.#admin.query('reset search_path');
    }
    const sql = bindCaseSql(entry.migration, names);
    const analysis = await analyseSql(sql);
    const facts = await this.#database.withClient(async (session) => {
      await session.query(`select pg_catalog.set_config('search_path', $1, false)`, [`"${names.schema}"`]);
      try {
        return await readSchemaFacts(session, analysis.statements);
      } finally {
        await session.query('reset search_path');
      }
    });
    return {
      sql,
      withCatalog: assessRisks(analysis.statements, CORPUS_LIMITS, facts).findings,
      withoutCatalog: assessRisks(analysis.statements, CORPUS_LIMITS).findings,
    };
  }

  async close(): Promise<void> {
    const schemas = await this.#admin.query<{ name: string }>(
      'select nspname as name from pg_namespace where starts_with(nspname, $1)',
      [this.#prefix],
    );
    for (const { name } of schemas.rows) await this.#admin.query(`drop schema if exists "${name}" cascade`);
    const databases = await this.#admin.query<{ name: string }>(
      'select datname as name from pg_database where starts_with(datname, $1)',
      [this.#prefix],
    );
    for (const { name } of databases.rows) await this.#admin.query(`drop database if exists "${name}"`);
    await this.#admin.end();
    await this.#database.close();
  }
}
