import { request } from 'node:http';
import type { Knex } from 'knex';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decideInFile } from '../../src/approvals/human-edit.js';
import { silentLogger } from '../../src/log.js';
import { serveHttp, type HttpServerHandle } from '../../src/server/http.js';
import type { ToolOutcome } from '../../src/server/outcome.js';
import { nextApprovalFile } from '../helpers/files.js';
import { columnsOf, connectTestDatabase, TEST_DATABASE_URL, uniqueName } from '../helpers/postgres.js';
import { createWorkspace, type Workspace } from '../helpers/workspace.js';

/* The Streamable HTTP transport, through the SDK's HTTP client over a real socket. */

const TOKEN = 'test-token-0123456789abcdef';
let knex: Knex;
let workspace: Workspace;
let handle: HttpServerHandle;
const table = uniqueName('http');
const ledgerSchema = uniqueName('gate_http');

beforeAll(async () => {
  knex = await connectTestDatabase();
  await knex.schema.createTable(table, (t) => t.increments('id'));
  workspace = await createWorkspace({ ledger_schema: ledgerSchema });
  process.env.APPROVAL_GATE_TOKEN = TOKEN;
  process.env.TEST_MAIN_DB_URL = TEST_DATABASE_URL;
  handle = await serveHttp(workspace.config, silentLogger, { port: 0 });
});

afterAll(async () => {
  await handle?.close();
  await knex.schema.dropTableIfExists(table);
  await knex.raw('drop schema if exists ?? cascade', [ledgerSchema]);
  await knex.destroy();
});

async function connect(token = TOKEN): Promise<Client> {
  const client = new Client({ name: 'http-test', version: '0.0.0' });
  await client.connect(
    new StreamableHTTPClientTransport(new URL(handle.url), {
      requestInit: { headers: { Authorization: `Bearer ${token}` } },
    }),
  );
  return client;
}

/** node:http, because fetch will not send a forged Host or Origin. */
function rawPost(headers: Record<string, string>): Promise<number | undefined> {
  const url = new URL(handle.url);
  return new Promise((resolve, reject) => {
    const req = request(
      { host: url.hostname, port: url.port, path: url.pathname, method: 'POST', headers },
      (res) => {
        res.resume();
        resolve(res.statusCode);
      },
    );
    req.on('error', reject);
    req.end(initialize);
  });
}

const initialize = JSON.stringify({
  jsonrpc: '2.0',
  id: 1,
  method: 'initialize',
  params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '0' } },
});

describe('security: Streamable HTTP', () => {
  it('refuses a request without the bearer token with 401', async () => {
    const response = await fetch(handle.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body: initialize,
    });
    expect(response.status).toBe(401);
    expect(response.headers.get('www-authenticate')).toBe('Bearer');
    await expect(connect('wrong-token-0123456789abcdef')).rejects.toThrow();
  });

  it('refuses a foreign Origin (DNS rebinding) and a foreign Host with 403', async () => {
    const headers = {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      authorization: `Bearer ${TOKEN}`,
    };
    const port = new URL(handle.url).port;
    expect(await rawPost({ ...headers, host: `127.0.0.1:${port}`, origin: 'http://evil.example' })).toBe(403);
    expect(await rawPost({ ...headers, host: `evil.example:${port}` })).toBe(403);
    expect(await rawPost({ ...headers, host: `127.0.0.1:${port}` })).toBe(200);
  });
});

describe('sessions over HTTP', () => {
  it('lists the same tools as stdio', async () => {
    const client = await connect();
    const { tools } = await client.listTools();
    expect(tools.map((t) => t.name).sort()).toEqual([
      'await_approval',
      'cancel_approval',
      'execute_migration',
      'get_approval_status',
      'list_approvals',
      'request_rollback',
    ]);
    await client.close();
  });

  it('two concurrent sessions each get their own result', async () => {
    const [a, b] = await Promise.all([connect(), connect()]);
    const seen = new Set<string>();
    const call = (client: Client, column: string) =>
      client.callTool({
        name: 'execute_migration',
        arguments: {
          environment: 'production',
          database: 'main_db',
          sql: `ALTER TABLE ${table} ADD COLUMN ${column} int`,
          title: `Add ${column}`,
          reason: 'Concurrent HTTP sessions.',
        },
      }) as Promise<CallToolResult>;
    const callA = call(a, 'from_a');
    const callB = call(b, 'from_b');
    const first = await nextApprovalFile(workspace.config.approvalsDir, seen);
    const second = await nextApprovalFile(workspace.config.approvalsDir, seen);
    await Promise.all([
      decideInFile(first, { status: 'APPROVED', decidedBy: 'Dana Reyes' }),
      decideInFile(second, { status: 'REJECTED', decidedBy: 'Dana Reyes', reason: 'Only one of the two' }),
    ]);
    const [ra, rb] = (await Promise.all([callA, callB])).map((r) => r.structuredContent as ToolOutcome);
    expect(ra?.approval_id).not.toBe(rb?.approval_id);
    const statuses = [ra?.status, rb?.status].sort();
    expect(statuses).toEqual(['APPROVED', 'REJECTED']);
    const columns = await columnsOf(knex, table);
    expect(columns.filter((c) => c.startsWith('from_'))).toHaveLength(1);
    await Promise.all([a.close(), b.close()]);
  });
});
