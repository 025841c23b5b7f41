import type { Knex } from 'knex';
import {
  CallToolResultSchema,
  CreateTaskResultSchema,
  ElicitRequestSchema,
  TaskStatusNotificationSchema,
  type Task,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { decideInFile } from '../../src/approvals/human-edit.js';
import { GateError } from '../../src/errors.js';
import { Pipeline } from '../../src/pipeline.js';
import { ApprovalTasks } from '../../src/server/tasks.js';
import { silentLogger } from '../helpers/log.js';
import type { ToolOutcome } from '../../src/server/outcome.js';
import { startStdioServer, type StdioSession } from '../helpers/mcp.js';
import { connectTestDatabase, uniqueName, TEST_DATABASE_ENV } from '../helpers/postgres.js';
import { createWorkspace, type Workspace } from '../helpers/workspace.js';

/*
 * MCP Tasks through the real stdio transport: a client that asks for a task follows the approval from
 * input_required to completed, across a restart of the server (a new process, a new session), and
 * cancels one; a client that asks for none keeps the bounded wait.
 */

const ledgerSchema = uniqueName('gate_tasks');
const schema = uniqueName('tasks');
const env = TEST_DATABASE_ENV;
let knex: Knex;
let workspace: Workspace;
const sessions: StdioSession[] = [];

beforeAll(async () => {
  knex = await connectTestDatabase();
  await knex.raw('create schema ??', [schema]);
  workspace = await createWorkspace({
    ledger_schema: ledgerSchema,
    local_user: 'Dana Reyes',
    environments: {
      staging: { databases: ['staging_db'] },
      dev: { databases: ['dev_db'], approve_in_client: true },
    },
    wait: { max_wait_seconds: 1, progress_interval_seconds: 0.5 },
  });
});

afterAll(async () => {
  for (const session of sessions) await session.close().catch(() => undefined);
  await knex.raw('drop schema if exists ?? cascade', [schema]);
  await knex.raw('drop schema if exists ?? cascade', [ledgerSchema]);
  await knex.raw('drop schema if exists ?? cascade', [`${ledgerSchema}_backup`]);
  await knex.destroy();
});

async function connect(capabilities = {}): Promise<StdioSession> {
  const session = await startStdioServer(workspace.configPath, env, { capabilities });
  sessions.push(session);
  return session;
}

function migration(table: string, environment = 'staging') {
  return {
    environment,
    database: environment === 'dev' ? 'dev_db' : 'staging_db',
    sql: `CREATE TABLE ${schema}.${table} (id int)`,
    title: `Create ${table}`,
    reason: 'Checking tasks.',
  };
}

async function startTask(session: StdioSession, name: string, args: Record<string, unknown>): Promise<Task> {
  const created = await session.client.request(
    { method: 'tools/call', params: { name, arguments: args, task: {} } },
    CreateTaskResultSchema,
  );
  return created.task;
}

async function taskStatus(session: StdioSession, taskId: string): Promise<Task['status']> {
  return (await session.client.experimental.tasks.getTask(taskId)).status;
}

async function tableExists(table: string): Promise<boolean> {
  const found = await knex('information_schema.tables').where({ table_schema: schema, table_name: table });
  return found.length === 1;
}

describe('MCP tasks', () => {
  it('declares tasks for tools/call, with list and cancel, and marks the two waiting tools optional', async () => {
    const session = await connect();
    expect(session.client.getServerCapabilities()?.tasks).toEqual({
      list: {},
      cancel: {},
      requests: { tools: { call: {} } },
    });
    const { tools } = await session.client.listTools();
    const support = Object.fromEntries(tools.map((tool) => [tool.name, tool.execution?.taskSupport ?? null]));
    expect(support).toMatchObject({ execute_migration: 'optional', await_approval: 'optional' });
    expect(support.get_approval_status ?? 'forbidden').toBe('forbidden');
  });

  it('follows an approval from input_required to completed across a server restart', async () => {
    const first = await connect();
    const task = await startTask(first, 'execute_migration', migration('across_restart'));
    expect(task).toMatchObject({ status: 'input_required', ttl: null });
    expect(task.taskId).toMatch(/^APR-\d{8}-\d{3}$/);
    expect(task.statusMessage).toContain('Waiting for a human');
    await first.close();

    const second = await connect();
    expect(await taskStatus(second, task.taskId)).toBe('input_required');
    const told: Task['status'][] = [];
    second.client.setNotificationHandler(
      TaskStatusNotificationSchema,
      (n) => void told.push(n.params.status),
    );
    const status = await second.call('get_approval_status', { id: task.taskId });
    await decideInFile(status.outcome.file ?? '', { status: 'APPROVED', decidedBy: 'Lee Park' });
    await vi.waitFor(async () => expect(await taskStatus(second, task.taskId)).toBe('completed'), {
      timeout: 20_000,
      interval: 100,
    });
    const result = await second.client.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(result.structuredContent as ToolOutcome).toMatchObject({
      approval_id: task.taskId,
      status: 'APPROVED',
      execution: 'succeeded',
      decided_by: 'Lee Park',
    });
    expect(await tableExists('across_restart')).toBe(true);
    // A session that did not create the task is not told of it; it polls.
    expect(told).toEqual([]);
  });

  it('tells the session that created a task of its changes', async () => {
    const session = await connect();
    const told: Task['status'][] = [];
    session.client.setNotificationHandler(
      TaskStatusNotificationSchema,
      (n) => void told.push(n.params.status),
    );
    const task = await startTask(session, 'execute_migration', migration('told'));
    const { outcome } = await session.call('get_approval_status', { id: task.taskId });
    await decideInFile(outcome.file ?? '', {
      status: 'REJECTED',
      decidedBy: 'Lee Park',
      reason: 'Not this one.',
    });
    await vi.waitFor(() => expect(told).toContain('failed'), { timeout: 20_000 });
    const result = await session.client.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(result).toMatchObject({
      isError: true,
      structuredContent: { status: 'REJECTED', reason: 'Not this one.' },
    });
    expect(await tableExists('told')).toBe(false);
  });

  it('cancels a task before a decision (the request is withdrawn), and not after', async () => {
    const session = await connect();
    const task = await startTask(session, 'execute_migration', migration('cancelled'));
    const cancelled = await session.client.experimental.tasks.cancelTask(task.taskId);
    expect(cancelled.status).toBe('cancelled');
    const { outcome } = await session.call('get_approval_status', { id: task.taskId });
    expect(outcome).toMatchObject({ status: 'CANCELLED', final: true });
    // Decided: too late to cancel.
    const decided = await startTask(session, 'execute_migration', migration('decided_then_cancelled'));
    const status = await session.call('get_approval_status', { id: decided.taskId });
    await decideInFile(status.outcome.file ?? '', {
      status: 'REJECTED',
      decidedBy: 'Lee Park',
      reason: 'No.',
    });
    await vi.waitFor(async () => expect(await taskStatus(session, decided.taskId)).toBe('failed'), {
      timeout: 20_000,
    });
    await expect(session.client.experimental.tasks.cancelTask(decided.taskId)).rejects.toThrow(/terminal/);
    expect(await tableExists('cancelled')).toBe(false);
  });

  it('makes await_approval a task of the same approval, and refuses an unknown id as a failed task', async () => {
    const session = await connect();
    const pending = await session.call('execute_migration', migration('awaited'));
    const id = pending.outcome.approval_id ?? '';
    const task = await startTask(session, 'await_approval', { id });
    expect(task).toMatchObject({ taskId: id, status: 'input_required' });
    const listed = await session.client.experimental.tasks.listTasks();
    expect(listed.tasks.map((t) => t.taskId)).toContain(id);
    const unknown = await startTask(session, 'await_approval', { id: 'APR-20000101-999' });
    expect(unknown.status).toBe('failed');
    const refusal = await session.client.experimental.tasks.getTaskResult(
      unknown.taskId,
      CallToolResultSchema,
    );
    expect(refusal).toMatchObject({ isError: true, structuredContent: { status: 'REFUSED' } });
    await session.call('cancel_approval', { id, reason: 'test over' });
  });

  it('keeps the bounded wait for a call that asks for no task', async () => {
    const session = await connect();
    const { outcome, result } = await session.call('execute_migration', migration('no_task'), 15_000);
    expect(result).not.toHaveProperty('task');
    expect(outcome).toMatchObject({ status: 'PENDING', final: false });
    await session.call('cancel_approval', { id: outcome.approval_id, reason: 'test over' });
  });

  it('asks within the task where the environment allows it: the question comes with tasks/result', async () => {
    const session = await connect({ elicitation: { form: {} } });
    const questions: string[] = [];
    session.client.setRequestHandler(ElicitRequestSchema, (request) => {
      questions.push(request.params.message);
      return Promise.resolve({ action: 'accept', content: { decision: 'approve' } });
    });
    const task = await startTask(session, 'execute_migration', migration('asked_in_task', 'dev'));
    expect(task.status).toBe('input_required');
    // input_required: the client fetches what the server needs with tasks/result, which ends with the result.
    const result = await session.client.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema, {
      timeout: 20_000,
    });
    expect(questions).toHaveLength(1);
    expect(result.structuredContent as ToolOutcome).toMatchObject({
      status: 'APPROVED',
      execution: 'succeeded',
      decided_by: 'Dana Reyes',
    });
    expect(await tableExists('asked_in_task')).toBe(true);
  });

  it('drops a question withdrawn before the client fetched it: no form for a request decided meanwhile', async () => {
    const session = await connect({ elicitation: { form: {} } });
    const questions: string[] = [];
    session.client.setRequestHandler(ElicitRequestSchema, (request) => {
      questions.push(request.params.message);
      return Promise.resolve({ action: 'decline' });
    });
    const task = await startTask(session, 'execute_migration', migration('decided_first', 'dev'));
    const { outcome } = await session.call('get_approval_status', { id: task.taskId });
    await decideInFile(outcome.file ?? '', {
      status: 'REJECTED',
      decidedBy: 'Lee Park',
      reason: 'In the file.',
    });
    await vi.waitFor(async () => expect(await taskStatus(session, task.taskId)).toBe('failed'), {
      timeout: 20_000,
    });
    const result = await session.client.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(result.structuredContent as ToolOutcome).toMatchObject({
      status: 'REJECTED',
      decided_by: 'Lee Park',
    });
    expect(questions).toEqual([]);
  });
});

describe('tasks/list', () => {
  it('leaves out a request that became unreadable after it was listed, and lists the rest', async () => {
    const pipeline = await Pipeline.open(workspace.config, { log: silentLogger, env: TEST_DATABASE_ENV });
    const ids: string[] = [];
    try {
      for (const title of ['Listed and readable', 'Listed, then unreadable']) {
        const { request } = await pipeline.submit({ ...migration(uniqueName('listed')), title });
        ids.push(request.id);
      }
      const [readable, unreadable] = ids;
      const status = pipeline.status.bind(pipeline);
      vi.spyOn(pipeline, 'status').mockImplementation((id) =>
        id === unreadable
          ? Promise.reject(new GateError('RECORD_TAMPERED', `${id} was rewritten`))
          : status(id),
      );
      const tasks = new ApprovalTasks({
        config: workspace.config,
        pipeline: () => Promise.resolve(pipeline),
      });
      const listed: string[] = [];
      let cursor: string | undefined;
      do {
        const page = await tasks.listTasks(cursor);
        listed.push(...page.tasks.map((task) => task.taskId));
        cursor = page.nextCursor;
      } while (cursor !== undefined);
      expect(listed).toContain(readable);
      expect(listed).not.toContain(unreadable);
      tasks.close();
    } finally {
      vi.restoreAllMocks();
      for (const id of ids) await pipeline.cancel(id, { by: 'agent', reason: 'test over' });
      await pipeline.close();
    }
  });
});
