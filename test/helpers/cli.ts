import { spawn } from 'node:child_process';
import type { Knex } from 'knex';
import { PROJECT_ROOT } from '../../src/server/launch.js';
import { startStdioServer, type StdioSession } from './mcp.js';
import { connectTestDatabase, TEST_DATABASE_ENV } from './postgres.js';
import { createWorkspace, type Workspace } from './workspace.js';

export interface CliRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the approvers' CLI from source (`node --import tsx src/cli.ts …`), as a person at a terminal. */
export function runCli(
  args: readonly string[],
  env: Record<string, string | undefined> = {},
): Promise<CliRun> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], {
      cwd: PROJECT_ROOT,
      env: { ...process.env, ...env, NO_COLOR: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** A real stdio server on the real Postgres with one table, for the CLI to act on beside it. */
export interface LiveServer {
  readonly knex: Knex;
  readonly workspace: Workspace;
  readonly server: StdioSession;
  close(): Promise<void>;
}

export async function startLiveServer(table: string, ledgerSchema: string): Promise<LiveServer> {
  const knex = await connectTestDatabase();
  await knex.schema.createTable(table, (t) => t.increments('id'));
  const workspace = await createWorkspace({
    ledger_schema: ledgerSchema,
    wait: { max_wait_seconds: 0.2, progress_interval_seconds: 0.1 },
  });
  const server = await startStdioServer(workspace.configPath, TEST_DATABASE_ENV);
  return {
    knex,
    workspace,
    server,
    async close() {
      await server.close();
      await knex.schema.dropTableIfExists(table);
      await knex.raw('drop schema if exists ?? cascade', [ledgerSchema]);
      await knex.destroy();
    },
  };
}
