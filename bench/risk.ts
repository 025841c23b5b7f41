/**
 * How well the risk analysis judges migrations (`npm run bench:risk`): recall on the dangerous cases
 * and false alarms on the safe ones of the labelled corpus (test/fixtures/migrations, every label
 * checked on a real Postgres 15 by corpus-labels.test.ts), for the gate with the live catalog, the
 * gate without it (a static linter's position), and squawk's safety rules run in the same process
 * tree on the same SQL, as the field's floor.
 *
 *   npm run bench:risk
 *
 * Exit code: 0 when the gate with the catalog misses nothing and raises no false alarm, 1 otherwise.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { loadMigrationCorpus, type MigrationCase } from '../test/migration/corpus.js';
import { CorpusJudge, flagged } from '../test/migration/corpus-judge.js';
import { loopbackDatabaseUrl, runMain, say, table } from './common.js';
import { PROJECT_ROOT } from './harness.js';

/**
 * squawk's rules about style or about what the gate's executor does itself (timeouts): not safety
 * verdicts on the SQL, and raised on nearly every migration.
 */
const SQUAWK_NON_SAFETY_RULES = [
  'ban-char-field',
  'prefer-bigint-over-int',
  'prefer-bigint-over-smallint',
  'prefer-identity',
  'prefer-robust-stmts',
  'prefer-text-field',
  'prefer-timestamptz',
  'require-lock-timeout',
  'require-statement-timeout',
  'require-timeout-settings',
];

const SQUAWK = path.join(PROJECT_ROOT, 'node_modules', '.bin', 'squawk');

/** squawk's verdict on a case's SQL: the rules it raised, or null when squawk cannot run here. */
function squawkRules(file: string): string[] | null {
  const run = spawnSync(
    SQUAWK,
    ['--reporter', 'json', '--pg-version', '15', `--exclude=${SQUAWK_NON_SAFETY_RULES.join(',')}`, file],
    {
      encoding: 'utf8',
    },
  );
  if (run.error || (run.status !== 0 && run.status !== 1)) return null;
  const parsed: unknown = JSON.parse(run.stdout || '[]');
  if (!Array.isArray(parsed)) return null;
  return parsed.map((violation) => String((violation as { rule_name?: unknown }).rule_name));
}

interface Tally {
  readonly name: string;
  readonly caught: string[];
  readonly missed: string[];
  readonly falseAlarms: string[];
  readonly quiet: string[];
}

const tally = (name: string): Tally => ({ name, caught: [], missed: [], falseAlarms: [], quiet: [] });

function count(into: Tally, entry: MigrationCase, raised: boolean): void {
  if (entry.label === 'dangerous') (raised ? into.caught : into.missed).push(entry.name);
  else (raised ? into.falseAlarms : into.quiet).push(entry.name);
}

const percent = (part: number, whole: number) =>
  whole === 0 ? '-' : `${((100 * part) / whole).toFixed(0)} %`;

async function main(): Promise<number> {
  const corpus = await loadMigrationCorpus();
  const dangerous = corpus.filter((entry) => entry.label === 'dangerous').length;
  const safe = corpus.length - dangerous;
  say('approval-gate risk analysis on the labelled corpus (every label checked on a real Postgres 15)');
  say(`${corpus.length} cases: ${dangerous} dangerous, ${safe} safe`);
  say();
  const judge = await CorpusJudge.open(
    loopbackDatabaseUrl().href,
    `bench_risk_${randomBytes(4).toString('hex')}`,
  );
  const directory = await mkdtemp(path.join(tmpdir(), 'approval-gate-bench-risk-'));
  const withCatalog = tally('approval-gate, live catalog');
  const withoutCatalog = tally('approval-gate, SQL only');
  const squawk = tally('squawk 2.66 (safety rules)');
  let squawkRan = true;
  try {
    for (const [index, entry] of corpus.entries()) {
      const judged = await judge.judge(entry, index);
      count(withCatalog, entry, flagged(judged.withCatalog));
      count(withoutCatalog, entry, flagged(judged.withoutCatalog));
      const file = path.join(directory, `${entry.name}.sql`);
      await writeFile(file, judged.sql);
      const rules = squawkRules(file);
      if (rules === null) squawkRan = false;
      else count(squawk, entry, rules.length > 0);
    }
  } finally {
    await judge.close();
    await rm(directory, { recursive: true, force: true });
  }
  const judges = squawkRan ? [withCatalog, withoutCatalog, squawk] : [withCatalog, withoutCatalog];
  for (const line of table(
    [
      ['judge', 'dangerous caught', 'recall', 'false alarms on safe', 'rate'],
      ...judges.map((t) => [
        t.name,
        `${t.caught.length} / ${dangerous}`,
        percent(t.caught.length, dangerous),
        `${t.falseAlarms.length} / ${safe}`,
        percent(t.falseAlarms.length, safe),
      ]),
    ],
    new Set([1, 2, 3, 4]),
  )) {
    say(line);
  }
  if (!squawkRan) say('(squawk did not run here: npm ci installs it as a dev dependency)');
  say();
  for (const t of judges) {
    if (t.missed.length > 0) say(`${t.name} missed: ${t.missed.join(', ')}`);
    if (t.falseAlarms.length > 0) say(`${t.name} false alarms: ${t.falseAlarms.join(', ')}`);
  }
  const perfect = withCatalog.missed.length === 0 && withCatalog.falseAlarms.length === 0;
  say();
  say(
    perfect
      ? 'The gate with the live catalog judged every case right.'
      : 'The gate with the live catalog judged some cases wrong (above).',
  );
  return perfect ? 0 : 1;
}

runMain('bench:risk', main);
