import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decideInFile } from '../../src/approvals/human-edit.js';
import { renderApprovalFile } from '../../src/approvals/render.js';
import { hashCommand, type ApprovalRequest } from '../../src/approvals/request.js';
import { Pipeline } from '../../src/pipeline.js';
import { silentLogger } from '../helpers/log.js';
import { columnsOf, connectTestDatabase, TEST_DATABASE_ENV, uniqueName } from '../helpers/postgres.js';
import { sampleContext } from '../helpers/requests.js';
import { createWorkspace, type Workspace } from '../helpers/workspace.js';

/*
 * The agent runs as the server's user and can write the server's records in the state directory.
 * Whatever it writes there, an approved request runs only if its command is one the agent could
 * submit now, with as many approvers as the policy requires now: on the real server.
 */

let knex: Knex;
let workspace: Workspace;
const ledgerSchema = uniqueName('gate_admission');
const victim = uniqueName('admission_victim');

beforeAll(async () => {
  knex = await connectTestDatabase();
  await knex.schema.createTable(victim, (t) => t.integer('v'));
  workspace = await createWorkspace({
    ledger_schema: ledgerSchema,
    environments: {
      production: {
        databases: ['main_db'],
        risk_policy: { DROP_TABLE: 'refuse', TRUNCATE: 'two_approvers' },
      },
      dev: {
        databases: ['dev_db'],
        require_approval: 'not_for_dry_runs',
        risk_policy: { TRUNCATE: 'two_approvers' },
      },
    },
  });
});

afterAll(async () => {
  await knex.schema.dropTableIfExists(victim);
  await knex.raw('drop schema if exists ?? cascade', [ledgerSchema]);
  await knex.destroy();
});

const open = () => Pipeline.open(workspace.config, { log: silentLogger, env: TEST_DATABASE_ENV });
const recordFile = (id: string) => path.join(workspace.config.stateDir, 'records', `${id}.json`);

async function rewriteRecord(
  id: string,
  change: (record: ApprovalRequest) => ApprovalRequest,
): Promise<void> {
  const record = JSON.parse(await readFile(recordFile(id), 'utf8')) as ApprovalRequest;
  await writeFile(recordFile(id), JSON.stringify(change(record)));
}

const victimRows = async () =>
  Number((await knex(victim).count<{ count: string }[]>('* as count'))[0]?.count);

describe('a request that ran before a crash', () => {
  it('keeps the result the ledger holds, even where the config would not admit it now', async () => {
    const column = uniqueName('c');
    const first = await open();
    const { request } = await first.submit({
      environment: 'production',
      database: 'main_db',
      sql: `ALTER TABLE ${victim} ADD COLUMN ${column} int`,
      title: 'Ran before the crash',
      reason: 'The outcome was not recorded in the state directory.',
    });
    await decideInFile(first.filePath(request.id), { status: 'APPROVED', decidedBy: 'Dana Reyes' });
    const ran = await first.waitForFinal(request.id, { timeoutMs: 15_000, tickMs: 50 });
    expect(ran.execution).toBe('succeeded');
    await first.close();
    // The crash came after the commit, before the outcome file; then the policy was tightened.
    await rm(path.join(workspace.config.stateDir, 'outcomes', `${request.id}.json`));
    const production = workspace.config.environments.production;
    if (!production) throw new Error('no production environment');
    const tightened = {
      ...workspace.config,
      environments: {
        production: {
          ...production,
          risk_policy: { ...production.risk_policy, LOCK_TIMEOUT_ENFORCED: 'refuse' as const },
        },
      },
    };
    const restarted = await Pipeline.open(tightened, { log: silentLogger, env: TEST_DATABASE_ENV });
    try {
      const final = await restarted.waitForFinal(request.id, { timeoutMs: 15_000, tickMs: 50 });
      expect(final).toMatchObject({ final: true, execution: 'succeeded', executionError: null });
      expect(await columnsOf(knex, victim)).toContain(column);
    } finally {
      await restarted.close();
    }
  });
});

describe('a record the agent rewrote', () => {
  it('with its hash recomputed, runs nothing the policy refuses', async () => {
    const first = await open();
    const { request } = await first.submit({
      environment: 'production',
      database: 'main_db',
      sql: 'SELECT 1',
      title: 'Harmless',
      reason: 'The agent will rewrite this record.',
    });
    await first.close();
    // The agent rewrites command and hash alike, and renders the file from its record with the
    // server's own renderer (no findings shown), so the file matches the record in every check.
    const sql = `DROP TABLE ${victim}`;
    let forged: ApprovalRequest | undefined;
    await rewriteRecord(request.id, (record) => {
      const command = { ...record.command, sql };
      forged = { ...record, command, request_hash: hashCommand(command) };
      return forged;
    });
    const file = path.join(workspace.config.approvalsDir, `${request.id}.md`);
    if (forged) await writeFile(file, renderApprovalFile(forged, sampleContext));
    const restarted = await open();
    try {
      await decideInFile(file, { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      const final = await restarted.waitForFinal(request.id, { timeoutMs: 15_000, tickMs: 50 });
      expect(final).toMatchObject({ final: true, execution: 'failed' });
      expect(final.executionError).toMatch(/policy refuses this migration.*Nothing was run/);
      expect(await knex.schema.hasTable(victim)).toBe(true);
    } finally {
      await restarted.close();
    }
  });

  it('with approvals_required lowered to one while the server was down, still needs the two approvers the policy requires', async () => {
    await knex(victim).insert([{ v: 1 }, { v: 2 }]);
    let pipeline = await open();
    try {
      const { request } = await pipeline.submit({
        environment: 'production',
        database: 'main_db',
        sql: `TRUNCATE ${victim}`,
        title: 'Empty the table',
        reason: 'Needs two people by policy.',
      });
      expect(request.approvals_required).toBe(2);
      // Outside the hashed command: the hash still matches. (A running server judges decisions
      // by the request it made, in memory; a restarted one reads the record.)
      await pipeline.close();
      await rewriteRecord(request.id, (record) => ({ ...record, approvals_required: 1 }));
      pipeline = await open();
      await decideInFile(pipeline.filePath(request.id), { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      const final = await pipeline.waitForFinal(request.id, { timeoutMs: 15_000, tickMs: 50 });
      expect(final).toMatchObject({ final: true, execution: 'failed' });
      expect(final.executionError).toMatch(/requires two approvers.*Nothing was run/);
      expect(await victimRows()).toBe(2);
    } finally {
      await pipeline.close();
      await knex(victim).delete();
    }
  });
});

describe('an approval no person made', () => {
  it('runs where require_approval makes it, whatever the risk policy asks of people', async () => {
    await knex(victim).insert([{ v: 1 }]);
    const pipeline = await open();
    try {
      const { request } = await pipeline.submit({
        environment: 'dev',
        database: 'dev_db',
        sql: `TRUNCATE ${victim}`,
        dry_run: true,
        title: 'Rehearse emptying the table',
        reason: 'Dry runs need no person in dev.',
      });
      expect(request.approvals_required).toBe(2);
      const final = await pipeline.waitForFinal(request.id, { timeoutMs: 15_000, tickMs: 50 });
      expect(final).toMatchObject({ execution: 'rolled_back', decision: { decided_by: null } });
      expect(await victimRows()).toBe(1);
    } finally {
      await pipeline.close();
      await knex(victim).delete();
    }
  });

  it('written into the state directory where a person must decide, runs nothing', async () => {
    const first = await open();
    const { request } = await first.submit({
      environment: 'production',
      database: 'main_db',
      sql: `DELETE FROM ${victim} WHERE v > 0`,
      title: 'Needs a person',
      reason: 'production requires approval.',
    });
    await first.close();
    await knex(victim).insert([{ v: 1 }]);
    // The agent records an approval "by policy" for its own request.
    const decision = {
      approval_id: request.id,
      request_hash: request.request_hash,
      status: 'APPROVED',
      decided_by: null,
      decided_at: new Date().toISOString(),
      claimed_decided_at: null,
      second_approver: null,
      reason: 'No human approval needed.',
      signatures: [],
    };
    await writeFile(
      path.join(workspace.config.stateDir, 'decisions', `${request.id}.json`),
      JSON.stringify(decision),
    );
    const restarted = await open();
    try {
      const final = await restarted.waitForFinal(request.id, { timeoutMs: 15_000, tickMs: 50 });
      expect(final).toMatchObject({ final: true, execution: 'failed' });
      expect(final.executionError).toMatch(/requires a person's approval.*Nothing was run/);
      expect(await victimRows()).toBe(1);
    } finally {
      await restarted.close();
      await knex(victim).delete();
    }
  });
});
