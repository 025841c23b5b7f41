import { request } from 'node:http';
import type { Knex } from 'knex';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decideInFile } from '../../src/approvals/human-edit.js';
import { silentLogger } from '../helpers/log.js';
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

  it('refuses a body over 1 MiB with 413 and one that is not JSON with 400, and serves on', async () => {
    const post = (body: string) =>
      fetch(handle.url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          accept: 'application/json, text/event-stream',
          authorization: `Bearer ${TOKEN}`,
        },
        body,
      });
    const huge = await post(`{"padding": "${'x'.repeat(2 * 1024 * 1024)}"}`);
    expect(huge.status).toBe(413);
    expect(await huge.text()).toContain('larger than 1 MiB');
    expect((await post('{"jsonrpc": "2.0", "id": 1, "method"')).status).toBe(400);
    const client = await connect();
    expect((await client.listTools()).tools.length).toBeGreaterThan(0);
    await client.close();
  });

  it('never starts without a bearer token of at least 16 characters', async () => {
    const saved = process.env.APPROVAL_GATE_TOKEN;
    process.env.APPROVAL_GATE_TOKEN = 'short';
    try {
      await expect(serveHttp(workspace.config, silentLogger, { port: 0 })).rejects.toMatchObject({
        code: 'HTTP_TOKEN_MISSING',
      });
    } finally {
      process.env.APPROVAL_GATE_TOKEN = saved;
    }
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

describe('security: HTTP sessions are bounded', () => {
  const capSchema = uniqueName('gate_http_cap');
  const busySchema = uniqueName('gate_http_busy');
  let capped: HttpServerHandle;
  let busy: HttpServerHandle;
  const streams: AbortController[] = [];

  beforeAll(async () => {
    const capWorkspace = await createWorkspace({
      ledger_schema: capSchema,
      http: { max_sessions: 20, session_idle_seconds: 1 },
    });
    capped = await serveHttp(capWorkspace.config, silentLogger, { port: 0 });
    const busyWorkspace = await createWorkspace({
      ledger_schema: busySchema,
      http: { max_sessions: 2, session_idle_seconds: 60 },
    });
    busy = await serveHttp(busyWorkspace.config, silentLogger, { port: 0 });
  });

  afterAll(async () => {
    for (const stream of streams) stream.abort();
    await capped?.close();
    await busy?.close();
    await knex.raw('drop schema if exists ?? cascade', [capSchema]);
    await knex.raw('drop schema if exists ?? cascade', [busySchema]);
  });

  const mcpHeaders = {
    authorization: `Bearer ${TOKEN}`,
    'content-type': 'application/json',
    accept: 'application/json, text/event-stream',
  };

  /** A raw initialize that is never followed up: an abandoned session. */
  async function openSession(server: HttpServerHandle): Promise<{ status: number; session: string | null }> {
    const response = await fetch(server.url, { method: 'POST', headers: mcpHeaders, body: initialize });
    await response.text();
    return { status: response.status, session: response.headers.get('mcp-session-id') };
  }

  async function openSessionId(server: HttpServerHandle): Promise<string> {
    const { status, session } = await openSession(server);
    expect(status).toBe(200);
    expect(session).toBeTruthy();
    return session ?? '';
  }

  async function listToolsStatus(server: HttpServerHandle, session: string): Promise<number> {
    const response = await fetch(server.url, {
      method: 'POST',
      headers: { ...mcpHeaders, 'mcp-session-id': session, 'mcp-protocol-version': '2025-06-18' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/list' }),
    });
    await response.text();
    return response.status;
  }

  /** A GET SSE stream left open: the session has a request in progress until it is aborted. */
  async function openStream(server: HttpServerHandle, session: string): Promise<AbortController> {
    const controller = new AbortController();
    streams.push(controller);
    const response = await fetch(server.url, {
      method: 'GET',
      headers: {
        authorization: `Bearer ${TOKEN}`,
        accept: 'text/event-stream',
        'mcp-session-id': session,
        'mcp-protocol-version': '2025-06-18',
      },
      signal: controller.signal,
    });
    expect(response.status).toBe(200);
    return controller;
  }

  async function openSessions(server: HttpServerHandle, count: number, batch: number): Promise<string[]> {
    const ids: string[] = [];
    for (let opened = 0; opened < count; opened += batch) {
      const size = Math.min(batch, count - opened);
      ids.push(...(await Promise.all(Array.from({ length: size }, () => openSessionId(server)))));
      expect(server.sessionCount()).toBeLessThanOrEqual(20);
    }
    return ids;
  }

  const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

  it('1,000 abandoned sessions never hold more than max_sessions open', async () => {
    let most = 0;
    const sampler = setInterval(() => (most = Math.max(most, capped.sessionCount())), 2);
    try {
      // Parallel bursts of 15 against a cap of 20: never a full house of busy sessions, so no 503.
      const ids = await openSessions(capped, 1000, 15);
      expect(ids).toHaveLength(1000);
      expect(new Set(ids).size).toBe(1000);
      expect(capped.sessionCount()).toBeLessThanOrEqual(20);
      expect(await listToolsStatus(capped, ids[0] ?? '')).toBe(404);
      expect(await listToolsStatus(capped, ids[999] ?? '')).toBe(200);
    } finally {
      clearInterval(sampler);
    }
    expect(most).toBeGreaterThan(0);
    expect(most).toBeLessThanOrEqual(20);
  });

  it('a session idle longer than session_idle_seconds is closed and answers 404', async () => {
    const session = await openSessionId(capped);
    expect(await listToolsStatus(capped, session)).toBe(200);
    await sleep(2500);
    expect(await listToolsStatus(capped, session)).toBe(404);
  });

  it('a session with a request in progress is neither evicted nor expired', async () => {
    const session = await openSessionId(capped);
    const stream = await openStream(capped, session);
    await openSessions(capped, 40, 10);
    expect(await listToolsStatus(capped, session)).toBe(200);
    await sleep(2500);
    expect(await listToolsStatus(capped, session)).toBe(200);
    stream.abort();
    await sleep(2500);
    expect(await listToolsStatus(capped, session)).toBe(404);
  });

  it('when every session is busy a new initialize gets 503 with Retry-After', async () => {
    const first = await openSessionId(busy);
    const second = await openSessionId(busy);
    const firstStream = await openStream(busy, first);
    await openStream(busy, second);
    const response = await fetch(busy.url, { method: 'POST', headers: mcpHeaders, body: initialize });
    const body = (await response.json()) as { error?: { message?: string } };
    expect(response.status).toBe(503);
    expect(response.headers.get('retry-after')).toBe('5');
    expect(body.error?.message).toBe('Too many MCP sessions are busy (max_sessions 2); retry shortly.');
    expect(busy.sessionCount()).toBe(2);
    // Once a stream ends, its session is idle and makes room.
    firstStream.abort();
    await sleep(100);
    expect(await openSessionId(busy)).toBeTruthy();
    expect(await listToolsStatus(busy, first)).toBe(404);
    expect(await listToolsStatus(busy, second)).toBe(200);
  });
});
