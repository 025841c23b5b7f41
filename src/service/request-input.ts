import { z } from 'zod';
import { Priority } from '../config.js';

/** What an agent submits. One zod schema: the MCP input schema and validation both come from it. */
export const MigrationRequestInput = z.object({
  environment: z
    .string()
    .min(1)
    .max(100)
    .describe('Target environment as named in the server config, e.g. "staging" or "production".'),
  database: z
    .string()
    .min(1)
    .max(100)
    .describe('Logical database name from the server config, e.g. "main_db". Never a connection string.'),
  migration_file: z
    .string()
    .min(1)
    .max(500)
    .optional()
    .describe(
      'Repository-relative path of the migration this SQL comes from, shown to the reviewer. The SQL that runs is `sql`.',
    ),
  sql: z
    .string()
    .min(1)
    .max(100_000)
    .describe(
      'The exact SQL to run: one or more statements separated by semicolons, each sent to Postgres on its own. ' +
        'They run in ONE transaction, so do not include BEGIN/COMMIT; a statement that cannot run in a transaction ' +
        '(CREATE INDEX CONCURRENTLY) makes every statement run and commit on its own. Refused before a human sees it: ' +
        "invisible or control characters (use E'\\u202E' escapes for data), SET/RESET of standard_conforming_strings " +
        'or client_encoding, RESET ALL, DISCARD, SET SESSION AUTHORIZATION, LOAD, COPY FROM STDIN/TO STDOUT, and SQL ' +
        "naming the gate's own schemas. Side effects no rollback undoes (COPY ... PROGRAM, dblink, pg_terminate_backend, " +
        'server files, role/database DDL) and code the server cannot read (EXECUTE in DO blocks) are flagged DANGER; ' +
        'an environment policy may refuse them.',
    ),
  rollback_sql: z
    .string()
    .min(1)
    .max(100_000)
    .optional()
    .describe(
      'SQL that undoes this migration, shown to the reviewer. A dry run rehearses it after the SQL (both are ' +
        'rolled back); otherwise it runs only through request_rollback and a new human approval.',
    ),
  dry_run: z
    .boolean()
    .default(false)
    .describe(
      'true: after approval, run the SQL in a transaction and roll it back, reporting what happened. Refused ' +
        'when a statement has effects no rollback undoes (the dry run would not be dry).',
    ),
  backup_before: z
    .boolean()
    .default(false)
    .describe(
      'true: back up the tables the SQL names before running (pg_dump, or copies inside the database); ' +
        'if the backup fails, nothing runs.',
    ),
  title: z
    .string()
    .min(3)
    .max(200)
    .describe('One line (no line breaks) a human reviewer sees first, e.g. "Add loyalty_tier to customers".'),
  reason: z
    .string()
    .min(10)
    .max(10_000)
    .describe(
      'Why this change is needed and what it is expected to do; shown to the reviewer as your reasoning.',
    ),
  priority: Priority.default('medium').describe(
    'critical | high | medium | low. Sets how long a human has to decide (critical: 15 minutes by default).',
  ),
});
export type MigrationRequestInput = z.input<typeof MigrationRequestInput>;
