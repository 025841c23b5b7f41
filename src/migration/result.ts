import { z } from 'zod';

export const ExecutionError = z.object({
  sqlstate: z
    .string()
    .nullable()
    .describe('Postgres SQLSTATE code, e.g. 42P07; null when the error came from elsewhere.'),
  message: z.string(),
  detail: z.string().nullable(),
  hint: z.string().nullable(),
  statement: z.number().int().nullable().describe('1-based number of the failing statement.'),
  line: z.number().int().nullable().describe('1-based line in the submitted SQL where Postgres points.'),
  column: z.number().int().nullable(),
});
export type ExecutionError = z.infer<typeof ExecutionError>;

export const BackupInfo = z.object({
  method: z.enum(['pg_dump', 'table_copy']),
  location: z.string().describe('The dump file, or the schema-qualified copy tables.'),
  tables: z.array(z.string()),
  bytes: z.number().int().nullable(),
});
export type BackupInfo = z.infer<typeof BackupInfo>;

export const StatementOutcome = z.object({
  statement: z.number().int().describe('1-based number of the statement.'),
  kind: z.string().describe('Parse-tree kind, e.g. AlterTableStmt.'),
  rows_affected: z.number().int().nullable(),
});

/**
 * What the executor did. `succeeded`: committed. `failed`: an error occurred; in a transaction it was
 * rolled back and nothing changed, outside one the statements listed before the error stay applied.
 * `rolled_back`: a dry run: every statement ran and was rolled back. `unknown`: the server stopped
 * while a non-transactional statement ran; whether it took effect must be checked by a human.
 */
export const ExecutionResult = z.object({
  state: z.enum(['succeeded', 'failed', 'rolled_back', 'unknown']),
  dry_run: z.boolean(),
  transactional: z
    .boolean()
    .describe(
      'false: statements ran one by one outside a transaction; earlier ones stay applied if a later one fails.',
    ),
  started_at: z.string(),
  finished_at: z.string(),
  duration_ms: z.number().int(),
  rows_affected: z.number().int().nullable(),
  statements: z.array(StatementOutcome),
  error: ExecutionError.nullable(),
  backup: BackupInfo.nullable().describe('What backup_before saved before the migration ran, and where.'),
  rollback_rehearsal: z
    .object({
      state: z.enum(['succeeded', 'failed', 'not_provided', 'not_reached']),
      error: ExecutionError.nullable().describe('Line and column refer to the rollback SQL.'),
    })
    .nullable()
    .describe(
      'Dry runs only: the rollback SQL, run after the migration in the same rolled-back transaction.',
    ),
  executed_by: z.string().describe('host:pid of the server instance that ran it.'),
});
export type ExecutionResult = z.infer<typeof ExecutionResult>;
