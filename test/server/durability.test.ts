import { readFile } from 'node:fs/promises';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decideInFile } from '../../src/approvals/human-edit.js';
import { parseApprovalText } from '../../src/approvals/frontmatter.js';
import type { CrashPoint } from '../../src/faults.js';
import { nextApprovalFile, waitForFileText } from '../helpers/files.js';
import { startStdioServer, type StdioSession } from '../helpers/mcp.js';
import { connectTestDatabase, uniqueName, TEST_DATABASE_ENV } from '../helpers/postgres.js';
import { createWorkspace } from '../helpers/workspace.js';

/*
 * Invariant 3 on the real server: an approved migration runs exactly once, or is reported honestly
 * as unknown, whatever process dies where, and however many instances share the work.
 */

let knex: Knex;
const counter = uniqueName('runs');
const schemas: string[] = [];

beforeAll(async () => {
  knex = await connectTestDatabase();
  await knex.schema.createTable(counter, (t) => {
    t.increments('id');
    t.text('tag').notNullable();
  });
});

afterAll(async () => {
  await knex.schema.dropTableIfExists(counter);
  for (const schema of schemas) await knex.raw('drop schema if exists ?? cascade', [schema]);
  await knex.destroy();
});

async function runsOf(tag: string): Promise<number> {
  const [row] = await knex(counter).where({ tag }).count<{ count: string }[]>('* as count');
  return Number(row?.count);
}

async function workspaceWithOwnLedger() {
  const schema = uniqueName('gate_durable');
  schemas.push(schema);
  return {
    schema,
    workspace: await createWorkspace({
      ledger_schema: schema,
      wait: { max_wait_seconds: 20, progress_interval_seconds: 0.5 },
    }),
  };
}

async function ledgerRows(schema: string, id: string): Promise<{ state: string }[]> {
  return knex.withSchema(schema).table('ledger').where({ approval_id: id });
}

const env = TEST_DATABASE_ENV;

describe('two server instances on one approvals directory and database', () => {
  it('execute one approval exactly once, and both callers get the same result', async () => {
    const { schema, workspace } = await workspaceWithOwnLedger();
    const [a, b] = await Promise.all([
      startStdioServer(workspace.configPath, env),
      startStdioServer(workspace.configPath, env),
    ]);
    try {
      const tag = 'two-instances';
      const seen = new Set<string>();
      const callA = a.call('execute_migration', {
        environment: 'production',
        database: 'main_db',
        sql: `INSERT INTO ${counter} (tag) VALUES ('${tag}'); INSERT INTO ${counter} (tag) VALUES ('${tag}')`,
        title: 'Two instances',
        reason: 'Both instances see this approval; it must run once.',
      });
      const file = await nextApprovalFile(workspace.config.approvalsDir, seen);
      const id = file.replace(/^.*\//, '').replace(/\.md$/, '');
      const callB = b.call('await_approval', { id });
      await new Promise((resolve) => setTimeout(resolve, 200));
      await decideInFile(file, { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      const [ra, rb] = await Promise.all([callA, callB]);
      expect(ra.outcome).toMatchObject({ status: 'APPROVED', execution: 'succeeded' });
      expect(rb.outcome.result).toEqual(ra.outcome.result);
      expect(await runsOf(tag)).toBe(2);
      expect(await ledgerRows(schema, id)).toHaveLength(1);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});

interface CrashCase {
  readonly point: CrashPoint;
  readonly stepByStep: boolean;
  /** Whether the human decides before the crash (the crash happens after the decision). */
  readonly decideFirst: boolean;
}

const crashes: CrashCase[] = [
  { point: 'after-file-write', stepByStep: false, decideFirst: false },
  { point: 'after-decision-recorded', stepByStep: false, decideFirst: true },
  { point: 'after-advisory-lock', stepByStep: false, decideFirst: true },
  { point: 'mid-migration', stepByStep: false, decideFirst: true },
  { point: 'after-commit', stepByStep: false, decideFirst: true },
  { point: 'after-step-started', stepByStep: true, decideFirst: true },
  { point: 'after-step-executed', stepByStep: true, decideFirst: true },
];

describe('fault injection: the process is killed at each step, then restarted', () => {
  for (const { point, stepByStep, decideFirst } of crashes) {
    it(`killed ${point}: ${stepByStep ? 'reported unknown, never retried' : 'executed exactly once'}, and the file tells the truth`, async () => {
      const { schema, workspace } = await workspaceWithOwnLedger();
      const tag = `crash-${point}`;
      const sql = stepByStep
        ? `INSERT INTO ${counter} (tag) VALUES ('${tag}'); CREATE INDEX CONCURRENTLY ${uniqueName('idx')} ON ${counter}(tag)`
        : `INSERT INTO ${counter} (tag) VALUES ('${tag}'); INSERT INTO ${counter} (tag) VALUES ('${tag}')`;
      const doomed: StdioSession = await startStdioServer(workspace.configPath, {
        ...env,
        APPROVAL_GATE_CRASH_AT: point,
      });
      const call = doomed
        .call('execute_migration', {
          environment: 'production',
          database: 'main_db',
          sql,
          title: `Crash ${point}`,
          reason: 'Fault injection test.',
        })
        .then(
          () => 'answered',
          () => 'died',
        );
      const file = await nextApprovalFile(workspace.config.approvalsDir, new Set());
      const id = file.replace(/^.*\//, '').replace(/\.md$/, '');
      if (decideFirst) await decideInFile(file, { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      expect(await call).toBe('died');
      expect(doomed.stderr()).toContain(`crashing on purpose at ${point}`);
      await doomed.close().catch(() => undefined);
      if (!decideFirst) await decideInFile(file, { status: 'APPROVED', decidedBy: 'Dana Reyes' });

      const restarted = await startStdioServer(workspace.configPath, env);
      try {
        const { outcome } = await restarted.call('await_approval', { id });
        expect(outcome.final).toBe(true);
        const ledger = await ledgerRows(schema, id);
        expect(ledger).toHaveLength(1);
        if (stepByStep) {
          expect(outcome.execution).toBe('unknown');
          expect(outcome.message).toContain(`INSERT INTO ${counter}`);
          expect(ledger[0]?.state).toBe('unknown');
          expect(await runsOf(tag)).toBe(point === 'after-step-executed' ? 1 : 0);
        } else {
          expect(outcome.execution).toBe('succeeded');
          expect(ledger[0]?.state).toBe('succeeded');
          expect(await runsOf(tag)).toBe(2);
        }
        const text = await waitForFileText(file, (t) => t.includes('## Outcome'));
        expect(parseApprovalText(text).data.execution).toBe(stepByStep ? 'unknown' : 'succeeded');
        // A second restart finds nothing to do: finished requests are never re-run.
        await restarted.close();
        const again = await startStdioServer(workspace.configPath, env);
        expect((await again.call('get_approval_status', { id })).outcome.execution).toBe(outcome.execution);
        await again.close();
        expect(await runsOf(tag)).toBe(stepByStep ? (point === 'after-step-executed' ? 1 : 0) : 2);
        expect(await readFile(file, 'utf8')).not.toContain('execution: "running"');
      } finally {
        await restarted.close().catch(() => undefined);
      }
    });
  }
});
