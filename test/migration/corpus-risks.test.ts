import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RiskFinding } from '../../src/migration/risk-codes.js';
import { TEST_DATABASE_URL, uniqueName } from '../helpers/postgres.js';
import { loadMigrationCorpus } from './corpus.js';
import { CorpusJudge, flagged } from './corpus-judge.js';

/*
 * The analyser against the labelled corpus (whose labels corpus-labels.test.ts checks on the real
 * server): each case's setup builds a schema of its own on the real Postgres, the gate reads that
 * schema's catalog as it does at request time, and the migration must be flagged (a warning or a
 * danger) exactly when it is labelled dangerous: no miss, no false alarm.
 */

const corpus = await loadMigrationCorpus();
let judge: CorpusJudge;

beforeAll(async () => {
  judge = await CorpusJudge.open(TEST_DATABASE_URL, uniqueName('rcorpus'));
});

afterAll(async () => {
  await judge.close();
});

const describeFindings = (findings: readonly RiskFinding[]) =>
  findings
    .map((f) => `[${f.severity}] ${f.code} (statement ${f.statement ?? '-'}): ${f.message}`)
    .join('\n  ');

describe('the analyser on the labelled corpus, with the catalog of the real Postgres', () => {
  it.each(corpus.map((entry, index) => [entry.name, entry, index] as const))(
    '%s',
    async (_name, entry, index) => {
      const { withCatalog } = await judge.judge(entry, index);
      expect(
        flagged(withCatalog),
        `${entry.label} (${entry.why})\n  gate said:\n  ${describeFindings(withCatalog) || '(nothing)'}`,
      ).toBe(entry.label === 'dangerous');
    },
  );
});
