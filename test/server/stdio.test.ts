import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Knex } from 'knex';
import {
  ResourceListChangedNotificationSchema,
  ResourceUpdatedNotificationSchema,
  type CallToolResult,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decideInFile, saveAs, type SaveStyle } from '../../src/approvals/human-edit.js';
import { parseApprovalText, updateFrontMatter } from '../../src/approvals/frontmatter.js';
import { approvalFileNames, nextApprovalFile, waitForFileText } from '../helpers/files.js';
import { startStdioServer, type StdioSession } from '../helpers/mcp.js';
import {
  columnsOf,
  connectTestDatabase,
  TEST_DATABASE_URL,
  uniqueName,
  TEST_DATABASE_ENV,
} from '../helpers/postgres.js';
import { createWorkspace, type Workspace } from '../helpers/workspace.js';

/*
 * The whole flow through the real stdio transport: the server is a spawned process, the client is
 * the SDK's, the database is the real Postgres server, and the human is a file edit.
 */

// A password the trust-auth server ignores: it must never appear in anything the gate produces.
const SECRET = 's3cr3t-pa55word';
const urlWithPassword = TEST_DATABASE_URL.replace('postgres://postgres@', `postgres://postgres:${SECRET}@`);

let knex: Knex;
const table = uniqueName('customers');
const ledgerSchemas = [uniqueName('gate_stdio_test'), uniqueName('gate_stdio_test')];

function migration(sql: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    environment: 'production',
    database: 'main_db',
    sql,
    title: 'Test migration',
    reason: 'Exercising the approval gate end to end.',
    priority: 'high',
    ...extra,
  };
}

beforeAll(async () => {
  knex = await connectTestDatabase();
  await knex.schema.createTable(table, (t) => {
    t.increments('id');
    t.text('name');
  });
  await knex(table).insert([{ name: 'a' }, { name: 'b' }]);
});

afterAll(async () => {
  await knex.schema.dropTableIfExists(table);
  for (const schema of ledgerSchemas) await knex.raw('drop schema if exists ?? cascade', [schema]);
  await knex.destroy();
});

describe('decisions within the wait bound', () => {
  let workspace: Workspace;
  let server: StdioSession;
  const seen = new Set<string>();

  beforeAll(async () => {
    workspace = await createWorkspace({ ledger_schema: ledgerSchemas[0] });
    server = await startStdioServer(workspace.configPath, { TEST_MAIN_DB_URL: urlWithPassword });
  });
  afterAll(async () => {
    await server.close();
  });

  for (const style of ['in-place', 'rename'] as SaveStyle[]) {
    it(`executes on real Postgres after a human approves with a ${style} save`, async () => {
      const column = `tier_${style.replace('-', '_')}`;
      const call = server.call(
        'execute_migration',
        migration(`ALTER TABLE ${table} ADD COLUMN ${column} text DEFAULT 'bronze' NOT NULL`),
      );
      const file = await nextApprovalFile(workspace.config.approvalsDir, seen);
      expect(await columnsOf(knex, table)).not.toContain(column);
      await decideInFile(file, { status: 'APPROVED', decidedBy: 'Dana Reyes' }, style);
      const { outcome, result } = await call;
      expect(result.isError).toBe(false);
      expect(outcome).toMatchObject({
        status: 'APPROVED',
        execution: 'succeeded',
        final: true,
        decided_by: 'Dana Reyes',
      });
      expect(await columnsOf(knex, table)).toContain(column);
      const text = await waitForFileText(file, (t) => t.includes('## Outcome'));
      expect(parseApprovalText(text).data).toMatchObject({ status: 'APPROVED', execution: 'succeeded' });
      expect(text).toContain('**Result:** Succeeded');
    });
  }

  it('a rejection with a reason executes nothing and tells the agent the reason', async () => {
    const call = server.call(
      'execute_migration',
      migration(`ALTER TABLE ${table} ADD COLUMN never_added int`),
    );
    const file = await nextApprovalFile(workspace.config.approvalsDir, seen);
    await decideInFile(file, {
      status: 'REJECTED',
      decidedBy: 'Dana Reyes',
      reason: 'Use a migration file from the repo',
    });
    const { outcome, result } = await call;
    expect(result.isError).toBe(true);
    expect(outcome).toMatchObject({
      status: 'REJECTED',
      execution: 'not_started',
      reason: 'Use a migration file from the repo',
    });
    expect(outcome.message).toContain('Use a migration file from the repo');
    expect(await columnsOf(knex, table)).not.toContain('never_added');
    await waitForFileText(file, (t) => t.includes('Rejected; nothing was executed.'));
  });

  it('a dry run executes, rolls back and leaves the schema unchanged', async () => {
    const call = server.call(
      'execute_migration',
      migration(`ALTER TABLE ${table} ADD COLUMN rehearsal int`, { dry_run: true }),
    );
    await decideInFile(await nextApprovalFile(workspace.config.approvalsDir, seen), {
      status: 'APPROVED',
      decidedBy: 'Dana',
    });
    const { outcome } = await call;
    expect(outcome).toMatchObject({ status: 'APPROVED', execution: 'rolled_back', final: true });
    expect(outcome.result?.dry_run).toBe(true);
    expect(await columnsOf(knex, table)).not.toContain('rehearsal');
  });

  it('failing SQL is rolled back in full and the error says where', async () => {
    const sql = `ALTER TABLE ${table} ADD COLUMN half_done int;\nUPDATE ${table} SET half_done = missing_column;`;
    const call = server.call('execute_migration', migration(sql));
    await decideInFile(await nextApprovalFile(workspace.config.approvalsDir, seen), {
      status: 'APPROVED',
      decidedBy: 'Dana',
    });
    const { outcome, result } = await call;
    expect(result.isError).toBe(true);
    expect(outcome).toMatchObject({ status: 'APPROVED', execution: 'failed', final: true });
    expect(outcome.result?.error).toMatchObject({ sqlstate: '42703', statement: 2, line: 2 });
    expect(outcome.message).toContain('missing_column');
    expect(await columnsOf(knex, table)).not.toContain('half_done');
  });

  const refusals: Array<[string, Record<string, unknown>, string]> = [
    ['an unknown environment', { environment: 'qa' }, 'ENVIRONMENT_UNKNOWN'],
    ['a database outside the environment', { database: 'other_db' }, 'DATABASE_NOT_ALLOWED'],
    ['SQL the parser rejects', { sql: 'ALTER TABLE' }, 'SQL_PARSE_ERROR'],
    ['transaction control in the SQL', { sql: 'BEGIN; SELECT 1; COMMIT' }, 'SQL_TRANSACTION_CONTROL'],
    [
      'a dry run of a statement that cannot be rolled back',
      { sql: `CREATE INDEX CONCURRENTLY i ON ${table}(name)`, dry_run: true },
      'DRY_RUN_IMPOSSIBLE',
    ],
    ['a rollback the parser rejects', { rollback_sql: 'DROP' }, 'ROLLBACK_SQL_INVALID'],
    [
      'a migration_file outside the repository',
      { migration_file: '../../etc/passwd' },
      'MIGRATION_FILE_INVALID',
    ],
  ];
  for (const [what, change, code] of refusals) {
    it(`refuses ${what} (${code}) before writing any file`, async () => {
      const before = await approvalFileNames(workspace.config.approvalsDir);
      const { outcome, result } = await server.call('execute_migration', {
        ...migration(`SELECT 1 FROM ${table}`),
        ...change,
      });
      expect(result.isError).toBe(true);
      expect(outcome).toMatchObject({ status: 'REFUSED', approval_id: null, error: { code } });
      expect(await approvalFileNames(workspace.config.approvalsDir)).toEqual(before);
    });
  }

  it('refuses input that does not match the tool schema with a clear error', async () => {
    const result = await server.client.callTool({
      name: 'execute_migration',
      arguments: { sql: 'SELECT 1' },
    });
    expect(result.isError).toBe(true);
    expect(JSON.stringify(result.content)).toMatch(/environment/);
  });

  it('answers get_approval_status at once, and unknown ids clearly', async () => {
    const [first] = (await approvalFileNames(workspace.config.approvalsDir)).sort();
    const id = (first ?? '').replace(/\.md$/, '');
    const { outcome } = await server.call('get_approval_status', { id });
    expect(outcome).toMatchObject({ approval_id: id, status: 'APPROVED', final: true });
    const missing = await server.call('get_approval_status', { id: 'APR-19990101-001' });
    expect(missing.outcome.error?.code).toBe('APPROVAL_NOT_FOUND');
  });

  it('keeps an audit trail of every transition with who, when and the request hash', async () => {
    const lines = (await readFile(path.join(workspace.config.stateDir, 'audit.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map(
        (line) =>
          JSON.parse(line) as {
            approval_id: string;
            event: string;
            actor: string;
            request_hash: string;
            at: string;
          },
      );
    const [first] = (await approvalFileNames(workspace.config.approvalsDir)).sort();
    const id = (first ?? '').replace(/\.md$/, '');
    expect(lines.filter((l) => l.approval_id === id).map((l) => l.event)).toEqual([
      'requested',
      'approved',
      'execution_started',
      'executed',
    ]);
    expect(lines.find((l) => l.approval_id === id && l.event === 'approved')?.actor).toBe('Dana Reyes');
    expect(lines.map((l) => l.event)).toEqual(expect.arrayContaining(['rejected', 'execution_failed']));
    for (const line of lines) expect(Date.parse(line.at)).not.toBeNaN();
  });

  it('never writes the connection string or its password into files, results or logs', async () => {
    const produced: string[] = [server.stderr()];
    for (const dir of [workspace.config.approvalsDir, workspace.config.stateDir]) {
      for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
        if (entry.isFile()) produced.push(await readFile(path.join(entry.parentPath, entry.name), 'utf8'));
      }
    }
    const status = await server.call('get_approval_status', { id: 'APR-19990101-001' });
    produced.push(JSON.stringify(status.result));
    expect(produced.join('\n')).not.toContain(SECRET);
    expect(server.stderr()).toContain('approval requested');
  });
});

describe('decisions that take longer than the wait bound', () => {
  let workspace: Workspace;
  let server: StdioSession;
  const seen = new Set<string>();

  beforeAll(async () => {
    workspace = await createWorkspace({
      ledger_schema: ledgerSchemas[1],
      wait: { max_wait_seconds: 1.5, progress_interval_seconds: 0.4 },
      expiry_minutes: { critical: 15, high: 60, medium: 240, low: 0.05 },
    });
    server = await startStdioServer(workspace.configPath, TEST_DATABASE_ENV);
  });
  afterAll(async () => {
    await server.close();
  });

  it('returns PENDING with the id at the bound, with progress meanwhile; await_approval returns the executed result', async () => {
    const first = await server.call(
      'execute_migration',
      migration(`ALTER TABLE ${table} ADD COLUMN later int`),
    );
    expect(first.result.isError).toBe(false);
    expect(first.progress).toBeGreaterThanOrEqual(1);
    expect(first.outcome).toMatchObject({ status: 'PENDING', execution: 'not_started', final: false });
    expect(first.outcome.approval_id).toMatch(/^APR-\d{8}-\d{3}$/);
    expect(first.outcome.next_step).toContain('await_approval');
    // The server's own facts come back at once, so the agent can withdraw before a human spends time.
    expect(first.outcome.findings.map((f) => f.code)).toEqual(['LOCK_TIMEOUT_ENFORCED']);
    expect(first.outcome.impact).toEqual([
      expect.objectContaining({ name: table, exists: true, kind: 'table', indexes: 1 }),
    ]);
    expect(first.outcome.expires_at).toMatch(/[+-]\d{2}:\d{2}$/);
    const file = first.outcome.file ?? '';
    seen.add(path.basename(file));
    expect(await columnsOf(knex, table)).not.toContain('later');

    await decideInFile(file, { status: 'APPROVED', decidedBy: 'Dana' });
    const awaited = await server.call('await_approval', { id: first.outcome.approval_id });
    expect(awaited.outcome).toMatchObject({ status: 'APPROVED', execution: 'succeeded', final: true });
    expect(await columnsOf(knex, table)).toContain('later');
  });

  it('does not accept REJECTED without a reason: the file and the agent are told why, nothing runs', async () => {
    const first = await server.call(
      'execute_migration',
      migration(`ALTER TABLE ${table} ADD COLUMN unreasoned int`),
    );
    const file = first.outcome.file ?? '';
    await decideInFile(file, { status: 'REJECTED', decidedBy: 'Dana' });
    await waitForFileText(file, (t) => t.includes('gate_error: "REJECTION_REASON_MISSING'));
    const pending = await server.call('await_approval', {
      id: first.outcome.approval_id,
      max_wait_seconds: 0.5,
    });
    expect(pending.outcome).toMatchObject({
      status: 'PENDING',
      problem: { code: 'REJECTION_REASON_MISSING' },
    });

    // The human adds the reason and saves again: now the rejection stands.
    const text = await readFile(file, 'utf8');
    await saveAs(file, updateFrontMatter(text, { reason: 'Needs a rollback plan' }), 'in-place');
    const rejected = await server.call('await_approval', { id: first.outcome.approval_id });
    expect(rejected.outcome).toMatchObject({ status: 'REJECTED', reason: 'Needs a rollback plan' });
    expect(await columnsOf(knex, table)).not.toContain('unreasoned');
    const final = await waitForFileText(file, (t) => t.includes('## Outcome'));
    expect(parseApprovalText(final).data).not.toHaveProperty('gate_error');
  });

  it('expires at the deadline: EXPIRED in the file, nothing executed, agent told', async () => {
    const first = await server.call(
      'execute_migration',
      migration(`ALTER TABLE ${table} ADD COLUMN too_late int`, { priority: 'low' }),
    );
    expect(first.outcome.status).toBe('PENDING');
    // As agents are told: call again while the result is not final (the wait bound is half the expiry).
    let expired = await server.call('await_approval', { id: first.outcome.approval_id });
    while (!expired.outcome.final)
      expired = await server.call('await_approval', { id: first.outcome.approval_id });
    expect(expired.result.isError).toBe(true);
    expect(expired.outcome).toMatchObject({ status: 'EXPIRED', execution: 'not_started', final: true });
    const text = await waitForFileText(first.outcome.file ?? '', (t) => t.includes('## Outcome'));
    expect(parseApprovalText(text).data.status).toBe('EXPIRED');

    // An approval saved after the deadline changes nothing.
    await decideInFile(first.outcome.file ?? '', { status: 'APPROVED', decidedBy: 'Dana' });
    const after = await server.call('get_approval_status', { id: first.outcome.approval_id });
    expect(after.outcome.status).toBe('EXPIRED');
    expect(await columnsOf(knex, table)).not.toContain('too_late');
  });

  it('survives a reconnect and a server restart: the request lives on disk', async () => {
    const first = await server.call(
      'execute_migration',
      migration(`ALTER TABLE ${table} ADD COLUMN after_restart int`),
    );
    expect(first.outcome.status).toBe('PENDING');
    await server.close();
    // The human decides while no server is running at all.
    await decideInFile(first.outcome.file ?? '', { status: 'APPROVED', decidedBy: 'Dana' });
    server = await startStdioServer(workspace.configPath, TEST_DATABASE_ENV);
    const awaited = await server.call('await_approval', { id: first.outcome.approval_id });
    expect(awaited.outcome).toMatchObject({ status: 'APPROVED', execution: 'succeeded' });
    expect(await columnsOf(knex, table)).toContain('after_restart');
  });

  it('an approval of edited SQL is void: nothing runs, and the agent, the file and the log say why', async () => {
    const first = await server.call(
      'execute_migration',
      migration(`ALTER TABLE ${table} ADD COLUMN harmless int`),
    );
    const file = first.outcome.file ?? '';
    const text = await readFile(file, 'utf8');
    const tampered = text.replace('ADD COLUMN harmless int', 'DROP COLUMN name');
    await saveAs(file, updateFrontMatter(tampered, { status: 'APPROVED', decided_by: 'Dana' }), 'rename');
    const awaited = await server.call('await_approval', { id: first.outcome.approval_id });
    expect(awaited.result.isError).toBe(true);
    expect(awaited.outcome).toMatchObject({ status: 'VOID', execution: 'not_started', final: true });
    expect(awaited.outcome.message).toContain('Execution Command block was edited');
    const final = await waitForFileText(file, (t) => t.includes('## Outcome'));
    expect(parseApprovalText(final).data).toMatchObject({ status: 'VOID' });
    expect(parseApprovalText(final).data.gate_error).toContain('COMMAND_TAMPERED');
    expect(server.stderr()).toContain('COMMAND_TAMPERED');
    expect(await columnsOf(knex, table)).toEqual(expect.arrayContaining(['name']));
    expect(await columnsOf(knex, table)).not.toContain('harmless');
  });

  it('lists pending requests, and lets the agent withdraw one so it can never run', async () => {
    const first = await server.call(
      'execute_migration',
      migration(`ALTER TABLE ${table} ADD COLUMN withdrawn int`),
    );
    const id = first.outcome.approval_id ?? '';
    const listed = (await server.client.callTool({
      name: 'list_approvals',
      arguments: { status: 'PENDING' },
    })) as CallToolResult;
    const approvals = (listed.structuredContent as { approvals: { approval_id: string; status: string }[] })
      .approvals;
    expect(approvals.map((a) => a.approval_id)).toContain(id);
    expect(approvals.every((a) => a.status === 'PENDING')).toBe(true);

    const cancelled = await server.call('cancel_approval', { id, reason: 'Resubmitting with CONCURRENTLY' });
    expect(cancelled.outcome).toMatchObject({ status: 'CANCELLED', final: true });
    const text = await waitForFileText(first.outcome.file ?? '', (t) => t.includes('## Outcome'));
    expect(parseApprovalText(text).data.status).toBe('CANCELLED');
    await decideInFile(first.outcome.file ?? '', { status: 'APPROVED', decidedBy: 'Dana' });
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect((await server.call('get_approval_status', { id })).outcome.status).toBe('CANCELLED');
    expect((await server.call('cancel_approval', { id, reason: 'twice' })).outcome.error?.code).toBe(
      'ALREADY_DECIDED',
    );
    expect(await columnsOf(knex, table)).not.toContain('withdrawn');
  });

  it('offers approvals as resources, announces new ones and updates subscribed ones', async () => {
    const listChanged: number[] = [];
    const updated: string[] = [];
    server.client.setNotificationHandler(ResourceListChangedNotificationSchema, () => {
      listChanged.push(Date.now());
    });
    server.client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => {
      updated.push(n.params.uri);
    });
    const first = await server.call(
      'execute_migration',
      migration(`ALTER TABLE ${table} ADD COLUMN as_resource int`),
    );
    const uri = `approval://${first.outcome.approval_id ?? ''}`;
    expect(listChanged.length).toBeGreaterThan(0);
    const { resources } = await server.client.listResources();
    expect(resources.map((r) => r.uri)).toContain(uri);
    const read = await server.client.readResource({ uri });
    expect(read.contents[0]).toMatchObject({ mimeType: 'text/markdown' });
    expect(JSON.stringify(read.contents[0])).toContain('# Approval Request: Test migration');

    await server.client.subscribeResource({ uri });
    await decideInFile(first.outcome.file ?? '', { status: 'APPROVED', decidedBy: 'Dana' });
    await server.call('await_approval', { id: first.outcome.approval_id });
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(updated).toContain(uri);
  });

  it('a typo in the status is refused and reported, and executes nothing', async () => {
    const first = await server.call(
      'execute_migration',
      migration(`ALTER TABLE ${table} ADD COLUMN typo int`),
    );
    const file = first.outcome.file ?? '';
    const text = await readFile(file, 'utf8');
    await saveAs(file, updateFrontMatter(text, { status: 'APROVED', decided_by: 'Dana' }), 'rename');
    await waitForFileText(file, (t) => t.includes('gate_error: "STATUS_INVALID'));
    const status = await server.call('get_approval_status', { id: first.outcome.approval_id });
    expect(status.outcome).toMatchObject({ status: 'PENDING', problem: { code: 'STATUS_INVALID' } });
    expect(status.outcome.message).toContain('APROVED');
    expect(server.stderr()).toContain('STATUS_INVALID');
    expect(await columnsOf(knex, table)).not.toContain('typo');
  });
});
