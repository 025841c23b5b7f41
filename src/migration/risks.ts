import { GateError } from '../errors.js';
import type { AnalysedStatement } from './analyse.js';
import { blockedBy, blocksReads, blocksWrites, stronger, type LockMode } from './lock-modes.js';
import { executedSites, viaPrefix } from './nested-code.js';
import { DRY_RUN_REFUSED_CODES, RISK_TITLES, type RiskFinding } from './risk-codes.js';
import { NO_SCHEMA_FACTS, type SchemaFacts } from './schema-facts.js';
import { sideEffectsOf, type GateLimits } from './side-effects.js';
import { newMigrationState, statementEffect, type Candidate } from './statement-rules.js';

/**
 * What a migration will really do to a live database, judged the way a DBA reads it: the lock each
 * statement takes, the work it does in proportion to a table (a scan, a rewrite, an index build), and
 * — because a transaction holds every lock until it commits — the locks still held while later work
 * runs. Each piece of work is as harmful as the strongest lock held on its table meanwhile: under
 * ACCESS EXCLUSIVE reads wait, under SHARE and stronger writes wait, under SHARE UPDATE EXCLUSIVE the
 * application carries on. Computed from the Postgres parse tree and, where the catalog was read, from
 * the target database itself (column types, constraints, which tables hold rows), never from the
 * agent's description.
 */

/** A table's lock over the migration: taken at `from`, held through `to` (1-based statement numbers). */
export interface LockSpan {
  readonly relation: string;
  /** The strongest mode the migration holds on it. */
  readonly mode: LockMode;
  readonly from: number;
  /** The last statement it is held through: the last of the migration when it runs in one transaction. */
  readonly to: number;
  readonly blocks: ReturnType<typeof blockedBy>;
  /** Statements that do long work (scans, rewrites, index builds, mass updates) while it is held. */
  readonly longDuring: readonly number[];
}

export interface RiskAssessment {
  /** Most severe first, then in statement order. */
  readonly findings: RiskFinding[];
  readonly locks: LockSpan[];
}

export interface AssessmentOptions extends GateLimits {
  readonly lockRetries: number;
}

const SEVERITY_ORDER: Readonly<Record<RiskFinding['severity'], number>> = { danger: 0, warning: 1, info: 2 };

function bySeverity(a: RiskFinding, b: RiskFinding): number {
  return (
    SEVERITY_ORDER[a.severity] - SEVERITY_ORDER[b.severity] ||
    (a.statement ?? Number.MAX_SAFE_INTEGER) - (b.statement ?? Number.MAX_SAFE_INTEGER)
  );
}

/** Writes to a foreign table happen on another server, through its wrapper, outside this transaction. */
const WRITING_KINDS = new Set([
  'InsertStmt',
  'UpdateStmt',
  'DeleteStmt',
  'MergeStmt',
  'CopyStmt',
  'TruncateStmt',
]);

function foreignTableWrite(statement: AnalysedStatement, facts: SchemaFacts): RiskFinding | null {
  if (!WRITING_KINDS.has(statement.kind)) return null;
  if (statement.kind === 'CopyStmt' && statement.node.is_from !== true) return null;
  const written = statement.relations.filter((relation) => facts.table(relation)?.kind === 'f');
  if (written.length === 0) return null;
  return {
    statement: statement.index + 1,
    code: 'FOREIGN_TABLE_WRITE',
    severity: 'danger',
    lock: null,
    message:
      `${written.join(', ')} ${written.length === 1 ? 'is a foreign table' : 'are foreign tables'} (from the live catalog): ` +
      'the write goes to another server through its foreign-data wrapper, which may commit it on its own; ' +
      'no rollback or dry run of this migration is sure to undo it.',
    safer: 'Run the change on the server that owns the data, through its own approval.',
  };
}

interface Held {
  mode: LockMode;
  /** 0-based statement that took the mode held now. */
  from: number;
  to: number;
  readonly longDuring: number[];
}

/**
 * Judges one piece of work by the lock held on its table while it runs (this statement's own lock
 * and any stronger one an earlier statement of the transaction still holds).
 */
function judge(
  candidate: Candidate & { readonly work: NonNullable<Candidate['work']> },
  index: number,
  held: ReadonlyMap<string, Held>,
  facts: SchemaFacts,
  created: ReadonlySet<string>,
  transactional: boolean,
): Omit<RiskFinding, 'statement'> | null {
  const { relation, does } = candidate.work;
  if (created.has(relation)) return null;
  const lock = held.get(relation);
  const lockText = lock ? `${lock.mode} on ${relation}` : null;
  // Only the lock's cost shrinks with an empty table; a finding dangerous in itself (rows deleted) stays.
  if (facts.table(relation)?.empty === true && candidate.severity === 'by lock') {
    return {
      code: candidate.code,
      severity: 'info',
      lock: lockText,
      message: `${candidate.message} ${relation} holds no rows (from the live catalog), so this takes an instant.`,
      safer: null,
    };
  }
  const matview = facts.table(relation)?.kind === 'm';
  const harmful = lock !== undefined && (matview ? blocksReads(lock.mode) : blocksWrites(lock.mode));
  const since =
    lock && lock.from < index
      ? ` ${lock.mode} on ${relation}, taken by statement ${lock.from + 1} and held${transactional ? ' until the migration commits' : ''},`
      : lock
        ? ` ${lock.mode} on ${relation}`
        : '';
  const severity = candidate.severity === 'by lock' ? (harmful ? 'danger' : 'info') : candidate.severity;
  // A finding dangerous in itself (row locks, data lost) says nothing of a table lock that harms no one.
  const fixed = candidate.severity !== 'by lock';
  const consequence = !lock
    ? ''
    : harmful
      ? `${since} blocks ${matview ? 'reads' : blockedBy(lock.mode)} for as long as it ${does} the table.`
      : fixed
        ? ''
        : `${since} lets reads and writes continue while it ${does} the table.`;
  return {
    code: candidate.code,
    severity,
    lock: lockText,
    message: `${candidate.message}${consequence ? ` ${consequence.trim()}` : ''}`,
    safer: harmful || severity !== 'info' ? candidate.safer : null,
  };
}

/**
 * Findings and lock timeline for a whole migration. `facts`: the target's catalog as read at request
 * time; without it (`NO_SCHEMA_FACTS`) every rule assumes the worst, as a static linter must.
 */
export function assessRisks(
  statements: readonly AnalysedStatement[],
  options: AssessmentOptions,
  facts: SchemaFacts = NO_SCHEMA_FACTS,
): RiskAssessment {
  const withCatalog = facts !== NO_SCHEMA_FACTS;
  const transactional = statements.every((statement) => statement.transactional);
  const state = newMigrationState();
  const findings: RiskFinding[] = [];
  const held = new Map<string, Held>();
  const spans: LockSpan[] = [];
  const closeSpans = () => {
    for (const [relation, lock] of held) {
      spans.push({
        relation,
        mode: lock.mode,
        from: lock.from + 1,
        to: lock.to + 1,
        blocks: blockedBy(lock.mode),
        longDuring: lock.longDuring.map((index) => index + 1),
      });
    }
    held.clear();
  };
  let previous = -1;
  for (const site of executedSites(statements)) {
    const prefix = viaPrefix(site.via);
    if (site.type === 'opaque') {
      findings.push({
        statement: site.index + 1,
        ...site.effect,
        message: `${prefix}${site.effect.message}`,
      });
      continue;
    }
    const { statement } = site;
    const index = statement.index;
    // Outside a transaction each statement commits on its own, and its locks go with it.
    if (!transactional && index !== previous) closeSpans();
    previous = index;
    const effect = statementEffect({ statement, statements, facts, withCatalog, state, transactional });
    for (const { relation, mode } of effect.locks) {
      const lock = held.get(relation);
      if (!lock) held.set(relation, { mode, from: index, to: index, longDuring: [] });
      else if (stronger(lock.mode, mode) !== lock.mode) {
        lock.mode = mode;
        lock.from = index;
      }
    }
    for (const lock of held.values()) lock.to = index;
    const add = (finding: Omit<RiskFinding, 'statement'>) =>
      findings.push({ statement: index + 1, ...finding, message: `${prefix}${finding.message}` });
    const lockText = effect.locks.map(({ relation, mode }) => `${mode} on ${relation}`).join(', ') || null;
    const long = new Set(effect.long);
    for (const candidate of effect.candidates) {
      if (candidate.work) {
        const judged = judge(
          { ...candidate, work: candidate.work },
          index,
          held,
          facts,
          state.created,
          transactional,
        );
        if (judged) add(judged);
        const { relation } = candidate.work;
        if (!state.created.has(relation) && facts.table(relation)?.empty !== true) long.add(relation);
        continue;
      }
      add({
        code: candidate.code,
        severity: candidate.severity === 'by lock' ? 'warning' : candidate.severity,
        lock: lockText,
        message: candidate.message,
        safer: candidate.safer,
      });
    }
    if (long.size > 0) {
      for (const [relation, lock] of held) {
        if (!lock.longDuring.includes(index)) lock.longDuring.push(index);
        // A lock an earlier statement took on another table is still held while this one works.
        if (
          long.has(relation) ||
          lock.from >= index ||
          !blocksWrites(lock.mode) ||
          state.created.has(relation)
        )
          continue;
        add({
          code: 'LOCK_HELD_LONG',
          severity: 'danger',
          lock: `${lock.mode} on ${relation}`,
          message:
            `${relation} stays locked ${lock.mode} (taken by statement ${lock.from + 1}) while this statement works on ` +
            `${[...long].join(', ')}: the application's ${blockedBy(lock.mode)} on ${relation} wait that long.`,
          safer: `Submit statement ${lock.from + 1} and this one as separate requests, so the lock is released before the long work starts.`,
        });
      }
    }
    for (const found of sideEffectsOf(statement, options)) add(found);
    const foreign = foreignTableWrite(statement, facts);
    if (foreign) add(foreign);
  }
  closeSpans();
  if (statements.length > 1 && !transactional) {
    findings.push({
      statement: null,
      code: 'NON_ATOMIC_MIGRATION',
      severity: 'info',
      lock: null,
      message:
        'A statement here cannot run in a transaction, so every statement runs and commits on its own: if one fails, the ones before it stay applied.',
      safer:
        'Submit the statement that cannot run in a transaction (e.g. CREATE INDEX CONCURRENTLY) as a request of its own.',
    });
  }
  if (spans.some((span) => blocksWrites(span.mode))) {
    findings.push({
      statement: null,
      code: 'LOCK_TIMEOUT_ENFORCED',
      severity: 'info',
      lock: null,
      message:
        `The executor sets lock_timeout = ${options.lockTimeoutMs} ms, so a statement never queues other sessions behind it for longer; ` +
        `a transaction that gives up is rolled back whole and retried up to ${options.lockRetries} times with backoff.`,
      safer: null,
    });
  }
  findings.sort(bySeverity);
  return { findings, locks: mergeSpans(spans) };
}

/** One line per table: the strongest mode, from the first statement that holds it to the last. */
function mergeSpans(spans: readonly LockSpan[]): LockSpan[] {
  const byRelation = new Map<string, LockSpan>();
  for (const span of spans) {
    const earlier = byRelation.get(span.relation);
    if (!earlier) {
      byRelation.set(span.relation, span);
      continue;
    }
    const mode = stronger(earlier.mode, span.mode);
    byRelation.set(span.relation, {
      relation: span.relation,
      mode,
      from: mode === earlier.mode ? earlier.from : span.from,
      to: Math.max(earlier.to, span.to),
      blocks: blockedBy(mode),
      longDuring: [...new Set([...earlier.longDuring, ...span.longDuring])],
    });
  }
  return [...byRelation.values()];
}

/**
 * Refuses a dry run that would not be dry: call it after `assessRisks` with the request's dry_run flag.
 * A dry run rolls back at the end, which cannot undo an OS command, a remote commit or a killed session.
 */
export function assertDryRunIsDry(
  findings: readonly RiskFinding[],
  options: { readonly dryRun: boolean },
): void {
  if (!options.dryRun) return;
  const escaping = findings.find((finding) => DRY_RUN_REFUSED_CODES.has(finding.code));
  if (!escaping) return;
  const where = escaping.statement === null ? 'the migration' : `statement ${escaping.statement}`;
  throw new GateError(
    'DRY_RUN_NOT_DRY',
    `A dry run would not be dry: ${where} (${RISK_TITLES[escaping.code]}) has effects no rollback undoes, ` +
      'or that the gate cannot see. Nothing was written; remove it, or submit without dry_run for a human to review.',
    { context: { statement: escaping.statement } },
  );
}
