import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { webhookPayload } from '../../src/approvals/notify.js';
import { silentLogger } from '../helpers/log.js';
import { Pipeline } from '../../src/pipeline.js';
import { connectTestDatabase, uniqueName, TEST_DATABASE_ENV } from '../helpers/postgres.js';
import { sampleRequest } from '../helpers/requests.js';
import { createWorkspace } from '../helpers/workspace.js';

let knex: Knex;
const schemas: string[] = [];

beforeAll(async () => {
  knex = await connectTestDatabase();
});

afterAll(async () => {
  for (const schema of schemas) await knex.raw('drop schema if exists ?? cascade', [schema]);
  await knex.destroy();
});

async function listen(
  handler: (req: IncomingMessage, body: string) => void,
  respond: boolean,
): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk: Buffer) => (body += chunk.toString()));
    req.on('end', () => {
      handler(req, body);
      if (respond) res.end('ok');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook/SECRET-TOKEN` };
}

async function pipelineWithWebhook(url: string, timeoutMs = 5000): Promise<Pipeline> {
  const schema = uniqueName('gate_notify');
  schemas.push(schema);
  const workspace = await createWorkspace({
    ledger_schema: schema,
    notify: { webhook: { url, format: 'json', retries: 1, timeout_ms: timeoutMs }, terminal_bell: false },
  });
  return Pipeline.open(workspace.config, { log: silentLogger, env: TEST_DATABASE_ENV });
}

const request = {
  environment: 'production',
  database: 'main_db',
  sql: 'SELECT 1',
  title: 'Notify me',
  reason: 'A human should hear about this request.',
  priority: 'critical' as const,
};

describe('notification of a new pending request', () => {
  it('POSTs a JSON payload to the webhook, with no connection details', async () => {
    const received: unknown[] = [];
    const { server, url } = await listen((_req, body) => received.push(JSON.parse(body)), true);
    const pipeline = await pipelineWithWebhook(url);
    try {
      const { request: stored } = await pipeline.submit(request);
      await pipeline.notificationsSettled();
      expect(received).toEqual([
        expect.objectContaining({
          event: 'approval.requested',
          approval_id: stored.id,
          priority: 'critical',
          environment: 'production',
        }),
      ]);
      expect(JSON.stringify(received)).not.toContain('postgres://');
    } finally {
      await pipeline.close();
      server.close();
    }
  });

  it('a receiver that never answers does not delay the request; the failure is retried and given up', async () => {
    let connections = 0;
    const { server, url } = await listen(() => (connections += 1), false);
    const pipeline = await pipelineWithWebhook(url, 300);
    try {
      await pipeline.submit(request);
      // submit() has returned while the hanging webhook is still being tried.
      let delivered = false;
      const settled = pipeline.notificationsSettled().then(() => (delivered = true));
      await new Promise((resolve) => setImmediate(resolve));
      expect(delivered).toBe(false);
      await settled;
      expect(connections).toBe(2);
    } finally {
      await pipeline.close();
      server.closeAllConnections();
      server.close();
    }
  });

  it('offers a Slack-compatible payload', () => {
    const payload = webhookPayload(
      { request: sampleRequest(), file: '/approvals/APR-20260213-003.md', findings: [] },
      'slack',
    ) as { text: string };
    expect(payload.text).toContain('APR-20260213-003');
    expect(payload.text).toContain('production/main_db');
  });
});
