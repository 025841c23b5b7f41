import { z } from 'zod';

/**
 * The vocabulary of risk findings: their codes, titles, which effects outlive a rollback, and the
 * shape of a finding. Kept apart from the rules (risks.ts), which need the SQL parser: the config,
 * the tool schemas and the approval file's wording need only these names.
 */

export const RISK_CODES = [
  'INDEX_BLOCKS_WRITES',
  'CONCURRENT_INDEX',
  'NON_ATOMIC_MIGRATION',
  'ADD_COLUMN_REWRITE',
  'ADD_COLUMN_METADATA_ONLY',
  'ADD_COLUMN_NOT_NULL_NO_DEFAULT',
  'SET_NOT_NULL_SCAN',
  'COLUMN_TYPE_REWRITE',
  'CONSTRAINT_VALIDATION_SCAN',
  'UNIQUE_INDEX_UNDER_EXCLUSIVE_LOCK',
  'DROP_TABLE',
  'DROP_COLUMN',
  'RENAME',
  'TRUNCATE',
  'UPDATE_WITHOUT_WHERE',
  'DELETE_WITHOUT_WHERE',
  'TIMEOUT_OVERRIDE',
  'LOCK_TIMEOUT_ENFORCED',
  'COPY_PROGRAM',
  'COPY_SERVER_FILE',
  'REMOTE_SQL',
  'SESSION_SIGNAL',
  'SERVER_FILE_ACCESS',
  'SERVER_ADMIN',
  'DATABASE_DDL',
  'TABLESPACE_DDL',
  'ROLE_DDL',
  'DYNAMIC_SQL',
  'UNANALYSED_CODE',
  'FOREIGN_TABLE_WRITE',
  'COLUMN_TYPE_NO_REWRITE',
  'JSON_COLUMN',
  'EXCLUSION_CONSTRAINT',
  'ATTACH_PARTITION_SCAN',
  'DETACH_PARTITION_LOCKS',
  'TABLE_REWRITE',
  'CONCURRENT_INDEX_ON_PARTITIONED_TABLE',
  'DROP_INDEX_LOCKS_TABLE',
  'DROP_SCHEMA',
  'ENUM_VALUE_USED_TOO_SOON',
  'DOMAIN_CONSTRAINT_SCAN',
  'REINDEX_BLOCKS_WRITES',
  'MATVIEW_REFRESH_BLOCKS_READS',
  'LOCK_HELD_LONG',
  'TIMEOUT_TIGHTENED',
  'REFUSED_IN_TRANSACTION',
] as const;
export type RiskCode = (typeof RISK_CODES)[number];

/** A short headline per finding, for the approval file. */
export const RISK_TITLES: Readonly<Record<RiskCode, string>> = {
  INDEX_BLOCKS_WRITES: 'Index build blocks writes',
  CONCURRENT_INDEX: 'Concurrent index build',
  NON_ATOMIC_MIGRATION: 'Not all-or-nothing',
  ADD_COLUMN_REWRITE: 'Column default rewrites the table',
  ADD_COLUMN_METADATA_ONLY: 'Column added without a rewrite',
  ADD_COLUMN_NOT_NULL_NO_DEFAULT: 'NOT NULL column without a default',
  SET_NOT_NULL_SCAN: 'SET NOT NULL scans the table',
  COLUMN_TYPE_REWRITE: 'Type change rewrites the table',
  CONSTRAINT_VALIDATION_SCAN: 'Constraint validated under lock',
  UNIQUE_INDEX_UNDER_EXCLUSIVE_LOCK: 'Unique index built under an exclusive lock',
  DROP_TABLE: 'Table dropped',
  DROP_COLUMN: 'Column dropped',
  RENAME: 'Rename breaks running code',
  TRUNCATE: 'All rows deleted',
  UPDATE_WITHOUT_WHERE: 'UPDATE of every row',
  DELETE_WITHOUT_WHERE: 'DELETE of every row',
  TIMEOUT_OVERRIDE: "SQL overrides the gate's timeout",
  LOCK_TIMEOUT_ENFORCED: 'Lock waits are bounded',
  COPY_PROGRAM: 'COPY runs an operating-system command',
  COPY_SERVER_FILE: 'COPY reads or writes a server file',
  REMOTE_SQL: 'SQL sent over another connection',
  SESSION_SIGNAL: 'Other sessions cancelled or ended',
  SERVER_FILE_ACCESS: "Server's file system accessed",
  SERVER_ADMIN: 'Server-wide administration',
  DATABASE_DDL: 'Database created, dropped or altered',
  TABLESPACE_DDL: 'Tablespace changed',
  ROLE_DDL: 'Roles changed on the whole server',
  DYNAMIC_SQL: 'SQL built at run time',
  UNANALYSED_CODE: 'Code the gate cannot analyse',
  FOREIGN_TABLE_WRITE: 'Foreign table written',
  COLUMN_TYPE_NO_REWRITE: 'Type change without a rewrite',
  JSON_COLUMN: 'json column breaks row comparisons',
  EXCLUSION_CONSTRAINT: 'Exclusion constraint built under an exclusive lock',
  ATTACH_PARTITION_SCAN: 'ATTACH PARTITION scans under lock',
  DETACH_PARTITION_LOCKS: 'DETACH PARTITION locks the partitioned table',
  TABLE_REWRITE: 'Table rewritten under an exclusive lock',
  CONCURRENT_INDEX_ON_PARTITIONED_TABLE: 'CONCURRENTLY refused on a partitioned table',
  DROP_INDEX_LOCKS_TABLE: 'DROP INDEX locks the whole table',
  DROP_SCHEMA: 'Schema dropped',
  ENUM_VALUE_USED_TOO_SOON: 'New enum value used before commit',
  DOMAIN_CONSTRAINT_SCAN: 'Domain constraint checked under SHARE locks',
  REINDEX_BLOCKS_WRITES: 'REINDEX blocks writes',
  MATVIEW_REFRESH_BLOCKS_READS: 'Materialized view refresh blocks reads',
  LOCK_HELD_LONG: 'Lock held through long work',
  TIMEOUT_TIGHTENED: "SQL tightens the gate's timeout",
  REFUSED_IN_TRANSACTION: 'Refused inside a transaction',
};

/** Findings at a statement that changes a timeout the reviewer was shown: the executor lets it. */
export const TIMEOUT_CHANGE_CODES: ReadonlySet<RiskCode> = new Set<RiskCode>([
  'TIMEOUT_OVERRIDE',
  'TIMEOUT_TIGHTENED',
]);

/**
 * Findings whose effects a rollback may not undo, or cannot be known: an OS command, a file, another
 * connection, another session, the server's configuration, databases and tablespaces, code nobody
 * can read. After a rolled-back failure the result names the statements with one of these.
 */
export const OUTSIDE_TRANSACTION_CODES: ReadonlySet<RiskCode> = new Set<RiskCode>([
  'COPY_PROGRAM',
  'COPY_SERVER_FILE',
  'REMOTE_SQL',
  'SESSION_SIGNAL',
  'SERVER_FILE_ACCESS',
  'SERVER_ADMIN',
  'DATABASE_DDL',
  'TABLESPACE_DDL',
  'DYNAMIC_SQL',
  'UNANALYSED_CODE',
  'FOREIGN_TABLE_WRITE',
]);

/**
 * What a dry run refuses: everything above, and role changes, which Postgres does roll back but which
 * are cluster-wide (a dry run is meant to touch nothing beyond a rolled-back transaction here).
 */
export const DRY_RUN_REFUSED_CODES: ReadonlySet<RiskCode> = new Set<RiskCode>([
  ...OUTSIDE_TRANSACTION_CODES,
  'ROLE_DDL',
]);

/** True when the finding's effects may survive the migration's rollback (see OUTSIDE_TRANSACTION_CODES). */
export function escapesTransaction(finding: Pick<RiskFinding, 'code'>): boolean {
  return OUTSIDE_TRANSACTION_CODES.has(finding.code);
}

export const RiskFinding = z.object({
  statement: z
    .number()
    .int()
    .nullable()
    .describe('1-based statement number; null for the migration as a whole.'),
  code: z.enum(RISK_CODES),
  severity: z.enum(['info', 'warning', 'danger']),
  lock: z.string().nullable().describe('The lock the statement takes, e.g. "ACCESS EXCLUSIVE on customers".'),
  message: z.string(),
  safer: z.string().nullable().describe('A safer way to get the same result, when there is one.'),
});
export type RiskFinding = z.infer<typeof RiskFinding>;
