import { mkdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../src/log.js';
import { Pipeline } from '../src/pipeline.js';
import { decideInFile } from '../src/approvals/human-edit.js';
import { columnsOf, connectTestDatabase, TEST_DATABASE_URL, uniqueName } from './helpers/postgres.js';
import { createWorkspace, type Workspace } from './helpers/workspace.js';

let knex: Knex;
let workspace: Workspace;
let pipeline: Pipeline;
const ledgerSchema = uniqueName('gate_pipeline');

beforeAll(async () => {
  knex = await connectTestDatabase();
  workspace = await createWorkspace({ ledger_schema: ledgerSchema, migrations_dir: 'db/migrations' });
  await mkdir(path.join(workspace.dir, 'db/migrations'), { recursive: true });
  await writeFile(path.join(workspace.dir, 'secret.sql'), 'SELECT 1');
  await symlink(path.join(workspace.dir, 'secret.sql'), path.join(workspace.dir, 'db/migrations/escape.sql'));
  pipeline = await Pipeline.open(workspace.config, {
    log: silentLogger,
    env: { TEST_MAIN_DB_URL: TEST_DATABASE_URL },
  });
});

afterAll(async () => {
  await pipeline?.close();
  await knex.raw('drop schema if exists ?? cascade', [ledgerSchema]);
  await knex.destroy();
});

const request = (migration_file: string) => ({
  environment: 'staging',
  database: 'main_db',
  migration_file,
  sql: 'SELECT 1',
  title: 'Confinement',
  reason: 'Checking where migration_file may point.',
});

describe('security: migration_file stays inside the migrations directory', () => {
  it('accepts a file inside the configured directory', async () => {
    const { request: stored } = await pipeline.submit(request('db/migrations/20260213_add_loyalty_tier.sql'));
    expect(stored.command.migration_file).toBe('db/migrations/20260213_add_loyalty_tier.sql');
  });

  for (const [what, file] of [
    ['a path outside the directory', 'src/evil.sql'],
    ['a sibling directory with the same prefix', 'db/migrations-evil/x.sql'],
    ['parent traversal', 'db/migrations/../../etc/passwd'],
    ['an absolute path', '/etc/passwd'],
    ['a Windows drive path', 'C:\\\\evil.sql'],
    ['a NUL byte', 'db/migrations/x.sql\u0000.txt'],
    ['a symlink leading out', 'db/migrations/escape.sql'],
  ] as const) {
    it(`refuses ${what} before anything is written`, async () => {
      await expect(pipeline.submit(request(file))).rejects.toMatchObject({ code: 'MIGRATION_FILE_INVALID' });
    });
  }
});

describe('rollback on request', () => {
  it('runs the recorded rollback SQL only through a new approval, never approved by its requester', async () => {
    const table = uniqueName('rollback');
    await knex.schema.createTable(table, (t) => t.increments('id'));
    try {
      const { request } = await pipeline.submit({
        environment: 'staging',
        database: 'main_db',
        sql: `ALTER TABLE ${table} ADD COLUMN tier text`,
        rollback_sql: `ALTER TABLE ${table} DROP COLUMN tier`,
        title: 'Add tier',
        reason: 'A change we will roll back.',
      });
      await decideInFile(pipeline.filePath(request.id), { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      expect((await pipeline.waitForFinal(request.id, { timeoutMs: 10_000, tickMs: 100 })).execution).toBe(
        'succeeded',
      );
      expect(await columnsOf(knex, table)).toContain('tier');

      const { request: rollback } = await pipeline.requestRollback(request.id, {
        requestedBy: 'Sam Okafor',
        reason: 'Tier breaks the nightly export.',
      });
      expect(rollback).toMatchObject({ rollback_of: request.id, requested_by: 'Sam Okafor' });
      expect(rollback.command.sql).toBe(`ALTER TABLE ${table} DROP COLUMN tier`);
      await expect(
        pipeline.requestRollback(request.id, { requestedBy: 'Sam Okafor', reason: 'Asking twice.' }),
      ).rejects.toMatchObject({
        code: 'ROLLBACK_ALREADY_REQUESTED',
      });
      expect(await columnsOf(knex, table)).toContain('tier');

      await decideInFile(pipeline.filePath(rollback.id), { status: 'APPROVED', decidedBy: 'Sam Okafor' });
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect((await pipeline.status(rollback.id)).problem?.code).toBe('SELF_APPROVAL');
      await decideInFile(pipeline.filePath(rollback.id), { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      expect((await pipeline.waitForFinal(rollback.id, { timeoutMs: 10_000, tickMs: 100 })).execution).toBe(
        'succeeded',
      );
      expect(await columnsOf(knex, table)).not.toContain('tier');
    } finally {
      await knex.schema.dropTableIfExists(table);
    }
  });

  it('refuses a rollback of a request without rollback SQL, or one that never ran', async () => {
    const { request: noRollback } = await pipeline.submit({
      environment: 'staging',
      database: 'main_db',
      sql: 'SELECT 1',
      title: 'No rollback',
      reason: 'Nothing recorded to undo this.',
    });
    await expect(
      pipeline.requestRollback(noRollback.id, { requestedBy: 'Dana', reason: 'Undo it please.' }),
    ).rejects.toMatchObject({
      code: 'NO_ROLLBACK_SQL',
    });
    const { request: pending } = await pipeline.submit({
      environment: 'staging',
      database: 'main_db',
      sql: 'SELECT 1',
      rollback_sql: 'SELECT 2',
      title: 'Pending',
      reason: 'Not executed yet.',
    });
    await expect(
      pipeline.requestRollback(pending.id, { requestedBy: 'Dana', reason: 'Undo it please.' }),
    ).rejects.toMatchObject({
      code: 'NOTHING_TO_ROLL_BACK',
    });
  });
});
