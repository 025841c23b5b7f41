import { copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import { connect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import path from 'node:path';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from './helpers/log.js';
import { Pipeline } from '../src/pipeline.js';
import { outcomeOfRefusal } from '../src/server/outcome.js';
import { readdir, readFile, stat } from 'node:fs/promises';
import { updateFrontMatter } from '../src/approvals/frontmatter.js';
import { decideInFile, saveAs } from '../src/approvals/human-edit.js';
import { waitForFileText } from './helpers/files.js';
import {
  columnsOf,
  connectTestDatabase,
  TEST_DATABASE_URL,
  uniqueName,
  TEST_DATABASE_ENV,
} from './helpers/postgres.js';
import { createWorkspace, type Workspace } from './helpers/workspace.js';

let knex: Knex;
let workspace: Workspace;
let pipeline: Pipeline;
const ledgerSchema = uniqueName('gate_pipeline');
const replayTable = uniqueName('replay');

beforeAll(async () => {
  knex = await connectTestDatabase();
  workspace = await createWorkspace({
    ledger_schema: ledgerSchema,
    migrations_dir: 'db/migrations',
    databases: {
      main_db: { client: 'pg', connection_env: 'TEST_MAIN_DB_URL' },
      qa_db: { client: 'pg', connection_env: 'TEST_QA_DB_URL' },
    },
    environments: {
      staging: { databases: ['main_db'] },
      qa: {
        databases: ['qa_db'],
        require_approval: 'not_for_dry_runs',
        risk_policy: { DROP_TABLE: 'refuse', TRUNCATE: 'two_approvers' },
      },
    },
  });
  await mkdir(path.join(workspace.dir, 'db/migrations'), { recursive: true });
  await writeFile(path.join(workspace.dir, 'secret.sql'), 'SELECT 1');
  await symlink(path.join(workspace.dir, 'secret.sql'), path.join(workspace.dir, 'db/migrations/escape.sql'));
  pipeline = await Pipeline.open(workspace.config, {
    log: silentLogger,
    env: { TEST_MAIN_DB_URL: TEST_DATABASE_URL, TEST_QA_DB_URL: TEST_DATABASE_URL },
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
  /** A request that added a column and recorded the SQL that drops it, approved and executed. */
  async function executedWithRollback(table: string) {
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
    return request;
  }

  it('two concurrent rollback requests of one execution make exactly one new request', async () => {
    const table = uniqueName('rollback_race');
    await knex.schema.createTable(table, (t) => t.increments('id'));
    try {
      const request = await executedWithRollback(table);
      const asks = await Promise.allSettled(
        ['Sam Okafor', 'Lee Park', 'Ana Ruiz'].map((requestedBy) =>
          pipeline.requestRollback(request.id, { requestedBy, reason: 'Roll it back.' }),
        ),
      );
      expect(asks.filter((a) => a.status === 'fulfilled')).toHaveLength(1);
      for (const ask of asks.filter((a) => a.status === 'rejected')) {
        expect((ask as PromiseRejectedResult).reason).toMatchObject({ code: 'ROLLBACK_ALREADY_REQUESTED' });
      }
      const rollbacks = (await pipeline.list()).filter((s) => s.title.startsWith(`Roll back ${request.id}`));
      expect(rollbacks).toHaveLength(1);
    } finally {
      await knex.schema.dropTableIfExists(table);
    }
  });

  it('runs the recorded rollback SQL only through a new approval, never approved by its requester', async () => {
    const table = uniqueName('rollback');
    await knex.schema.createTable(table, (t) => t.increments('id'));
    try {
      const request = await executedWithRollback(table);
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

describe('environment policy', () => {
  it('refuses a statement kind the environment forbids, before anything is written', async () => {
    await expect(
      pipeline.submit({
        environment: 'qa',
        database: 'qa_db',
        sql: 'DROP TABLE IF EXISTS nothing_here',
        title: 'Drop',
        reason: 'Policy says no.',
      }),
    ).rejects.toMatchObject({ code: 'POLICY_REFUSED' });
  });

  it('requires two different approvers where the policy says so', async () => {
    const table = uniqueName('two');
    await knex.schema.createTable(table, (t) => t.increments('id'));
    try {
      await knex.raw('insert into ?? select from generate_series(1, 2)', [table]);
      const { request } = await pipeline.submit({
        environment: 'qa',
        database: 'qa_db',
        sql: `TRUNCATE ${table}`,
        title: 'Truncate',
        reason: 'Needs two people.',
      });
      expect(request.approvals_required).toBe(2);
      const file = pipeline.filePath(request.id);
      expect(await readFile(file, 'utf8')).toContain('second_approver: ""');
      const problem = async () => {
        await new Promise((resolve) => setTimeout(resolve, 300));
        return (await pipeline.status(request.id)).problem?.code;
      };
      await decideInFile(file, { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      expect(await problem()).toBe('SECOND_APPROVER_MISSING');
      await saveAs(
        file,
        updateFrontMatter(await readFile(file, 'utf8'), { second_approver: 'dana reyes' }),
        'rename',
      );
      expect(await problem()).toBe('SECOND_APPROVER_SAME');
      expect(await knex(table).count('* as n')).toEqual([{ n: '2' }]);
      await saveAs(
        file,
        updateFrontMatter(await readFile(file, 'utf8'), { second_approver: 'Sam Okafor' }),
        'rename',
      );
      const final = await pipeline.waitForFinal(request.id, { timeoutMs: 10_000, tickMs: 100 });
      expect(final).toMatchObject({
        execution: 'succeeded',
        decision: { decided_by: 'Dana Reyes', second_approver: 'Sam Okafor' },
      });
      expect(await knex(table).count('* as n')).toEqual([{ n: '0' }]);
    } finally {
      await knex.schema.dropTableIfExists(table);
    }
  });

  it('runs dry runs without a human where the environment allows it, and nothing else', async () => {
    const { request } = await pipeline.submit({
      environment: 'qa',
      database: 'qa_db',
      sql: 'SELECT 1',
      dry_run: true,
      title: 'Rehearsal',
      reason: 'Dry runs need no approval in qa.',
    });
    const final = await pipeline.waitForFinal(request.id, { timeoutMs: 10_000, tickMs: 100 });
    expect(final).toMatchObject({
      execution: 'rolled_back',
      decision: { status: 'APPROVED', decided_by: null },
    });
    const { request: real } = await pipeline.submit({
      environment: 'qa',
      database: 'qa_db',
      sql: 'SELECT 1',
      title: 'Real',
      reason: 'This one waits for a human.',
    });
    expect((await pipeline.waitForFinal(real.id, { timeoutMs: 500, tickMs: 100 })).decision).toBeNull();
  });
});

describe('backup_before on the real server', () => {
  it('dumps the touched tables with pg_dump before the migration runs, and records where', async () => {
    const table = uniqueName('backed');
    await knex.schema.createTable(table, (t) => {
      t.increments('id');
      t.text('secret');
    });
    try {
      await knex(table).insert([{ secret: 'a' }, { secret: 'b' }]);
      const { request } = await pipeline.submit({
        environment: 'staging',
        database: 'main_db',
        sql: `ALTER TABLE ${table} DROP COLUMN secret`,
        backup_before: true,
        title: 'Drop a column',
        reason: 'Destructive; back it up first.',
      });
      await decideInFile(pipeline.filePath(request.id), { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      const final = await pipeline.waitForFinal(request.id, { timeoutMs: 20_000, tickMs: 100 });
      expect(final.execution).toBe('succeeded');
      expect(final.result?.backup).toMatchObject({ method: 'pg_dump', tables: [`public.${table}`] });
      const dump = await stat(final.result?.backup?.location ?? '');
      expect(dump.size).toBeGreaterThan(0);
      expect(dump.mode & 0o777).toBe(0o600);
      await waitForFileText(pipeline.filePath(request.id), (text) => text.includes('Backup (pg_dump)'));
    } finally {
      await knex.schema.dropTableIfExists(table);
    }
  });
});

describe('security: a decision and a record are bound to one request', () => {
  const stateDir = () => workspace.config.stateDir;
  const twin = (value: number) => ({
    environment: 'staging',
    database: 'main_db',
    sql: `INSERT INTO ${replayTable} VALUES (${value})`,
    title: 'Twin requests',
    reason: 'Two requests with identical SQL, to prove a decision never moves between them.',
  });
  const rows = async (value: number) =>
    Number((await knex(replayTable).where({ v: value }).count<{ count: string }[]>('* as count'))[0]?.count);

  beforeAll(async () => {
    await knex.schema.createTable(replayTable, (t) => t.integer('v'));
  });
  afterAll(async () => {
    await knex.schema.dropTableIfExists(replayTable);
  });

  it('a decision copied onto a twin request with identical SQL does not run it again', async () => {
    const { request: first } = await pipeline.submit(twin(1));
    const { request: second } = await pipeline.submit(twin(1));
    expect(second.request_hash).toBe(first.request_hash);
    await decideInFile(pipeline.filePath(first.id), { status: 'APPROVED', decidedBy: 'Dana Reyes' });
    expect((await pipeline.waitForFinal(first.id, { timeoutMs: 15_000, tickMs: 50 })).execution).toBe(
      'succeeded',
    );
    // The agent, as the same OS user, copies the recorded decision onto the twin.
    await copyFile(
      path.join(stateDir(), 'decisions', `${first.id}.json`),
      path.join(stateDir(), 'decisions', `${second.id}.json`),
    );
    await pipeline.problemOf(second.id);
    await expect(pipeline.status(second.id)).rejects.toMatchObject({ code: 'DECISION_NOT_BOUND' });
    // The gate tells the human in the file, and nothing ran a second time.
    await waitForFileText(pipeline.filePath(second.id), (text) => text.includes('DECISION_NOT_BOUND'));
    expect(await rows(1)).toBe(1);
  });

  it('a record edited after the request (hash kept) never runs, and the server still starts', async () => {
    const { request } = await pipeline.submit(twin(7));
    const recordFile = path.join(stateDir(), 'records', `${request.id}.json`);
    const record = JSON.parse(await readFile(recordFile, 'utf8')) as { command: { sql: string } };
    record.command.sql = `INSERT INTO ${replayTable} VALUES (666)`;
    await writeFile(recordFile, JSON.stringify(record));
    // The file is forged to match, so the file-versus-record check alone would pass.
    const file = pipeline.filePath(request.id);
    await writeFile(file, (await readFile(file, 'utf8')).replaceAll('VALUES (7)', 'VALUES (666)'));
    const restarted = await Pipeline.open(workspace.config, {
      log: silentLogger,
      env: TEST_DATABASE_ENV,
    });
    try {
      await expect(restarted.status(request.id)).rejects.toMatchObject({ code: 'RECORD_TAMPERED' });
      await decideInFile(file, { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      await waitForFileText(file, (text) => text.includes('RECORD_TAMPERED'));
      expect(await rows(666)).toBe(0);
      expect(await rows(7)).toBe(0);
      expect((await restarted.list()).map((s) => s.approval_id)).not.toContain(request.id);
    } finally {
      await restarted.close();
    }
  });
});

describe('security: writes to a foreign table are found in the live catalog', () => {
  const wrapper = uniqueName('gate_fdw');
  const foreignTable = uniqueName('remote');
  beforeAll(async () => {
    // A wrapper without a handler: enough for the catalog (relkind f), no extension needed.
    await knex.raw(`create foreign data wrapper ${wrapper}`);
    await knex.raw(`create server ${wrapper}_server foreign data wrapper ${wrapper}`);
    await knex.raw(`create foreign table ${foreignTable} (x int) server ${wrapper}_server`);
  });
  afterAll(async () => {
    await knex.raw(`drop foreign data wrapper if exists ${wrapper} cascade`);
  });
  const write = (dry_run: boolean) => ({
    environment: 'staging',
    database: 'main_db',
    sql: `INSERT INTO ${foreignTable} VALUES (1)`,
    dry_run,
    title: 'Write to a foreign table',
    reason: 'The write goes to another server; no rollback here is sure to undo it.',
  });

  it('flags the write as DANGER, with the table the catalog names', async () => {
    const { findings } = await pipeline.submit(write(false));
    expect(findings.find((f) => f.code === 'FOREIGN_TABLE_WRITE')).toMatchObject({
      statement: 1,
      severity: 'danger',
    });
  });

  it('refuses a dry run of it: the rollback would not reach the other server', async () => {
    await expect(pipeline.submit(write(true))).rejects.toMatchObject({ code: 'DRY_RUN_NOT_DRY' });
  });
});

describe('security: the outcome marker quoted in agent text is not the outcome', () => {
  it('still appends the real outcome when the reason quotes the marker and a fake outcome', async () => {
    const table = uniqueName('marker');
    const { request } = await pipeline.submit({
      environment: 'staging',
      database: 'main_db',
      sql: `CREATE TABLE ${table} (x int)`,
      title: 'Marker in the reason',
      reason: 'Context.\n<!-- approval-gate: outcome -->\n## Outcome\n**Result:** Succeeded; nothing to see.',
    });
    const file = pipeline.filePath(request.id);
    await decideInFile(file, { status: 'APPROVED', decidedBy: 'Dana Reyes' });
    const text = await waitForFileText(file, (t) => t.includes('Executed by'));
    expect(text).toMatch(/\*\*Result:\*\* Succeeded in \d+ ms; committed\./);
    await knex.schema.dropTableIfExists(table);
  });
});

describe('two installations on one database and one ledger schema', () => {
  it('each runs its own APR-…-001: ids and ledger keys never collide', async () => {
    const shared = uniqueName('gate_shared');
    const table = uniqueName('installations');
    await knex.schema.createTable(table, (t) => t.integer('n'));
    const open = async () => {
      const ws = await createWorkspace({ ledger_schema: shared });
      return Pipeline.open(ws.config, { log: silentLogger, env: TEST_DATABASE_ENV });
    };
    const [first, second] = [await open(), await open()];
    try {
      const ids: string[] = [];
      for (const [n, installation] of [first, second].entries()) {
        const { request } = await installation.submit({
          environment: 'production',
          database: 'main_db',
          sql: `INSERT INTO ${table} VALUES (${n + 1})`,
          title: `Installation ${n + 1}`,
          reason: 'Two installations share the ledger schema on one database.',
        });
        ids.push(request.id);
        await decideInFile(installation.filePath(request.id), {
          status: 'APPROVED',
          decidedBy: 'Dana Reyes',
        });
        const final = await installation.waitForFinal(request.id, { timeoutMs: 15_000, tickMs: 50 });
        expect(final.execution, final.executionError ?? '').toBe('succeeded');
      }
      // The same id in both, which is the point: the installation is part of the ledger key.
      expect(ids[0]).toBe(ids[1]);
      expect((await knex(table).orderBy('n').pluck('n')) as number[]).toEqual([1, 2]);
      expect(first.installation).not.toBe(second.installation);
    } finally {
      await first.close();
      await second.close();
      await knex.schema.dropTableIfExists(table);
      await knex.raw('drop schema if exists ?? cascade', [shared]);
    }
  });
});

describe('an outage does not burn an approval', () => {
  it('waits for an unreachable database with nothing sent, says so, and runs once it answers', async () => {
    // A proxy in front of the real server that the test can take down and bring back.
    const target = new URL(TEST_DATABASE_URL);
    const sockets = new Set<Socket>();
    let up = true;
    const proxy = createNetServer((client) => {
      if (!up) {
        client.destroy();
        return;
      }
      const upstream = connect(Number(target.port || 5432), target.hostname);
      for (const socket of [client, upstream]) {
        sockets.add(socket);
        socket.on('close', () => sockets.delete(socket));
        socket.on('error', () => undefined);
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const port = (proxy.address() as AddressInfo).port;
    const viaProxy = new URL(TEST_DATABASE_URL);
    viaProxy.host = `127.0.0.1:${port}`;
    const table = uniqueName('outage');
    await knex.schema.createTable(table, (t) => t.integer('n'));
    const ws = await createWorkspace({ ledger_schema: uniqueName('gate_outage') });
    const gate = await Pipeline.open(ws.config, {
      log: silentLogger,
      env: { TEST_MAIN_DB_URL: viaProxy.toString() },
    });
    try {
      const { request } = await gate.submit({
        environment: 'production',
        database: 'main_db',
        sql: `INSERT INTO ${table} VALUES (1)`,
        title: 'Insert during an outage',
        reason: 'The database goes away between the request and the approval.',
      });
      up = false;
      for (const socket of sockets) socket.destroy();
      await decideInFile(gate.filePath(request.id), { status: 'APPROVED', decidedBy: 'Dana Reyes' });
      const file = await waitForFileText(
        gate.filePath(request.id),
        (text) => text.includes('waiting for the database'),
        30_000,
      );
      expect(file).toContain('execution: "not_started"');
      const waiting = await gate.status(request.id);
      expect(waiting.final).toBe(false);
      expect(waiting.progress ?? '').toContain('nothing was sent');
      up = true;
      const final = await gate.waitForFinal(request.id, { timeoutMs: 40_000, tickMs: 100 });
      expect(final.execution).toBe('succeeded');
      expect((await knex(table).pluck('n')) as number[]).toEqual([1]);
    } finally {
      await gate.close();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => proxy.close(resolve));
      await knex.schema.dropTableIfExists(table);
      await knex.raw('drop schema if exists ?? cascade', [ws.config.ledger_schema]);
    }
  }, 90_000);

  it('reports an unreachable database at request time as a problem of the server, not of the request', async () => {
    const ws = await createWorkspace({ ledger_schema: uniqueName('gate_down') });
    const gate = await Pipeline.open(ws.config, {
      log: silentLogger,
      env: { TEST_MAIN_DB_URL: 'postgres://postgres@127.0.0.1:1/none' },
    });
    try {
      const refused = await gate
        .submit({
          environment: 'production',
          database: 'main_db',
          sql: 'SELECT 1',
          title: 'Nobody home',
          reason: 'The database is not there at request time.',
        })
        .catch((error: unknown) => outcomeOfRefusal(error));
      expect(refused).toMatchObject({ status: 'REFUSED' });
      const outcome = refused as ReturnType<typeof outcomeOfRefusal>;
      expect(['DATABASE_UNREACHABLE', 'LEDGER_UNAVAILABLE']).toContain(outcome.error?.code);
      expect(outcome.next_step).toContain('not of your request');
    } finally {
      await gate.close();
    }
  }, 30_000);
});

describe('a request that is not one', () => {
  it('is refused with REQUEST_INVALID, naming each field, and writes nothing', async () => {
    const before = await readdir(workspace.config.approvalsDir);
    await expect(
      pipeline.submit({
        environment: 'staging',
        database: 'main_db',
        title: 'No SQL',
        priority: 'urgent',
      } as unknown as Parameters<Pipeline['submit']>[0]),
    ).rejects.toMatchObject({ code: 'REQUEST_INVALID', message: /sql: .*priority: /s });
    expect(await readdir(workspace.config.approvalsDir)).toEqual(before);
  });
});

describe('answers in the MCP client', () => {
  it('are refused where the environment does not take them, and the file stays as it was', async () => {
    const { request } = await pipeline.submit({
      environment: 'staging',
      database: 'main_db',
      sql: 'SELECT 1',
      title: 'No answers in the client here',
      reason: 'staging has no approve_in_client.',
    });
    const file = pipeline.filePath(request.id);
    const before = await readFile(file, 'utf8');
    await expect(
      pipeline.answerInClient(request.id, { status: 'APPROVED' }, 'Some Client 1.0'),
    ).rejects.toMatchObject({
      code: 'CLIENT_ANSWER_REFUSED',
      message: /does not take decisions in the MCP client/,
    });
    expect(await readFile(file, 'utf8')).toBe(before);
    expect((await pipeline.status(request.id)).decision).toBeNull();
    await pipeline.cancel(request.id, { by: 'agent', reason: 'done' });
  });
});

describe('change notifications', () => {
  it('tells subscribers once per change, not twice', async () => {
    const { request } = await pipeline.submit({
      environment: 'staging',
      database: 'main_db',
      sql: 'SELECT 1',
      title: 'Counting notifications',
      reason: 'One refused edit is one change.',
    });
    let seen = 0;
    const stop = pipeline.onChange((id) => {
      if (id === request.id) seen += 1;
    });
    try {
      const file = pipeline.filePath(request.id);
      await saveAs(file, updateFrontMatter(await readFile(file, 'utf8'), { status: 'APROVED' }), 'rename');
      await waitForFileText(file, (text) => text.includes('STATUS_INVALID'));
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(seen).toBe(1);
    } finally {
      stop();
      await pipeline.cancel(request.id, { by: 'agent', reason: 'done counting' });
    }
  });
});

describe('list', () => {
  it('reports executions from the server, not from the editable file', async () => {
    const { request } = await pipeline.submit({
      environment: 'staging',
      database: 'main_db',
      sql: 'SELECT 1',
      title: 'A pending request whose file claims success',
      reason: 'Anyone can write execution: succeeded into the file.',
    });
    const file = pipeline.filePath(request.id);
    await saveAs(file, updateFrontMatter(await readFile(file, 'utf8'), { execution: 'succeeded' }), 'rename');
    const listed = (await pipeline.list()).find((s) => s.approval_id === request.id);
    expect(listed?.execution).toBe('not_started');
    await pipeline.cancel(request.id, { by: 'agent', reason: 'done' });
  });
});
