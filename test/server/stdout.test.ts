import { spawn } from 'node:child_process';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { renderApprovalFile } from '../../src/approvals/render.js';
import { ApprovalStore } from '../../src/approvals/store.js';
import { stdioServerCommand } from '../../src/server/launch.js';
import { runCli, type CliRun } from '../helpers/cli.js';
import { sampleCommand, sampleContext, sampleRequest } from '../helpers/requests.js';
import { createWorkspace, type Workspace } from '../helpers/workspace.js';

/*
 * In stdio mode stdout is the JSON-RPC channel: one stray line (knex's default logger prints
 * connection errors with console.log) makes the client log parse failures. Postgres is made
 * unreachable on purpose, since that is when drivers and pools talk most.
 */

const UNREACHABLE_DB_URL = 'postgres://postgres@127.0.0.1:1/none';
const env = { ...process.env, TEST_MAIN_DB_URL: UNREACHABLE_DB_URL, TEST_STAGING_DB_URL: UNREACHABLE_DB_URL };
const KNEX_TEXT = /Acquire connection error|Knex:/;

type Run = CliRun;

let workspace: Workspace;

beforeAll(async () => {
  workspace = await createWorkspace();
});

/** Speaks newline-delimited JSON-RPC to a spawned server until the response with `id` arrives. */
async function callOverStdio(
  messages: readonly Record<string, unknown>[],
  id: number,
  timeoutMs: number,
): Promise<Run & { readonly response: Record<string, unknown> | null }> {
  const { command, args, cwd } = stdioServerCommand(workspace.configPath);
  const child = spawn(command, args, { cwd, env, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let response: Record<string, unknown> | null = null;
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const answered = new Promise<void>((resolve) => {
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString('utf8');
      for (const line of stdout.split('\n')) {
        try {
          const message = JSON.parse(line) as Record<string, unknown>;
          if (message.id === id && ('result' in message || 'error' in message)) {
            response = message;
            resolve();
          }
        } catch {
          // Not a whole JSON line (yet, or ever): the assertions look at every line afterwards.
        }
      }
    });
    setTimeout(resolve, timeoutMs);
  });
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8');
  });
  for (const message of messages) child.stdin.write(`${JSON.stringify(message)}\n`);
  await answered;
  // Closing stdin shuts the server down; whatever it still writes to stdout is checked too.
  child.stdin.end();
  const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  const code = await exited;
  clearTimeout(killer);
  return { stdout, stderr, code, response };
}

const cli = (args: readonly string[]) => runCli(args, { TEST_MAIN_DB_URL: UNREACHABLE_DB_URL });

describe('stdout belongs to the protocol', () => {
  it('a stdio server with an unreachable database answers a tool call, and every stdout line is JSON-RPC', async () => {
    const run = await callOverStdio(
      [
        {
          jsonrpc: '2.0',
          id: 1,
          method: 'initialize',
          params: {
            protocolVersion: '2025-06-18',
            capabilities: {},
            clientInfo: { name: 'approval-gate-stdout-test', version: '0.0.0' },
          },
        },
        { jsonrpc: '2.0', method: 'notifications/initialized' },
        {
          jsonrpc: '2.0',
          id: 2,
          method: 'tools/call',
          params: {
            name: 'execute_migration',
            arguments: {
              environment: 'staging',
              database: 'staging_db',
              sql: 'SELECT 1',
              title: 'Probe an unreachable database',
              reason: 'Checking that nothing but JSON-RPC reaches stdout.',
            },
          },
        },
      ],
      2,
      30_000,
    );
    expect(run.response, `no response to tools/call; stderr:\n${run.stderr}`).not.toBeNull();
    const lines = run.stdout.split('\n').filter((line) => line.trim() !== '');
    expect(lines.length).toBeGreaterThanOrEqual(2);
    for (const line of lines) {
      let message: unknown;
      expect(() => (message = JSON.parse(line)), `stdout line is not JSON: ${line}`).not.toThrow();
      expect(message, `stdout line is not JSON-RPC: ${line}`).toMatchObject({ jsonrpc: '2.0' });
    }
    // The refusal is not lost: it is a log line on stderr.
    expect(run.stderr).toMatch(
      /"code":"DATABASE_UNREACHABLE","msg":"request refused: The database .*staging_db.* could not be reached/,
    );
  });

  describe('the approvals CLI', () => {
    let id: string;

    beforeAll(async () => {
      // An approved request whose result is not known locally: `show` asks the ledger for it.
      const store = await ApprovalStore.open(workspace.config.approvalsDir, workspace.config.stateDir);
      const { id: _id, ...draft } = sampleRequest(
        { created_at: '2026-03-01T09:00:00+00:00', expires_at: '2026-03-01T09:15:00+00:00' },
        sampleCommand({ environment: 'staging' }),
      );
      const request = await store.create(draft, (r) => renderApprovalFile(r, sampleContext));
      id = request.id;
      await store.recordDecision(id, {
        approval_id: id,
        request_hash: request.request_hash,
        status: 'APPROVED',
        decided_by: 'Dana Reyes',
        decided_at: '2026-03-01T09:05:00+00:00',
        claimed_decided_at: null,
        second_approver: null,
        reason: null,
        signatures: [],
      });
    });

    it('writes only its JSON to stdout for `approvals list` and `approvals show` when the database is unreachable', async () => {
      const config = path.resolve(workspace.configPath);
      const list = await cli(['approvals', 'list', '--config', config, '--json']);
      expect(list.stdout).not.toMatch(KNEX_TEXT);
      expect(list.code, list.stderr).toBe(0);
      expect(JSON.parse(list.stdout)).toMatchObject({ approvals: [{ approval_id: id }] });

      const show = await cli(['approvals', 'show', id, '--config', config, '--json']);
      expect(show.stdout).not.toMatch(KNEX_TEXT);
      expect(show.code, show.stderr).toBe(0);
      const shown = JSON.parse(show.stdout) as { executionError: string | null; ledger?: string };
      // The ledger was asked (and could not answer): the warning went to stderr.
      expect(shown.executionError).toMatch(/ledger could not be read/);
      expect(shown.ledger).toBe('unreachable');
      // In a human's terminal, a finished request does not look "running": it says what it cannot know.
      const human = await cli(['approvals', 'show', id, '--config', config]);
      expect(human.stdout).toContain(
        'execution: unknown here: the ledger is not reachable from this terminal',
      );
      expect(human.stdout).not.toMatch(/execution: running/);
      expect(show.stderr).toMatch(/the ledger could not be read/);
    });
  });
});
