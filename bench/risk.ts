/**
 * How well the risk analysis judges migrations (`npm run bench:risk`): recall on the dangerous cases
 * and false alarms on the safe ones of the labelled corpus (test/fixtures/migrations, every label
 * checked on a real Postgres 15 by corpus-labels.test.ts), for the gate with the live catalog, the
 * gate without it (a static linter's position), and squawk's safety rules on the same SQL in the same
 * run, as the field's floor. squawk is not a dependency of the project (its npm package lists a binary
 * package per platform, which not every registry mirror carries, and `npm ci` would refuse the
 * lockfile): the bench installs the pinned version into node_modules/.cache on first use.
 *
 *   npm run bench:risk
 *
 * Exit code: 0 when the gate with the catalog misses nothing and raises no false alarm, 1 otherwise.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
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

const SQUAWK_VERSION = '2.66.0';
const SQUAWK_DIRECTORY = path.join(PROJECT_ROOT, 'node_modules', '.cache', `squawk-cli-${SQUAWK_VERSION}`);

/** The squawk binary, installed on first use; null when it cannot be installed here. */
function squawkBinary(): string | null {
  const binary = path.join(SQUAWK_DIRECTORY, 'node_modules', '.bin', 'squawk');
  if (existsSync(binary)) return binary;
  const install = spawnSync(
    'npm',
    [
      'install',
      '--prefix',
      SQUAWK_DIRECTORY,
      '--no-save',
      '--no-package-lock',
      '--no-audit',
      '--no-fund',
      `squawk-cli@${SQUAWK_VERSION}`,
    ],
    { encoding: 'utf8' },
  );
  return install.status === 0 && existsSync(binary) ? binary : null;
}

/** squawk's verdict on a case's SQL: the rules it raised, or null when squawk cannot run here. */
function squawkRules(squawk: string, file: string): string[] | null {
  const run = spawnSync(
    squawk,
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
  const squawk = squawkBinary();
  const bySquawk = tally(`squawk ${SQUAWK_VERSION} (safety rules)`);
  let squawkRan = squawk !== null;
  try {
    for (const [index, entry] of corpus.entries()) {
      const judged = await judge.judge(entry, index);
      count(withCatalog, entry, flagged(judged.withCatalog));
      count(withoutCatalog, entry, flagged(judged.withoutCatalog));
      const file = path.join(directory, `${entry.name}.sql`);
      await writeFile(file, judged.sql);
      const rules = squawk === null ? null : squawkRules(squawk, file);
      if (rules === null) squawkRan = false;
      else count(bySquawk, entry, rules.length > 0);
    }
  } finally {
    await judge.close();
    await rm(directory, { recursive: true, force: true });
  }
  const judges = squawkRan ? [withCatalog, withoutCatalog, bySquawk] : [withCatalog, withoutCatalog];
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
  if (!squawkRan) say(`(squawk ${SQUAWK_VERSION} could not be installed or run here, so it is not compared)`);
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
