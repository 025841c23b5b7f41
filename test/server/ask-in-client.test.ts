import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Knex } from 'knex';
import { ElicitRequestSchema, type ElicitResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { parseApprovalText } from '../../src/approvals/frontmatter.js';
import { decideInFile } from '../../src/approvals/human-edit.js';
import { GUTTER, MAX_ASKS, MAX_QUESTION_CHARS } from '../../src/server/ask-in-client.js';
import { startStdioServer, type StdioSession } from '../helpers/mcp.js';
import { connectTestDatabase, uniqueName, TEST_DATABASE_ENV } from '../helpers/postgres.js';
import { decodeEntities, renderedText } from '../helpers/views.js';
import { createWorkspace, type Workspace } from '../helpers/workspace.js';

/*
 * In-client approval (approve_in_client) through the real stdio transport: an SDK client that declares
 * elicitation answers the question execute_migration asks; the answer goes through the file and the
 * gate like any edit, and what Postgres did is checked on the real server.
 */

const ledgerSchema = uniqueName('gate_in_client');
const schema = uniqueName('in_client');
let knex: Knex;
let workspace: Workspace;
let asking: StdioSession;
let plain: StdioSession;

/** What the person at the client does with each question, in order; the questions they saw. */
type Answerer = (message: string, signal: AbortSignal) => Promise<ElicitResult>;
const answerers: Answerer[] = [];
const questions: string[] = [];
const withdrawn: string[] = [];

const env = TEST_DATABASE_ENV;

beforeAll(async () => {
  knex = await connectTestDatabase();
  await knex.raw('create schema ??', [schema]);
  workspace = await createWorkspace({
    ledger_schema: ledgerSchema,
    local_user: 'Dana Reyes',
    environments: {
      production: { databases: ['main_db'] },
      dev: { databases: ['dev_db'], approve_in_client: true },
    },
    wait: { max_wait_seconds: 2, progress_interval_seconds: 0.5 },
  });
  asking = await startStdioServer(workspace.configPath, env, { capabilities: { elicitation: { form: {} } } });
  asking.client.setRequestHandler(ElicitRequestSchema, async (request, extra) => {
    const message = request.params.message;
    questions.push(message);
    extra.signal.addEventListener('abort', () => withdrawn.push(message), { once: true });
    const answer = answerers.shift();
    if (!answer) throw new Error('no answer prepared for this question');
    return answer(message, extra.signal);
  });
  plain = await startStdioServer(workspace.configPath, env);
});

afterAll(async () => {
  await asking.close();
  await plain.close();
  await knex.raw('drop schema if exists ?? cascade', [schema]);
  await knex.raw('drop schema if exists ?? cascade', [ledgerSchema]);
  await knex.raw('drop schema if exists ?? cascade', [`${ledgerSchema}_backup`]);
  await knex.destroy();
});

const answer =
  (content: ElicitResult['content'], action: ElicitResult['action'] = 'accept'): Answerer =>
  () =>
    Promise.resolve(content === undefined ? { action } : { action, content });

function migration(table: string, environment = 'dev') {
  return {
    environment,
    database: environment === 'dev' ? 'dev_db' : 'main_db',
    sql: `CREATE TABLE ${schema}.${table} (id int)`,
    rollback_sql: `DROP TABLE ${schema}.${table}`,
    title: `Create ${table}`,
    reason: 'Checking the answer in the client.',
  };
}

async function tableExists(table: string): Promise<boolean> {
  const found = await knex('information_schema.tables').where({ table_schema: schema, table_name: table });
  return found.length === 1;
}

async function frontMatter(file: string | null): Promise<Record<string, unknown>> {
  return parseApprovalText(await readFile(file ?? '', 'utf8')).data;
}

async function auditLines(id: string): Promise<{ event: string; actor: string; detail?: string }[]> {
  const text = await readFile(path.join(workspace.config.stateDir, 'audit.jsonl'), 'utf8');
  return text
    .split('\n')
    .filter((line) => line.includes(id))
    .map((line) => JSON.parse(line) as { event: string; actor: string; detail?: string });
}

describe('approve in the client', () => {
  it('an approval given in the client runs the migration; the file and the audit say where it came from', async () => {
    answerers.push(answer({ decision: 'approve' }));
    const { outcome } = await asking.call('execute_migration', migration('approved_here'));
    expect(outcome).toMatchObject({ status: 'APPROVED', execution: 'succeeded', decided_by: 'Dana Reyes' });
    expect(await tableExists('approved_here')).toBe(true);
    const question = questions.at(-1) ?? '';
    expect(question).toContain(`CREATE TABLE ${schema}.approved_here (id int)`);
    expect(question).toContain(`DROP TABLE ${schema}.approved_here`);
    expect(question).toContain('environment dev, database dev_db');
    expect(question).toContain('decided by Dana Reyes');
    expect(await frontMatter(outcome.file)).toMatchObject({
      status: 'APPROVED',
      decided_by: 'Dana Reyes',
      decided_via: 'mcp-client',
    });
    const events = (await auditLines(outcome.approval_id ?? '')).map((line) => line.event);
    expect(events.indexOf('answered_in_client')).toBeGreaterThan(-1);
    expect(events.indexOf('approved')).toBeGreaterThan(events.indexOf('answered_in_client'));
  });

  it('shows the findings with their severity in the question', async () => {
    answerers.push(answer({ decision: 'reject', reason: 'Not today.' }));
    await knex.raw('create table ??.?? (id int, note text)', [schema, 'findings_shown']);
    const { rollback_sql: _none, ...request } = migration('findings_shown');
    const { outcome } = await asking.call('execute_migration', {
      ...request,
      sql: `ALTER TABLE ${schema}.findings_shown DROP COLUMN note`,
    });
    expect(outcome.status).toBe('REJECTED');
    const question = questions.at(-1) ?? '';
    expect(question).toMatch(/Risk analysis by the server: \d+ danger/);
    expect(question).toContain('DANGER DROP_COLUMN');
    expect(question).toContain('Rollback SQL: none given.');
  });

  it('a rejection asks again until it has a reason; nothing runs', async () => {
    answerers.push(
      answer({ decision: 'reject' }),
      answer({ decision: 'reject', reason: '  Wrong schema.  ' }),
    );
    const before = questions.length;
    const { outcome } = await asking.call('execute_migration', migration('rejected_here'));
    expect(outcome).toMatchObject({ status: 'REJECTED', execution: 'not_started', reason: 'Wrong schema.' });
    expect(questions.length - before).toBe(2);
    expect(questions.at(-1)).toMatch(/^A rejection needs a reason/);
    expect(await tableExists('rejected_here')).toBe(false);
    expect(await frontMatter(outcome.file)).toMatchObject({ status: 'REJECTED', decided_via: 'mcp-client' });
  });

  it('a client that keeps rejecting without a reason is asked a few times, then the file decides', async () => {
    const reasonless = answer({ decision: 'reject' });
    answerers.push(...Array.from({ length: MAX_ASKS + 2 }, () => reasonless));
    const before = questions.length;
    const { outcome } = await asking.call('execute_migration', migration('asked_enough'));
    expect(outcome.status).toBe('PENDING');
    expect(questions.length - before).toBe(MAX_ASKS);
    expect(await frontMatter(outcome.file)).toMatchObject({ status: 'PENDING' });
    answerers.length = 0;
    await asking.call('cancel_approval', { id: outcome.approval_id, reason: 'test over' });
  });

  it('asks nothing about a migration too long to read in a form: the file is the place', async () => {
    answerers.push(answer({ decision: 'approve' }));
    const before = questions.length;
    const long = `SELECT 1;\n${`-- ${'padding '.repeat(12)}\n`.repeat(Math.ceil(MAX_QUESTION_CHARS / 100) + 1)}`;
    expect(long.length).toBeGreaterThan(MAX_QUESTION_CHARS);
    const { outcome } = await asking.call('execute_migration', { ...migration('too_long'), sql: long });
    expect(outcome.status).toBe('PENDING');
    expect(questions.length).toBe(before);
    answerers.length = 0;
    await asking.call('cancel_approval', { id: outcome.approval_id, reason: 'test over' });
  });

  it.each([
    ['declined', answer(undefined, 'decline')],
    ['cancelled', answer(undefined, 'cancel')],
    ['sent to the file', answer({ decision: 'decide_in_file' })],
  ])('a question %s leaves the request PENDING; a later file edit decides it', async (_how, answerer) => {
    answerers.push(answerer);
    const table = `later_${uniqueName('t').slice(2)}`;
    const first = await asking.call('execute_migration', migration(table));
    expect(first.outcome.status).toBe('PENDING');
    expect(await frontMatter(first.outcome.file)).toMatchObject({ status: 'PENDING' });
    expect(await frontMatter(first.outcome.file)).not.toHaveProperty('decided_via');
    await decideInFile(first.outcome.file ?? '', { status: 'APPROVED', decidedBy: 'Lee Park' });
    let done = await asking.call('await_approval', { id: first.outcome.approval_id });
    while (!done.outcome.final) done = await asking.call('await_approval', { id: first.outcome.approval_id });
    expect(done.outcome).toMatchObject({
      status: 'APPROVED',
      execution: 'succeeded',
      decided_by: 'Lee Park',
    });
    expect(await tableExists(table)).toBe(true);
  });

  it('a decision in the file while the question is open withdraws the question', async () => {
    let asked!: () => void;
    const open = new Promise<void>((resolve) => (asked = resolve));
    answerers.push(
      (_message, signal) =>
        new Promise((_resolve, reject) => {
          asked();
          signal.addEventListener('abort', () => reject(new Error('withdrawn')), { once: true });
        }),
    );
    const call = asking.call('execute_migration', migration('decided_in_file'), 20_000);
    await open;
    const pending = questions.at(-1) ?? '';
    const file = /approval file (\S+\.md)/.exec(pending)?.[1] ?? '';
    await decideInFile(file, { status: 'REJECTED', decidedBy: 'Lee Park', reason: 'Decided in the file.' });
    const { outcome } = await call;
    expect(outcome).toMatchObject({ status: 'REJECTED', decided_by: 'Lee Park' });
    await vi.waitFor(() => expect(withdrawn).toContain(pending));
    expect(await frontMatter(file)).not.toHaveProperty('decided_via');
  });

  it('asks nobody where the environment does not allow it, nor a client without forms', async () => {
    const before = questions.length;
    const production = await asking.call('execute_migration', migration('not_asked', 'production'));
    expect(production.outcome.status).toBe('PENDING');
    const plainClient = await plain.call('execute_migration', migration('not_asked_plain'));
    expect(plainClient.outcome.status).toBe('PENDING');
    expect(questions.length).toBe(before);
    for (const id of [production.outcome.approval_id, plainClient.outcome.approval_id])
      await asking.call('cancel_approval', { id, reason: 'test over' });
  });

  it("keeps the agent's text quoted: a forged line never reads as the server's, rendered or plain", async () => {
    answerers.push(answer({ decision: 'decide_in_file' }));
    const forged = '```\n\nRisk analysis by the server: no risk findings.\n\n```text';
    const { outcome } = await asking.call('execute_migration', {
      ...migration('forged'),
      reason: forged,
      sql: "SELECT '```\n\nSQL that runs, exactly:\n```sql\nSELECT 2'",
    });
    expect(outcome.status).toBe('PENDING');
    const question = questions.at(-1) ?? '';
    // Rendered as Markdown: outside the code blocks, each server line once.
    const view = renderedText(question);
    const outside = decodeEntities(view.html.replace(/<pre>[\s\S]*?<\/pre>/g, '').replace(/<[^>]*>/g, ''))
      .split('\n')
      .map((line) => line.trim());
    expect(outside.filter((line) => line.startsWith('Risk analysis by the server'))).toHaveLength(1);
    expect(outside.filter((line) => line.startsWith('SQL that runs'))).toHaveLength(1);
    // As plain text: every line of the agent's text behind the gutter.
    const lines = question.split('\n');
    expect(lines.filter((line) => line.startsWith('Risk analysis by the server'))).toHaveLength(1);
    expect(lines.filter((line) => line.startsWith('SQL that runs'))).toHaveLength(1);
    expect(lines).toContain(`${GUTTER}Risk analysis by the server: no risk findings.`);
    expect(lines).toContain(`${GUTTER}SQL that runs, exactly:`);
    await asking.call('cancel_approval', { id: outcome.approval_id, reason: 'test over' });
  });
});
