import { mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { decideInFile } from '../../src/approvals/human-edit.js';
import { ApprovalStore } from '../../src/approvals/store.js';
import { silentLogger } from '../helpers/log.js';
import { Pipeline } from '../../src/pipeline.js';
import { waitForFileText } from '../helpers/files.js';
import { connectTestDatabase, uniqueName, TEST_DATABASE_ENV } from '../helpers/postgres.js';
import { createWorkspace, type Workspace } from '../helpers/workspace.js';

let knex: Knex;
const env = TEST_DATABASE_ENV;
const schemas: string[] = [];
const tables: string[] = [];

beforeAll(async () => {
  knex = await connectTestDatabase();
});

afterAll(async () => {
  for (const table of tables) await knex.schema.dropTableIfExists(table);
  for (const schema of schemas) await knex.raw('drop schema if exists ?? cascade', [schema]);
  await knex.destroy();
});

async function workspace(): Promise<Workspace> {
  const ledgerSchema = uniqueName('gate_runner');
  schemas.push(ledgerSchema, `${ledgerSchema}_backup`);
  return createWorkspace({ ledger_schema: ledgerSchema });
}

function table(prefix: string): string {
  const name = uniqueName(prefix);
  tables.push(name);
  return name;
}

async function tableExists(name: string): Promise<boolean> {
  return knex.schema.hasTable(name);
}

const migration = (sql: string, title: string) => ({
  environment: 'staging',
  database: 'staging_db',
  sql,
  title,
  reason: 'Exercising the runner on the real server.',
});

describe('every end is recorded, never only in memory', () => {
  it('a migration that ended before its ledger row is final after a restart, and never runs again', async () => {
    const ws = await workspace();
    const created = table('runner_once');
    let gate = await Pipeline.open(ws.config, { log: silentLogger, env });
    try {
      // A first migration makes the ledger, and a row to copy.
      const first = await gate.submit(migration('SELECT 1', 'Makes the ledger'));
      await decideInFile(gate.filePath(first.request.id), { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      expect((await gate.waitForFinal(first.request.id, { timeoutMs: 15_000, tickMs: 100 })).execution).toBe(
        'succeeded',
      );
      const { request } = await gate.submit(
        migration(`CREATE TABLE ${created} (id int)`, 'Ends before it starts'),
      );
      // The ledger already holds this id for another request (a state directory reset): the executor
      // refuses before anything is sent, and no ledger row of this request is written.
      const ledger = `${ws.config.ledger_schema}.ledger`;
      await knex.raw(
        `insert into ${ledger} (approval_id, request_hash, state, dry_run, transactional, attempts, started_at,
           finished_at, duration_ms, rows_affected, statements, error, executed_by, installation)
         select ?, 'sha256:not-this-request', state, dry_run, transactional, attempts, started_at, finished_at,
           duration_ms, rows_affected, statements, error, executed_by, installation
         from ${ledger} where approval_id = ?`,
        [request.id, first.request.id],
      );
      await decideInFile(gate.filePath(request.id), { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      const ended = await gate.waitForFinal(request.id, { timeoutMs: 15_000, tickMs: 100 });
      expect(ended).toMatchObject({ execution: 'failed', final: true });
      expect(ended.executionError).toContain('different request');
      await waitForFileText(gate.filePath(request.id), (text) =>
        text.includes('Not executed: nothing changed'),
      );

      // The conflict goes away, and the server restarts: the recorded end stands.
      await knex.raw(`delete from ${ledger} where approval_id = ?`, [request.id]);
      await gate.close();
      gate = await Pipeline.open(ws.config, { log: silentLogger, env });
      await gate.executionsSettled();
      const after = await gate.status(request.id);
      expect(after).toMatchObject({ execution: 'failed', final: true });
      expect(after.executionError).toContain('different request');
      expect(await tableExists(created)).toBe(false);
      const listed = (await gate.list()).find((s) => s.approval_id === request.id);
      expect(listed?.execution).toBe('failed');
    } finally {
      await gate.close();
    }
  }, 60_000);

  it('an audit log that cannot be written stops the run before anything is sent, and the server lives on', async () => {
    const ws = await workspace();
    const created = table('runner_audit');
    const gate = await Pipeline.open(ws.config, { log: silentLogger, env });
    try {
      const { request } = await gate.submit(
        migration(`CREATE TABLE ${created} (id int)`, 'No audit, no run'),
      );
      // A directory where the audit log should be: every append fails (root ignores file modes).
      const audit = path.join(ws.config.stateDir, 'audit.jsonl');
      await rm(audit, { force: true });
      await mkdir(audit);
      await decideInFile(gate.filePath(request.id), { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      const ended = await gate.waitForFinal(request.id, { timeoutMs: 15_000, tickMs: 100 });
      expect(ended).toMatchObject({ execution: 'failed', final: true });
      expect(ended.executionError).toContain('EISDIR');
      expect(await tableExists(created)).toBe(false);
      await rm(audit, { recursive: true });
      // Still serving: the next request is written and runs.
      const next = await gate.submit(migration('SELECT 1', 'After the audit log is back'));
      await decideInFile(gate.filePath(next.request.id), { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      expect((await gate.waitForFinal(next.request.id, { timeoutMs: 15_000, tickMs: 100 })).execution).toBe(
        'succeeded',
      );
    } finally {
      await gate.close();
    }
  }, 60_000);
});

describe('one migration at a time per database', () => {
  it('a second approval waits for the running migration, says so, and runs after it', async () => {
    const ws = await workspace();
    const slow = table('runner_slow');
    const queued = table('runner_queued');
    const gate = await Pipeline.open(ws.config, { log: silentLogger, env });
    try {
      const first = await gate.submit(
        migration(`CREATE TABLE ${slow} (id int); SELECT pg_sleep(1.5)`, 'Takes a while'),
      );
      const second = await gate.submit(migration(`CREATE TABLE ${queued} (id int)`, 'Comes second'));
      await decideInFile(gate.filePath(first.request.id), { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      await waitFor(
        async () => (await gate.status(first.request.id)).progress?.includes('transaction') ?? false,
      );
      await decideInFile(gate.filePath(second.request.id), { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      await waitFor(
        async () => (await gate.status(second.request.id)).progress?.startsWith('queued') ?? false,
      );
      const waiting = await gate.status(second.request.id);
      expect(waiting).toMatchObject({ execution: 'running', final: false });
      expect(waiting.progress).toContain('another migration on staging_db runs first');
      const [a, b] = await Promise.all(
        [first, second].map(({ request }) =>
          gate.waitForFinal(request.id, { timeoutMs: 20_000, tickMs: 100 }),
        ),
      );
      expect([a?.execution, b?.execution]).toEqual(['succeeded', 'succeeded']);
      expect(Date.parse(b?.result?.started_at ?? '')).toBeGreaterThanOrEqual(
        Date.parse(a?.result?.finished_at ?? ''),
      );
    } finally {
      await gate.close();
    }
  }, 60_000);
});

async function waitFor(condition: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('told from the record, shown in the file', () => {
  it('wakes waiters once the outcome is recorded, and tells file readers once the file shows it', async () => {
    const ws = await workspace();
    const gate = await Pipeline.open(ws.config, { log: silentLogger, env });
    try {
      // Long enough for the file to say "running" first.
      const { request } = await gate.submit(migration('SELECT pg_sleep(0.6)', 'Told, then shown'));
      const file = gate.filePath(request.id);
      // What a resource subscriber reads each time it is told the file changed.
      const shownTexts: Promise<string>[] = [];
      const stop = gate.onChange((id, change) => {
        if (id === request.id && change.kind === 'shown') shownTexts.push(readFile(file, 'utf8'));
      });
      try {
        await decideInFile(file, { status: 'APPROVED', decidedBy: 'Dana Reyes' });
        const final = await gate.waitForFinal(request.id, { timeoutMs: 15_000, tickMs: 60_000 });
        expect(final).toMatchObject({ final: true, execution: 'succeeded' });
        await waitForFileText(file, (text) => text.includes('## Outcome'));
        await gate.notificationsSettled();
        const texts = await Promise.all(shownTexts);
        // The running fields, then the outcome: each announced after it was in the file.
        expect(texts.some((text) => text.includes('execution: "running"'))).toBe(true);
        expect(texts.at(-1)).toContain('## Outcome');
      } finally {
        stop();
      }
    } finally {
      await gate.close();
    }
  });
});

describe('closing', () => {
  it('a pipeline closed right after telling the agent has shown the outcome in the file first', async () => {
    const ws = await workspace();
    const gate = await Pipeline.open(ws.config, { log: silentLogger, env });
    const { request } = await gate.submit(migration('SELECT 1', 'Closed at once'));
    const file = gate.filePath(request.id);
    // A slow disk: each rewrite of the file lands well after the agent is told.
    const update = ApprovalStore.prototype.updateApprovalFile;
    const slow = vi.spyOn(ApprovalStore.prototype, 'updateApprovalFile').mockImplementation(async function (
      this: ApprovalStore,
      id,
      change,
    ) {
      await new Promise((resolve) => setTimeout(resolve, 400));
      return update.call(this, id, change);
    });
    try {
      await decideInFile(file, { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      const final = await gate.waitForFinal(request.id, { timeoutMs: 15_000, tickMs: 60_000 });
      expect(final).toMatchObject({ final: true, execution: 'succeeded' });
      await gate.close();
      expect(await readFile(file, 'utf8')).toContain('## Outcome');
    } finally {
      slow.mockRestore();
    }
  });
});
