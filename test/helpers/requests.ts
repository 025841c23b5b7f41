import { hashCommand, type ApprovalRequest, type MigrationCommand } from '../../src/approvals/request.js';

export function sampleCommand(overrides: Partial<MigrationCommand> = {}): MigrationCommand {
  return {
    environment: 'production',
    database: 'main_db',
    migration_file: 'migrations/20260213_add_loyalty_tier.sql',
    sql: "ALTER TABLE customers\nADD COLUMN loyalty_tier VARCHAR(20) DEFAULT 'bronze'\nNOT NULL;\n\nCREATE INDEX idx_loyalty_tier ON customers(loyalty_tier);\n",
    rollback_sql: 'DROP INDEX idx_loyalty_tier;\nALTER TABLE customers DROP COLUMN loyalty_tier;\n',
    dry_run: false,
    backup_before: false,
    ...overrides,
  };
}

export function sampleRequest(
  overrides: Partial<ApprovalRequest> = {},
  command = sampleCommand(),
): ApprovalRequest {
  return {
    id: 'APR-20260213-003',
    created_at: '2026-02-13T09:00:00+00:00',
    expires_at: '2026-02-13T09:15:00+00:00',
    requested_by: 'agent',
    priority: 'critical',
    title: 'Update Production Database Schema',
    reason: 'Add loyalty_tier to customers for the loyalty program launching next week.',
    command,
    request_hash: hashCommand(command),
    rollback_of: null,
    approvals_required: 1,
    ...overrides,
  };
}

export const sampleContext = {
  locks: [],
  impact: [
    {
      name: 'customers',
      exists: true,
      kind: 'table' as const,
      estimated_rows: 10_234_567,
      total_bytes: 2_147_483_648,
      indexes: 3,
    },
  ],
  findings: [
    {
      statement: 2,
      code: 'INDEX_BLOCKS_WRITES' as const,
      severity: 'danger' as const,
      lock: 'SHARE on customers',
      message:
        'CREATE INDEX without CONCURRENTLY blocks every INSERT, UPDATE and DELETE on customers for the whole index build.',
      safer: 'CREATE INDEX CONCURRENTLY idx_loyalty_tier ON customers (...) as a request of its own.',
    },
  ],
  statements: [
    { kind: 'AlterTableStmt', relations: ['customers'], transactional: true },
    { kind: 'IndexStmt', relations: ['customers'], transactional: true },
  ],
  lockTimeoutMs: 3000,
  statementTimeoutMs: 600_000,
  serverName: 'approval-gate',
};
