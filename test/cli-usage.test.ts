import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../src/server/launch.js';
import { runCli, startLiveServer, type LiveServer } from './helpers/cli.js';
import type { StdioSession } from './helpers/mcp.js';
import { uniqueName, TEST_DATABASE_ENV } from './helpers/postgres.js';
import type { Workspace } from './helpers/workspace.js';

/* How the CLI treats what people type: usage errors, --version, id case, a missing config. */

const env = TEST_DATABASE_ENV;

const cli = (...args: string[]) => runCli(args, env);

let missingConfig: string;

beforeAll(async () => {
  missingConfig = path.join(await mkdtemp(path.join(tmpdir(), 'gate-cli-usage-')), 'nowhere', 'gate.yaml');
});

describe('usage errors exit 2 (invalid input) with commander’s message on stderr', () => {
  it('exits 2 when approve is missing --as', async () => {
    const run = await cli('approvals', 'approve', 'APR-20260101-001', '--config', missingConfig);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain("required option '--as <name>' not specified");
  });

  it('exits 2 when reject is missing --reason', async () => {
    const run = await cli('approvals', 'reject', 'APR-20260101-001', '--as', 'x', '--config', missingConfig);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain("required option '--reason <text>' not specified");
  });

  it('exits 2 on an unknown option', async () => {
    const run = await cli('approvals', 'list', '--bogus', '--config', missingConfig);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain("unknown option '--bogus'");
  });

  it('exits 2 on a status that is not one of the choices', async () => {
    const run = await cli('approvals', 'list', '--status', 'NOPE', '--config', missingConfig);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain("argument 'NOPE' is invalid. Allowed choices are");
  });
});

describe('--version', () => {
  it('prints the version from package.json and exits 0', async () => {
    const manifest = JSON.parse(await readFile(path.join(PROJECT_ROOT, 'package.json'), 'utf8')) as {
      version: string;
    };
    const run = await cli('--version');
    expect(run.code).toBe(0);
    expect(run.stdout.trim()).toBe(manifest.version);
  });
});

describe('a missing config', () => {
  it('says where the config was looked for and how to create it from the example', async () => {
    const run = await cli('approvals', 'list', '--config', missingConfig);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain(`No config at ${missingConfig}.`);
    expect(run.stderr).toContain(
      `mkdir -p ${path.dirname(missingConfig)} && cp ${path.join(PROJECT_ROOT, 'examples', 'approval-gate.yaml')} ${missingConfig}`,
    );
    expect(run.stderr).toContain('--config');
    expect(run.stderr).toContain('APPROVAL_GATE_CONFIG');
    expect(run.stderr).toContain('CONFIG_UNREADABLE');
  });
});

describe('approval ids in any case', () => {
  let workspace: Workspace;
  let server: StdioSession;
  const table = uniqueName('cli_usage');
  const ledgerSchema = uniqueName('gate_cli_usage');

  let live: LiveServer | undefined;

  beforeAll(async () => {
    live = await startLiveServer(table, ledgerSchema);
    ({ workspace, server } = live);
  });

  afterAll(async () => {
    await live?.close();
  });

  it('shows and rejects a request named by its id in lower case', async () => {
    const { outcome } = await server.call('execute_migration', {
      environment: 'production',
      database: 'main_db',
      sql: `ALTER TABLE ${table} ADD COLUMN lower_case_id int`,
      title: 'Add lower_case_id',
      reason: 'Named in lower case on the CLI.',
    });
    expect(outcome.status).toBe('PENDING');
    const id = outcome.approval_id ?? '';

    const shown = await cli(
      'approvals',
      'show',
      id.toLowerCase(),
      '--json',
      '--config',
      workspace.configPath,
    );
    expect(shown.code).toBe(0);
    expect((JSON.parse(shown.stdout) as { request: { id: string } }).request.id).toBe(id);

    const rejected = await cli(
      'approvals',
      'reject',
      id.toLowerCase(),
      '--as',
      'Dana Reyes',
      '--reason',
      'Not today',
      '--config',
      workspace.configPath,
    );
    expect(rejected.code).toBe(0);
    expect((await server.call('await_approval', { id })).outcome).toMatchObject({
      status: 'REJECTED',
      reason: 'Not today',
    });
  });
});
