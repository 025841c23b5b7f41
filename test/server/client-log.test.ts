import { LoggingMessageNotificationSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { readFile } from 'node:fs/promises';
import { updateFrontMatter } from '../../src/approvals/frontmatter.js';
import { decideInFile, saveAs } from '../../src/approvals/human-edit.js';
import { startStdioServer, type StdioSession } from '../helpers/mcp.js';
import { connectTestDatabase, uniqueName, TEST_DATABASE_ENV } from '../helpers/postgres.js';
import { createWorkspace } from '../helpers/workspace.js';

/* MCP logging through the real stdio transport: the gate's events reach clients that asked. */

const ledgerSchema = uniqueName('gate_client_log');
let server: StdioSession;
let quiet: StdioSession;

interface Message {
  readonly level: string;
  readonly event: string;
  readonly message: string;
}

function collect(session: StdioSession): Message[] {
  const messages: Message[] = [];
  session.client.setNotificationHandler(LoggingMessageNotificationSchema, (notification) => {
    const data = notification.params.data as { event: string; message: string };
    messages.push({ level: notification.params.level, event: data.event, message: data.message });
  });
  return messages;
}

beforeAll(async () => {
  // Two instances on one workspace: whichever records a decision, both tell their clients.
  const workspace = await createWorkspace({
    ledger_schema: ledgerSchema,
    wait: { max_wait_seconds: 1, progress_interval_seconds: 0.5 },
  });
  server = await startStdioServer(workspace.configPath, TEST_DATABASE_ENV);
  quiet = await startStdioServer(workspace.configPath, TEST_DATABASE_ENV);
});

afterAll(async () => {
  await server.close();
  await quiet.close();
  const knex = await connectTestDatabase();
  await knex.raw('drop schema if exists ?? cascade', [ledgerSchema]);
  await knex.raw('drop schema if exists ?? cascade', [`${ledgerSchema}_backup`]);
  await knex.destroy();
});

describe('logging to the client', () => {
  it('after logging/setLevel, tells the request, the decision and the outcome; a client that did not ask hears nothing', async () => {
    const messages = collect(server);
    const unasked = collect(quiet);
    await server.client.setLoggingLevel('info');
    const first = await server.call('execute_migration', {
      environment: 'staging',
      database: 'staging_db',
      sql: 'SELECT 1',
      title: 'Logged to the client',
      reason: 'Checking MCP logging.',
    });
    expect(first.outcome.status).toBe('PENDING');
    const id = first.outcome.approval_id ?? '';
    await decideInFile(first.outcome.file ?? '', { status: 'APPROVED', decidedBy: 'Dana Reyes' });
    let done = await server.call('await_approval', { id });
    while (!done.outcome.final) done = await server.call('await_approval', { id });
    expect(done.outcome).toMatchObject({ status: 'APPROVED', execution: 'succeeded' });
    const eventsOf = () => messages.filter((m) => m.message.includes(id)).map((m) => `${m.level} ${m.event}`);
    // Each event is sent as its change is seen; the one for the decision may still be on its way.
    await vi.waitFor(() =>
      expect(eventsOf(), JSON.stringify(messages)).toEqual(
        expect.arrayContaining([
          'info request_written',
          'notice decision_recorded',
          'notice execution_finished',
        ]),
      ),
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    const events = eventsOf();
    expect(messages.find((m) => m.event === 'decision_recorded')?.message).toContain(
      'APPROVED by Dana Reyes',
    );
    // Every event once.
    expect(new Set(events).size, events.join(', ')).toBe(events.length);
    expect(unasked).toEqual([]);
  });

  it('holds back events below the level the client set', async () => {
    const messages = collect(server);
    await server.client.setLoggingLevel('warning');
    const first = await server.call('execute_migration', {
      environment: 'staging',
      database: 'staging_db',
      sql: 'SELECT 2',
      title: 'Only warnings, please',
      reason: 'Checking the level.',
    });
    const id = first.outcome.approval_id ?? '';
    const file = first.outcome.file ?? '';
    await saveAs(
      file,
      updateFrontMatter(await readFile(file, 'utf8'), { status: 'APROVED', decided_by: 'Dana Reyes' }),
      'rename',
    );
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const mine = messages.filter((m) => m.message.includes(id));
    expect(mine.map((m) => `${m.level} ${m.event}`)).toEqual(['warning decision_refused']);
    expect(mine[0]?.message).toContain('STATUS_INVALID');
    await server.call('cancel_approval', { id, reason: 'done checking' });
  });
});
