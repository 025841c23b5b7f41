import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { isSeq, parseDocument } from 'yaml';
import { z } from 'zod';

/**
 * The labelled migration corpus (test/fixtures/migrations/*.yaml): one file per topic, each case a
 * migration an agent might submit, its label, the reason for it, and the facts a real Postgres 15
 * showed when it ran (checked by corpus-labels.test.ts, reused by the analyser's own test).
 */

export const CORPUS_DIRECTORY = path.join(import.meta.dirname, '../fixtures/migrations');

/** pg_locks modes, weakest first: "strongest" means the latest in this list. */
export const LOCK_MODES = [
  'AccessShareLock',
  'RowShareLock',
  'RowExclusiveLock',
  'ShareUpdateExclusiveLock',
  'ShareLock',
  'ShareRowExclusiveLock',
  'ExclusiveLock',
  'AccessExclusiveLock',
] as const;

export const LockModeSchema = z.enum(LOCK_MODES);
export type LockMode = z.infer<typeof LockModeSchema>;

const relationName = z.string().regex(/^[a-z_][a-z0-9_]*$/, 'an unquoted lower-case relation name');
const sqlstate = z.string().regex(/^[0-9A-Z]{5}$/, 'a five-character SQLSTATE');

/**
 * What the real server showed. Relations are those that existed before the migration, named as they
 * were then (a renamed table keeps its old name here; one the migration creates never appears).
 */
export const ObservedFactsSchema = z
  .object({
    /**
     * Strongest mode per table (or view, materialized view) the migration held or awaited: for a
     * transactional migration, read from pg_locks just before COMMIT; for a statement Postgres refuses
     * in a transaction block, read while it waits on a concurrent writer (a transaction holding ROW
     * EXCLUSIVE on every table), so a statement that never waits for writers shows nothing.
     */
    locks: z.record(relationName, LockModeSchema),
    /** The same for indexes. */
    index_locks: z.record(relationName, LockModeSchema).default({}),
    /** Tables, materialized views and indexes whose pg_class.relfilenode changed (new files written). */
    rewrites: z.array(relationName),
    /** Sequential scans started per table (pg_stat_user_tables.seq_scan delta): full reads of its rows. */
    scans: z.record(relationName, z.number().int().positive()),
    /** A table or database dropped, a column dropped, or rows gone from a table. */
    data_loss: z.boolean(),
    /** Postgres refuses a statement of it inside a transaction block (SQLSTATE 25001). */
    refused_in_transaction: z.boolean(),
    /** The SQLSTATE the migration fails with when run as the gate would run it. */
    fails_with: sqlstate.optional(),
    /**
     * Queries the running application issues: each succeeds before the migration; `after` is what it
     * does once the migration committed (`succeeds`, or the SQLSTATE it fails with).
     */
    app_queries: z
      .array(
        z.object({ query: z.string().min(1), after: z.union([z.literal('succeeds'), sqlstate]) }).strict(),
      )
      .default([]),
    /** current_setting() at the end of the migration; the harness starts with lock_timeout = '2s'. */
    settings: z.record(z.string(), z.string()).default({}),
  })
  .strict();

export type ObservedFacts = z.infer<typeof ObservedFactsSchema>;

export const MigrationCaseSchema = z
  .object({
    name: z.string().regex(/^[a-z0-9]+(-[a-z0-9]+)*$/, 'kebab-case'),
    /** Where the case comes from: a squawk rule, a strong_migrations section, the Postgres docs. */
    source: z.string().min(1),
    /** Run first, statement by statement outside a transaction, with search_path set to a fresh schema. */
    setup: z.string().default(''),
    /** The SQL as an agent submits it. `{{schema}}` and `{{database}}` are bound per run. */
    migration: z.string().min(1),
    /** True when the gate runs it in one transaction: no statement of it is refused in a block. */
    transactional: z.boolean(),
    label: z.enum(['dangerous', 'safe']),
    /** One to three sentences: the lock, rewrite, scan or data loss; for a dangerous case the safer way. */
    why: z.string().min(1),
    /** For a dangerous case: the safe case that does the same job (or the same thing where it is safe). */
    counterpart: z.string().optional(),
    /** For a dangerous case with no safe counterpart: why there is none. */
    no_counterpart: z.string().optional(),
    /** Set when the harness must not run the migration for real (only its refusal in a block is checked). */
    not_executed: z.string().optional(),
    observed: ObservedFactsSchema,
  })
  .strict()
  .superRefine((value, context) => {
    if (
      value.label === 'dangerous' &&
      (value.counterpart === undefined) === (value.no_counterpart === undefined)
    ) {
      context.addIssue({
        code: 'custom',
        message: 'a dangerous case names either a safe `counterpart` or why it has none (`no_counterpart`)',
      });
    }
    if (value.label === 'safe' && (value.counterpart !== undefined || value.no_counterpart !== undefined)) {
      context.addIssue({ code: 'custom', message: 'only dangerous cases name a counterpart' });
    }
    if (value.transactional === value.observed.refused_in_transaction) {
      context.addIssue({
        code: 'custom',
        message:
          'transactional must be false exactly when Postgres refuses a statement in a transaction block',
      });
    }
  });

export type MigrationCaseInput = z.infer<typeof MigrationCaseSchema>;

const TopicFileSchema = z
  .object({ topic: z.string().min(1), cases: z.array(MigrationCaseSchema).min(1) })
  .strict();

export interface MigrationCase extends MigrationCaseInput {
  readonly topic: string;
  /** The fixture file, relative to the corpus directory. */
  readonly file: string;
}

export class CorpusError extends Error {
  readonly code = 'MIGRATION_CORPUS_INVALID';
  constructor(readonly problems: readonly string[]) {
    super(`The migration corpus is invalid; fix these and rerun:\n  ${problems.join('\n  ')}`);
    this.name = 'CorpusError';
  }
}

const normalise = (text: string): string => text.replace(/\s+/g, ' ').trim();

/** The comment above each case must state the case's justification, word for word as in `why`. */
function commentProblems(file: string, source: string, cases: readonly MigrationCaseInput[]): string[] {
  const document = parseDocument(source);
  const sequence = document.get('cases', true);
  if (!isSeq(sequence)) return [];
  return sequence.items.flatMap((item, index) => {
    const node = item as { commentBefore?: string | null };
    const comment = node.commentBefore ?? (index === 0 ? sequence.commentBefore : undefined) ?? '';
    const why = cases[index]?.why ?? '';
    return normalise(comment) === normalise(why)
      ? []
      : [`${file}: case ${cases[index]?.name ?? index}: the comment above it must repeat its \`why\``];
  });
}

/** Every case of the corpus, validated; throws CorpusError listing every problem found. */
export async function loadMigrationCorpus(directory = CORPUS_DIRECTORY): Promise<MigrationCase[]> {
  const files = (await readdir(directory)).filter((file) => file.endsWith('.yaml')).sort();
  const problems: string[] = [];
  const cases: MigrationCase[] = [];
  for (const file of files) {
    const source = await readFile(path.join(directory, file), 'utf8');
    const document = parseDocument(source);
    if (document.errors.length > 0) {
      problems.push(...document.errors.map((error) => `${file}: ${error.message}`));
      continue;
    }
    const parsed = TopicFileSchema.safeParse(document.toJS());
    if (!parsed.success) {
      problems.push(
        ...parsed.error.issues.map(
          (issue) => `${file}: ${issue.path.join('.') || '(file)'}: ${issue.message}`,
        ),
      );
      continue;
    }
    problems.push(...commentProblems(file, source, parsed.data.cases));
    cases.push(...parsed.data.cases.map((entry) => ({ ...entry, topic: parsed.data.topic, file })));
  }
  const byName = new Map<string, MigrationCase>();
  for (const entry of cases) {
    if (byName.has(entry.name)) problems.push(`${entry.file}: case name ${entry.name} is used twice`);
    byName.set(entry.name, entry);
  }
  for (const entry of cases) {
    if (entry.counterpart === undefined) continue;
    const counterpart = byName.get(entry.counterpart);
    if (counterpart?.label !== 'safe') {
      problems.push(
        `${entry.file}: ${entry.name}: counterpart ${entry.counterpart} is not a safe case of the corpus`,
      );
    }
  }
  if (problems.length > 0) throw new CorpusError(problems);
  return cases;
}

/** The names a run binds in a case's SQL: its own schema and, for database-level cases, a database. */
export interface CaseNames {
  readonly schema: string;
  readonly database: string;
}

export function bindCaseSql(sql: string, names: CaseNames): string {
  return sql.replaceAll('{{schema}}', names.schema).replaceAll('{{database}}', names.database);
}
