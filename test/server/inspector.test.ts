import { spawn } from 'node:child_process';
import path from 'node:path';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decideInFile } from '../../src/approvals/human-edit.js';
import { PROJECT_ROOT } from '../../src/server/launch.js';
import type { ToolOutcome } from '../../src/server/outcome.js';
import { columnsOf, connectTestDatabase, TEST_DATABASE_URL, uniqueName } from '../helpers/postgres.js';
import { createWorkspace, type Workspace } from '../helpers/workspace.js';

/*
 * Compatibility proven by an independent client: the official MCP Inspector (0.15.0, its --cli
 * mode) spawns our server over stdio for each call. Version 0.15.0's CLI cannot send an
 * Authorization header, so the HTTP transport is exercised by the SDK client in http.test.ts.
 */

let knex: Knex;
let workspace: Workspace;
const table = uniqueName('inspector');
const ledgerSchema = uniqueName('gate_inspector');
const inspector = path.join(PROJECT_ROOT, 'node_modules/@modelcontextprotocol/inspector/cli/build/cli.js');
const tsxLoader = path.join(PROJECT_ROOT, 'node_modules/tsx/dist/loader.mjs');

function inspect(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      [
        inspector,
        '--cli',
        '-e',
        `TEST_STAGING_DB_URL=${TEST_DATABASE_URL}`,
        '-e',
        `APPROVAL_GATE_CONFIG=${workspace.configPath}`,
        process.execPath,
        '--import',
        tsxLoader,
        path.join(PROJECT_ROOT, 'src/cli.ts'),
        'serve',
        ...args,
      ],
      { cwd: PROJECT_ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

beforeAll(async () => {
  knex = await connectTestDatabase();
  await knex.schema.createTable(table, (t) => t.increments('id'));
  workspace = await createWorkspace({
    ledger_schema: ledgerSchema,
    wait: { max_wait_seconds: 1, progress_interval_seconds: 0.5 },
  });
});

afterAll(async () => {
  await knex.schema.dropTableIfExists(table);
  await knex.raw('drop schema if exists ?? cascade', [ledgerSchema]);
  await knex.destroy();
});

describe('MCP Inspector CLI over stdio', () => {
  it('lists the tools', async () => {
    const { code, stdout } = await inspect('--method', 'tools/list');
    expect(code).toBe(0);
    const names = (JSON.parse(stdout) as { tools: { name: string }[] }).tools.map((t) => t.name);
    expect(names).toEqual(
      expect.arrayContaining(['execute_migration', 'await_approval', 'get_approval_status']),
    );
  });

  it('runs a full request, approve, result cycle', async () => {
    const requested = await inspect(
      '--method',
      'tools/call',
      '--tool-name',
      'execute_migration',
      '--tool-arg',
      'environment=staging',
      'database=staging_db',
      `sql=ALTER TABLE ${table} ADD COLUMN via_inspector int`,
      'title=Inspector cycle',
      'reason=Proving compatibility with an independent client.',
    );
    expect(requested.code).toBe(0);
    const pending = (JSON.parse(requested.stdout) as { structuredContent: ToolOutcome }).structuredContent;
    expect(pending).toMatchObject({ status: 'PENDING' });
    await decideInFile(pending.file ?? '', { status: 'APPROVED', decidedBy: 'Dana Reyes' });
    const awaited = await inspect(
      '--method',
      'tools/call',
      '--tool-name',
      'await_approval',
      '--tool-arg',
      `id=${pending.approval_id ?? ''}`,
    );
    expect(
      (JSON.parse(awaited.stdout) as { structuredContent: ToolOutcome }).structuredContent,
    ).toMatchObject({
      status: 'APPROVED',
      execution: 'succeeded',
    });
    expect(await columnsOf(knex, table)).toContain('via_inspector');
  });
});
