import { mkdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../src/log.js';
import { Pipeline } from '../src/pipeline.js';
import { connectTestDatabase, TEST_DATABASE_URL, uniqueName } from './helpers/postgres.js';
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
