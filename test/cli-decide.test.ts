import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, startLiveServer, type LiveServer } from './helpers/cli.js';
import type { StdioSession } from './helpers/mcp.js';
import { columnsOf, uniqueName, TEST_DATABASE_ENV } from './helpers/postgres.js';
import type { Workspace } from './helpers/workspace.js';

/* approve / reject report only what the live server said about this very edit. */

let knex: Knex;
let workspace: Workspace;
let server: StdioSession;
const table = uniqueName('cli_decide');
const ledgerSchema = uniqueName('gate_cli_decide');
const env = TEST_DATABASE_ENV;

const cli = (...args: string[]) => runCli([...args, '--config', workspace.configPath], env);

async function pending(column: string): Promise<{ id: string; file: string }> {
  const { outcome } = await server.call('execute_migration', {
    environment: 'production',
    database: 'main_db',
    sql: `ALTER TABLE ${table} ADD COLUMN ${column} int`,
    title: `Add ${column}`,
    reason: 'Decided through the CLI.',
  });
  expect(outcome.status).toBe('PENDING');
  const id = outcome.approval_id ?? '';
  return { id, file: path.join(workspace.config.approvalsDir, `${id}.md`) };
}

/** The columns once `column` is there, or as they are after a short real deadline. */
async function columnsOnceAdded(column: string, deadlineMs = 10_000): Promise<string[]> {
  const until = Date.now() + deadlineMs;
  for (;;) {
    const columns = await columnsOf(knex, table);
    if (columns.includes(column) || Date.now() >= until) return columns;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

let live: LiveServer | undefined;

beforeAll(async () => {
  live = await startLiveServer(table, ledgerSchema);
  ({ knex, workspace, server } = live);
});

afterAll(async () => {
  await live?.close();
});

describe('approvals approve/reject report what the server said about this edit', () => {
  it('a refused attempt does not make the next, valid approval look refused', async () => {
    const { id } = await pending('after_refusal');
    const refused = await cli('approvals', 'approve', id, '--as', 'agent');
    expect(refused.code).toBe(3);
    expect(refused.stdout).toContain('SELF_APPROVAL');

    const approved = await cli('approvals', 'approve', id, '--as', 'Dana Reyes');
    expect(approved.stdout).not.toContain('SELF_APPROVAL');
    expect(approved.stdout).toContain(`${id}: APPROVED recorded`);
    // Recorded is what approve waits for; whether the migration already finished is a matter of timing.
    expect(approved.stdout).toMatch(/the migration (runs now|has finished: succeeded)/);
    expect(approved.code).toBe(0);
    expect(await columnsOnceAdded('after_refusal')).toContain('after_refusal');
  });

  it('--as with an empty name is refused before any edit', async () => {
    const { id, file } = await pending('nameless');
    const before = await readFile(file, 'utf8');
    for (const name of ['', '   ']) {
      const refused = await cli('approvals', 'approve', id, '--as', name);
      expect(refused.code).toBe(2);
      expect(refused.stderr).toContain('--as needs your name');
      expect(refused.stdout).toBe('');
    }
    const rejected = await cli('approvals', 'reject', id, '--as', '', '--reason', 'No');
    expect(rejected.code).toBe(2);
    expect(await readFile(file, 'utf8')).toBe(before);
    expect(await columnsOf(knex, table)).not.toContain('nameless');
  });

  it('--wait-result waits for the execution result', async () => {
    const { id } = await pending('awaited_result');
    const approved = await cli('approvals', 'approve', id, '--as', 'Dana Reyes', '--wait-result');
    expect(approved.code).toBe(0);
    expect(approved.stdout).toContain(`${id}: APPROVED recorded`);
    expect(approved.stdout).toContain('succeeded');
    // The result was final when the command returned: no polling needed here.
    expect(await columnsOf(knex, table)).toContain('awaited_result');

    const second = await pending('awaited_json');
    const json = await cli(
      'approvals',
      'approve',
      second.id,
      '--as',
      'Dana Reyes',
      '--wait-result',
      '--json',
    );
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({
      id: second.id,
      decision: 'APPROVED',
      execution: 'succeeded',
    });
  });
});
