import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmod, chown, mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Knex } from 'knex';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decideCommand, openClientPipeline } from '../../src/commands.js';
import { loadConfig } from '../../src/config.js';
import { silentLogger } from '../helpers/log.js';
import { stdioServerCommand } from '../../src/server/launch.js';
import type { ToolOutcome } from '../../src/server/outcome.js';
import { startStdioServer, type StdioSession } from '../helpers/mcp.js';
import {
  columnsOf,
  connectTestDatabase,
  TEST_DATABASE_URL,
  uniqueName,
  TEST_DATABASE_ENV,
} from '../helpers/postgres.js';

/*
 * The deployment the issue asks to hold: the MCP client (and so the agent) runs as an ordinary user,
 * spawns the gate over stdio as that user, and the trust anchors (config, allowed_signers) belong to
 * root. The reviewer signs with a key the agent's user cannot read, through the CLI, and the migration
 * runs on the real Postgres; with an allowed_signers file the agent's user owns, the gate does not
 * start at all. Needs root to make files owned by someone else: CI runs as root.
 */

const NOBODY = { uid: 65534, gid: 65534 };
const isRoot = process.getuid?.() === 0;
const table = uniqueName('signed_stdio');
const ledgerSchema = uniqueName('gate_signed_stdio');

let knex: Knex;
let dir: string;
let configPath: string;
let danaKey: string;
let server: StdioSession | null = null;

/** The agent's request: a column, in the signed production environment. */
function addColumn(column: string): Record<string, unknown> {
  return {
    environment: 'production',
    database: 'main_db',
    sql: `ALTER TABLE ${table} ADD COLUMN ${column} text`,
    title: `Add ${column}`,
    reason: 'Signed approval, end to end, with the gate as the agent user or as its own.',
    priority: 'high',
  };
}

async function writeConfig(allowedSigners: string): Promise<string> {
  const file = path.join(dir, `approval-gate-${path.basename(allowedSigners)}.yaml`);
  await writeFile(
    file,
    stringify({
      approvals_dir: 'approvals',
      state_dir: 'state',
      ledger_schema: ledgerSchema,
      databases: { main_db: { client: 'pg', connection_env: 'TEST_MAIN_DB_URL' } },
      environments: { production: { databases: ['main_db'], allowed_signers: allowedSigners } },
      wait: { max_wait_seconds: 2, progress_interval_seconds: 1 },
      gate: { recheck_interval_ms: 500 },
    }),
    { mode: 0o644 },
  );
  return file;
}

beforeAll(async () => {
  if (!isRoot) return;
  knex = await connectTestDatabase();
  await knex.schema.createTable(table, (t) => t.increments('id'));
  dir = await mkdtemp(path.join(tmpdir(), 'approval-gate-signed-'));
  await chmod(dir, 0o755);
  for (const sub of ['approvals', 'state']) {
    await mkdir(path.join(dir, sub), { mode: 0o755 });
    await chown(path.join(dir, sub), NOBODY.uid, NOBODY.gid);
  }
  // The reviewer's key lives where the agent's user cannot read it.
  const keys = path.join(dir, 'reviewer');
  await mkdir(keys, { mode: 0o700 });
  danaKey = path.join(keys, 'dana');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'dana', '-f', danaKey]);
  const allowed = path.join(dir, 'allowed_signers');
  await writeFile(allowed, `dana@example.com ${(await readFile(`${danaKey}.pub`, 'utf8')).trim()}\n`, {
    mode: 0o644,
  });
  configPath = await writeConfig('allowed_signers');
});

afterAll(async () => {
  if (!isRoot) return;
  await server?.close();
  await knex.schema.dropTableIfExists(table);
  await knex.raw('drop schema if exists ?? cascade', [ledgerSchema]);
  await knex.destroy();
});

describe('security: signed decisions with the gate running as the agent’s own user over stdio', () => {
  if (!isRoot && process.env.CI === 'true') {
    it('runs as root in CI, to make files owned by another user', () => {
      expect.fail('these tests chown files and start the server as nobody: run them as root');
    });
  }

  it.skipIf(!isRoot)(
    'a reviewer signs with the CLI and the migration runs on the real Postgres',
    async () => {
      server = await startStdioServer(configPath, TEST_DATABASE_ENV, { asUser: NOBODY });
      const { outcome } = await server.call('execute_migration', addColumn('loyalty_tier'));
      expect(outcome.status, outcome.message).toBe('PENDING');
      const id = outcome.approval_id ?? '';
      // The agent's own attempt: a name, no signature. Nothing runs.
      const client = await openClientPipeline(loadConfig(configPath), silentLogger);
      try {
        const output = { json: false, color: false, write: () => undefined };
        expect(
          await decideCommand(
            client,
            id,
            { status: 'APPROVED', as: 'dana@example.com', key: path.join(dir, 'nonexistent') },
            { waitSeconds: 0, style: 'rename' },
            output,
          ).catch((error: { code?: string }) => error.code),
        ).toBe('SIGNING_FAILED');
        expect(
          await decideCommand(
            client,
            id,
            { status: 'APPROVED', as: 'dana@example.com', key: danaKey },
            { waitSeconds: 20, style: 'rename' },
            output,
          ),
        ).toBe(0);
      } finally {
        await client.close();
      }
      for (let i = 0; i < 20; i += 1) {
        const { outcome: now } = await server.call('await_approval', { id });
        if (now.final) {
          expect(now.execution, now.message).toBe('succeeded');
          break;
        }
      }
      expect(await columnsOf(knex, table)).toContain('loyalty_tier');
      await server.close();
      server = null;
    },
  );

  it.skipIf(!isRoot)(
    'the gate as its own user over HTTP: the agent holds only the token, and a signed approval runs',
    async () => {
      const token = 'agent-token-0123456789abcdef';
      const { command, args, cwd } = stdioServerCommand(configPath);
      const setpriv = [`--reuid=${NOBODY.uid}`, `--regid=${NOBODY.gid}`, '--clear-groups', '--'];
      const child = spawn('setpriv', [...setpriv, command, ...args, '--http', '--port', '0'], {
        cwd,
        env: { ...process.env, TEST_MAIN_DB_URL: TEST_DATABASE_URL, APPROVAL_GATE_TOKEN: token },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      try {
        const url = await new Promise<string>((resolve, reject) => {
          let stderr = '';
          child.stderr.on('data', (chunk: Buffer) => {
            stderr += chunk.toString('utf8');
            const found = /"url":"(http:[^"]+)"/.exec(stderr)?.[1];
            if (found) resolve(found);
          });
          child.on('exit', (code) => reject(new Error(`the HTTP server exited (${code}): ${stderr}`)));
        });
        const client = new Client({ name: 'agent-over-http', version: '0.0.0' });
        await client.connect(
          new StreamableHTTPClientTransport(new URL(url), {
            requestInit: { headers: { Authorization: `Bearer ${token}` } },
          }),
        );
        const call = async (name: string, toolArgs: Record<string, unknown>) =>
          ((await client.callTool({ name, arguments: toolArgs })) as CallToolResult)
            .structuredContent as ToolOutcome;
        const requested = await call('execute_migration', addColumn('over_http'));
        expect(requested.status, requested.message).toBe('PENDING');
        const id = requested.approval_id ?? '';
        const reviewer = await openClientPipeline(loadConfig(configPath), silentLogger);
        try {
          expect(
            await decideCommand(
              reviewer,
              id,
              { status: 'APPROVED', as: 'dana@example.com', key: danaKey },
              { waitSeconds: 20, style: 'rename' },
              { json: false, color: false, write: () => undefined },
            ),
          ).toBe(0);
        } finally {
          await reviewer.close();
        }
        let final: ToolOutcome | null = null;
        for (let i = 0; i < 20 && final?.final !== true; i += 1) final = await call('await_approval', { id });
        expect(final?.execution, final?.message).toBe('succeeded');
        expect(await columnsOf(knex, table)).toContain('over_http');
        await client.close();
      } finally {
        child.kill('SIGTERM');
      }
    },
  );

  it.skipIf(!isRoot)('does not start when the agent’s user owns the allowed_signers file', async () => {
    const owned = path.join(dir, 'owned_signers');
    await writeFile(owned, await readFile(path.join(dir, 'allowed_signers'), 'utf8'), { mode: 0o644 });
    await chown(owned, NOBODY.uid, NOBODY.gid);
    const config = await writeConfig('owned_signers');
    const { command, args, cwd } = stdioServerCommand(config);
    const run = spawnSync(
      'setpriv',
      [`--reuid=${NOBODY.uid}`, `--regid=${NOBODY.gid}`, '--clear-groups', '--', command, ...args],
      {
        cwd,
        input: '',
        encoding: 'utf8',
        timeout: 30_000,
        env: { ...process.env, TEST_MAIN_DB_URL: TEST_DATABASE_URL },
      },
    );
    expect(run.status).not.toBe(0);
    expect(run.stderr).toContain('TRUST_ANCHOR_WRITABLE');
    expect(run.stderr).toContain(owned);
  });
});
