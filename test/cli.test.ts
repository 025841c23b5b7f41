import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, startLiveServer, type LiveServer } from './helpers/cli.js';
import type { StdioSession } from './helpers/mcp.js';
import { columnsOf, uniqueName, TEST_DATABASE_ENV } from './helpers/postgres.js';
import type { Workspace } from './helpers/workspace.js';

/* The approvers' CLI against a live server: the gate treats its edits exactly like hand edits. */

let knex: Knex;
let workspace: Workspace;
let server: StdioSession;
const table = uniqueName('cli');
const ledgerSchema = uniqueName('gate_cli');
const env = TEST_DATABASE_ENV;

const cli = (...args: string[]) => runCli([...args, '--config', workspace.configPath], env);

async function pending(column: string): Promise<string> {
  const { outcome } = await server.call('execute_migration', {
    environment: 'production',
    database: 'main_db',
    sql: `ALTER TABLE ${table} ADD COLUMN ${column} int`,
    title: `Add ${column}`,
    reason: 'Decided through the CLI.',
  });
  expect(outcome.status).toBe('PENDING');
  return outcome.approval_id ?? '';
}

let live: LiveServer | undefined;

beforeAll(async () => {
  live = await startLiveServer(table, ledgerSchema);
  ({ knex, workspace, server } = live);
});

afterAll(async () => {
  await live?.close();
});

describe('approvals CLI', () => {
  it('approve: the gate executes exactly as for a hand edit, and list/show report it', async () => {
    const id = await pending('via_cli');
    const listed = await cli('approvals', 'list', '--status', 'PENDING', '--json');
    expect(listed.code).toBe(0);
    expect(
      (JSON.parse(listed.stdout) as { approvals: { approval_id: string }[] }).approvals.map(
        (a) => a.approval_id,
      ),
    ).toContain(id);

    const approved = await cli(
      'approvals',
      'approve',
      id,
      '--as',
      'Dana Reyes',
      '--comment',
      'Checked with the DBA',
    );
    expect(approved.code).toBe(0);
    expect(approved.stdout).toContain('APPROVED recorded');
    expect(await columnsOf(knex, table)).toContain('via_cli');

    const shown = await cli('approvals', 'show', id, '--json');
    expect(JSON.parse(shown.stdout)).toMatchObject({
      execution: 'succeeded',
      decision: { decided_by: 'Dana Reyes', reason: 'Checked with the DBA' },
    });
    const table_ = await cli('approvals', 'list');
    expect(table_.stdout).toMatch(new RegExp(`${id}\\s+APPROVED`));
  });

  it('reject: nothing runs and the reason is recorded', async () => {
    const id = await pending('rejected_by_cli');
    const rejected = await cli(
      'approvals',
      'reject',
      id,
      '--as',
      'Dana Reyes',
      '--reason',
      'Not in the freeze',
    );
    expect(rejected.code).toBe(0);
    const awaited = await server.call('await_approval', { id });
    expect(awaited.outcome).toMatchObject({ status: 'REJECTED', reason: 'Not in the freeze' });
    expect(await columnsOf(knex, table)).not.toContain('rejected_by_cli');
  });

  it('a decision the gate refuses (self-approval) exits 3 and executes nothing', async () => {
    const id = await pending('self_approved');
    const refused = await cli('approvals', 'approve', id, '--as', 'agent');
    expect(refused.code).toBe(3);
    expect(refused.stdout).toContain('SELF_APPROVAL');
    expect(await columnsOf(knex, table)).not.toContain('self_approved');
  });

  it('refuses bad input with a clear error: a missing reason, an unknown id', async () => {
    const noReason = await cli('approvals', 'reject', 'APR-20260101-001', '--as', 'Dana');
    expect(noReason.code).not.toBe(0);
    expect(noReason.stderr).toContain("required option '--reason <text>'");
    const unknown = await cli('approvals', 'show', 'APR-19990101-001');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('APPROVAL_NOT_FOUND');
  });
});
