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
 * The command's fields, in the schema's order: the one list that the hash, the Execution Command
 * block and the tamper check all walk, so that no field can be hashed but not shown, or shown but not
 * checked. Adding a field to MigrationCommand adds it everywhere (and changes every hash).
 */
export const COMMAND_FIELDS = MigrationCommand.keyof().options;

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
    approvals_required: z
      .union([z.literal(1), z.literal(2)])
      .default(1)
      .describe(
        '2 when the environment policy asks two different people to approve (decided_by and second_approver).',
      ),
    rollback_of: ApprovalId.nullable()
      .default(null)
      .describe('Set when this request runs the recorded rollback SQL of an executed request.'),
  })
  .strict();
export type ApprovalRequest = z.infer<typeof ApprovalRequest>;

/**
 * SHA-256 over the command's fields in a fixed order: identical commands hash identically. That is
 * why a decision is bound to the approval id as well as to this hash: twin requests with the same SQL
 * share a hash, never an id.
 */
export function hashCommand(command: MigrationCommand): string {
  const canonical = JSON.stringify(COMMAND_FIELDS.map((field) => command[field]));
  return `sha256:${createHash('sha256').update(canonical, 'utf8').digest('hex')}`;
}

/** A decision the server has accepted. The first one recorded stands. */
export const DecisionStatus = z
  .enum(['APPROVED', 'REJECTED', 'EXPIRED', 'VOID', 'CANCELLED'])
  .describe(
    'EXPIRED: no valid decision in time. VOID: approved, but the file no longer showed what would run. ' +
      'CANCELLED: the file was deleted or moved away while pending, or the requester withdrew it (cancel_approval).',
  );

/** A signature the gate verified for a decision, kept so that it can be verified again before running. */
export const DecisionSignature = z
  .object({
    role: z.enum(['decided_by', 'second_approver']),
    principal: z.string(),
    fingerprint: z.string().describe('SHA256 fingerprint of the signing key, as ssh-keygen -l prints it.'),
    key_type: z.string(),
    armored: z.string().describe('The SSH signature as written in the file.'),
  })
  .strict();
export type DecisionSignature = z.infer<typeof DecisionSignature>;

export const Decision = z
  .object({
    approval_id: ApprovalId.describe('The request this decision is about; it never applies to another.'),
    request_hash: z
      .string()
      .describe('The hash of the request decided on; a decision never applies to a different command.'),
    status: DecisionStatus,
    decided_by: z.string().nullable().describe('Who decided; null when the server did (EXPIRED, CANCELLED).'),
    decided_at: z.string().describe("When the server accepted the decision, by the server's clock."),
    claimed_decided_at: z
      .string()
      .nullable()
      .describe('decided_at as the human wrote it; informational only.'),
    second_approver: z
      .string()
      .nullable()
      .default(null)
      .describe('The second approver, when two were required.'),
    reason: z.string().nullable(),
    signatures: z
      .array(DecisionSignature)
      .default([])
      .describe('In an environment with allowed_signers: the verified signatures the decision rests on.'),
  })
  .strict();
export type Decision = z.infer<typeof Decision>;

/** What a human may write in `status`. EXPIRED is the server's alone. */
export const HumanStatus = z.enum(['PENDING', 'APPROVED', 'REJECTED']);

/**
 * The approval file's front matter, for editors (schemas/approval-front-matter.schema.json). The gate
 * reads decisions field by field (decision.ts) so that each mistake gets its own message; this schema
 * documents the same fields and values for tooling.
 */
export const ApprovalFrontMatter = z
  .object({
    id: ApprovalId,
    created_at: z.string().describe('ISO 8601; naive times are read in the server time zone.'),
    status: z
      .enum([...HumanStatus.options, 'EXPIRED'])
      .describe(
        'Change PENDING to APPROVED or REJECTED, exactly, in capitals. Only the server writes EXPIRED.',
      ),
    action_type: z.string(),
    priority: Priority,
    expires_at: z.string().describe('After this time (server clock) no decision is accepted.'),
    requested_by: z.string(),
    environment: z.string().optional(),
    database: z.string().optional(),
    request_hash: z.string().optional().describe("SHA-256 of the server's record of the command."),
    rollback_of: ApprovalId.optional().describe('The executed request whose rollback SQL this request runs.'),
    decided_by: z
      .string()
      .optional()
      .describe('Your name. Required for APPROVED and REJECTED; not the requester.'),
    second_approver: z
      .string()
      .optional()
      .describe('When two approvers are required: a second person, not decided_by and not the requester.'),
    decided_at: z.string().optional().describe('Informational; the server records its own time.'),
    reason: z.string().optional().describe('Required for REJECTED (or the Comments line in the body).'),
    signature: z
      .string()
      .optional()
      .describe(
        'Where the environment has allowed_signers: the SSH signature (-----BEGIN SSH SIGNATURE-----, as a YAML ' +
          'block) of decided_by over the message in Human Instructions (ssh-keygen -Y sign -n approval-gate).',
      ),
    second_signature: z
      .string()
      .optional()
      .describe(
        "The second approver's SSH signature, when two approvers are required in a signed environment.",
      ),
    comments: z.string().optional(),
    decided_via: z
      .literal('mcp-client')
      .optional()
      .describe(
        'Written by the server when the decision was answered in the MCP client (approve_in_client), not typed ' +
          'here. Informational: the audit trail is the record of where a decision came from.',
      ),
    gate_error: z.string().optional().describe('Written by the server: why your last edit was not accepted.'),
    execution: z.enum(['not_started', 'running', 'succeeded', 'failed', 'rolled_back', 'unknown']).optional(),
    execution_started_at: z.string().optional(),
    execution_finished_at: z.string().optional(),
    execution_duration_ms: z.number().int().optional(),
    execution_rows_affected: z.number().int().nullable().optional(),
    execution_error: z.string().optional(),
  })
  .loose();
