import { createHash } from 'node:crypto';
import { z } from 'zod';
import { Priority } from '../config.js';

export const APPROVAL_ID_PATTERN = /^APR-\d{8}-\d{3,6}$/;
export const ApprovalId = z.string().regex(APPROVAL_ID_PATTERN, 'must look like APR-YYYYMMDD-NNN');

/** What will run, exactly: the part of a request covered by its hash. */
export const MigrationCommand = z
  .object({
    environment: z.string(),
    database: z.string(),
    migration_file: z.string().nullable(),
    sql: z.string(),
    rollback_sql: z.string().nullable(),
    dry_run: z.boolean(),
    backup_before: z.boolean(),
  })
  .strict();
export type MigrationCommand = z.infer<typeof MigrationCommand>;

/**
 * The server's canonical record of a request. It lives in the state directory, never in the
 * human-editable file; execution always uses this record, never text read back from the file.
 */
export const ApprovalRequest = z
  .object({
    id: ApprovalId,
    created_at: z.string(),
    expires_at: z.string(),
    requested_by: z.string(),
    priority: Priority,
    title: z.string(),
    reason: z.string(),
    command: MigrationCommand,
    request_hash: z.string(),
  })
  .strict();
export type ApprovalRequest = z.infer<typeof ApprovalRequest>;

/** SHA-256 over the command's fields in a fixed order: identical commands hash identically. */
export function hashCommand(command: MigrationCommand): string {
  const canonical = JSON.stringify([
    command.environment,
    command.database,
    command.migration_file,
    command.sql,
    command.rollback_sql,
    command.dry_run,
    command.backup_before,
  ]);
  return `sha256:${createHash('sha256').update(canonical, 'utf8').digest('hex')}`;
}

/** A decision the server has accepted. The first one recorded stands. */
export const Decision = z
  .object({
    status: z.enum(['APPROVED', 'REJECTED', 'EXPIRED']),
    decided_by: z.string().nullable().describe('Who decided; null for EXPIRED (the server decided).'),
    decided_at: z.string().describe("When the server accepted the decision, by the server's clock."),
    claimed_decided_at: z.string().nullable().describe('decided_at as the human wrote it; informational only.'),
    reason: z.string().nullable(),
  })
  .strict();
export type Decision = z.infer<typeof Decision>;
