import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decideInFile } from '../../src/approvals/human-edit.js';
import { nextApprovalFile } from '../helpers/files.js';
import { startStdioServer, type StdioSession } from '../helpers/mcp.js';
import { openEmbeddedKnex as openDatabase } from '../helpers/postgres.js';
import { createWorkspace, type Workspace } from '../helpers/workspace.js';

/* The same flow on the embedded default: PGlite in the server process, a data directory on disk. */

let workspace: Workspace;
let server: StdioSession;
const seen = new Set<string>();

async function columns(dataDir: string): Promise<string[]> {
  const knex = openDatabase('main_db', { client: 'pglite', path: dataDir });
  try {
    return (await knex('information_schema.columns')
      .where({ table_name: 'customers' })
      .pluck('column_name')) as string[];
  } finally {
    await knex.destroy();
  }
}

beforeAll(async () => {
  workspace = await createWorkspace({
    databases: { main_db: { client: 'pglite', path: 'pgdata' } },
    environments: { production: { databases: ['main_db'] } },
  });
  const dataDir = path.join(workspace.dir, 'pgdata');
  const knex = openDatabase('main_db', { client: 'pglite', path: dataDir });
  await knex.schema.createTable('customers', (t) => {
    t.increments('id');
    t.text('name');
  });
  await knex('customers').insert([{ name: 'a' }]);
  await knex.destroy();
  server = await startStdioServer(workspace.configPath);
});

afterAll(async () => {
  await server?.close();
});

describe('the embedded PGlite database', () => {
  it('runs the approved reference migration, dry runs without changes, and refuses after rejection', async () => {
    const rehearsal = server.call('execute_migration', {
      environment: 'production',
      database: 'main_db',
      sql: 'ALTER TABLE customers ADD COLUMN rehearsal int',
      dry_run: true,
      title: 'Rehearse',
      reason: 'Dry run on the embedded database.',
    });
    await decideInFile(await nextApprovalFile(workspace.config.approvalsDir, seen), {
      status: 'APPROVED',
      decidedBy: 'Dana',
    });
    expect((await rehearsal).outcome).toMatchObject({ status: 'APPROVED', execution: 'rolled_back' });

    const rejected = server.call('execute_migration', {
      environment: 'production',
      database: 'main_db',
      sql: 'DROP TABLE customers',
      title: 'Drop customers',
      reason: 'Testing a rejection on PGlite.',
    });
    await decideInFile(await nextApprovalFile(workspace.config.approvalsDir, seen), {
      status: 'REJECTED',
      decidedBy: 'Dana',
      reason: 'Never drop customers',
    });
    expect((await rejected).outcome).toMatchObject({ status: 'REJECTED', execution: 'not_started' });

    const applied = server.call('execute_migration', {
      environment: 'production',
      database: 'main_db',
      sql: "ALTER TABLE customers ADD COLUMN loyalty_tier VARCHAR(20) DEFAULT 'bronze' NOT NULL;\nCREATE INDEX idx_loyalty_tier ON customers(loyalty_tier);",
      rollback_sql: 'DROP INDEX idx_loyalty_tier; ALTER TABLE customers DROP COLUMN loyalty_tier;',
      title: 'Update Production Database Schema',
      reason: 'The reference migration, on the embedded database.',
      priority: 'critical',
    });
    await decideInFile(
      await nextApprovalFile(workspace.config.approvalsDir, seen),
      { status: 'APPROVED', decidedBy: 'Dana' },
      'in-place',
    );
    expect((await applied).outcome).toMatchObject({ status: 'APPROVED', execution: 'succeeded' });

    // backup_before on the embedded database: copies inside it, taken in the migration's transaction.
    const purge = server.call('execute_migration', {
      environment: 'production',
      database: 'main_db',
      sql: 'DELETE FROM customers WHERE id > 0',
      backup_before: true,
      title: 'Purge customers',
      reason: 'Deleting rows, with a backup first.',
    });
    await decideInFile(await nextApprovalFile(workspace.config.approvalsDir, seen), {
      status: 'APPROVED',
      decidedBy: 'Dana',
    });
    const purged = (await purge).outcome;
    expect(purged).toMatchObject({
      execution: 'succeeded',
      result: { backup: { method: 'table_copy', tables: ['customers'] } },
    });
    expect(purged.findings.map((f) => f.code)).toEqual([]);

    // A second process on the same embedded database is refused instead of corrupting it.
    const second = await startStdioServer(workspace.configPath);
    const refused = await second.call('execute_migration', {
      environment: 'production',
      database: 'main_db',
      sql: 'SELECT 1',
      title: 'Second process',
      reason: 'PGlite cannot be shared between processes.',
    });
    expect(refused.outcome).toMatchObject({ status: 'REFUSED', error: { code: 'DATABASE_LOCKED' } });
    await second.close();

    await server.close();
    const after = await columns(path.join(workspace.dir, 'pgdata'));
    expect(after).toContain('loyalty_tier');
    expect(after).not.toContain('rehearsal');
    expect(after).toContain('id');
    const knex = openDatabase('main_db', { client: 'pglite', path: path.join(workspace.dir, 'pgdata') });
    try {
      const location = purged.result?.backup?.location ?? '';
      expect(await knex('customers').count('* as n')).toEqual([{ n: 0 }]);
      const restored = await knex.raw(`select name from ${location} order by id`);
      expect(restored.rows).toEqual([{ name: 'a' }]);
    } finally {
      await knex.destroy();
    }
  });
});
