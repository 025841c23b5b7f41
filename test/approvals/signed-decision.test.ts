import { execFileSync } from 'node:child_process';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decideInFile } from '../../src/approvals/human-edit.js';
import { canonicalMessage, signMessage, type SignedDecision } from '../../src/approvals/signature.js';
import type { ApprovalRequest } from '../../src/approvals/request.js';
import { decideCommand, type Output } from '../../src/commands.js';
import { silentLogger } from '../helpers/log.js';
import { Pipeline } from '../../src/pipeline.js';
import { waitForFileText } from '../helpers/files.js';
import {
  columnsOf,
  connectTestDatabase,
  uniqueName,
  TEST_DATABASE_ENV,
  TEST_DATABASE_URL,
} from '../helpers/postgres.js';
import { createWorkspace, type Workspace } from '../helpers/workspace.js';

/*
 * Signed decisions through the real gate, the real executor and the real Postgres, with keys made by
 * ssh-keygen. The agent can write every file the server can: a name in decided_by, a signature made
 * with another key or for another request, a decision written straight into the state directory.
 * None of them runs anything.
 */

const table = uniqueName('signed');
const ledgerSchema = uniqueName('gate_signed');
const silent: Output = { json: false, color: false, write: () => undefined };

let knex: Knex;
let workspace: Workspace;
let pipeline: Pipeline;
const keys = { dana: '', sam: '', eve: '' };

function keygen(dir: string, name: string, type: string): string {
  const file = path.join(dir, `${name}_key`);
  execFileSync('ssh-keygen', ['-q', '-t', type, '-N', '', '-C', name, '-f', file]);
  return file;
}

const env = {
  ...TEST_DATABASE_ENV,
  TEST_CRITICAL_DB_URL: TEST_DATABASE_URL,
  TEST_STRICT_DB_URL: TEST_DATABASE_URL,
};

beforeAll(async () => {
  knex = await connectTestDatabase();
  await knex.schema.createTable(table, (t) => t.increments('id'));
  workspace = await createWorkspace({
    ledger_schema: ledgerSchema,
    // The test database once for each environment (a database belongs to one).
    databases: {
      main_db: { client: 'pg', connection_env: 'TEST_MAIN_DB_URL' },
      critical_db: { client: 'pg', connection_env: 'TEST_CRITICAL_DB_URL' },
      strict_db: { client: 'pg', connection_env: 'TEST_STRICT_DB_URL' },
      staging_db: { client: 'pg', connection_env: 'TEST_STAGING_DB_URL' },
    },
    environments: {
      production: { databases: ['main_db'], allowed_signers: 'allowed_signers' },
      // Every ALTER here carries LOCK_TIMEOUT_ENFORCED: the policy turns it into two approvers.
      critical: {
        databases: ['critical_db'],
        allowed_signers: 'allowed_signers',
        risk_policy: { LOCK_TIMEOUT_ENFORCED: 'two_approvers' },
      },
      strict: {
        databases: ['strict_db'],
        allowed_signers: 'strict_signers',
        revoked_keys: 'revoked_keys',
      },
      staging: { databases: ['staging_db'] },
    },
  });
  keys.dana = keygen(workspace.dir, 'dana', 'ed25519');
  keys.sam = keygen(workspace.dir, 'sam', 'ecdsa');
  keys.eve = keygen(workspace.dir, 'eve', 'ed25519');
  const pub = async (file: string) => (await readFile(`${file}.pub`, 'utf8')).trim();
  await writeFile(
    path.join(workspace.dir, 'allowed_signers'),
    `dana@example.com ${await pub(keys.dana)}\nsam@example.com ${await pub(keys.sam)}\n`,
    { mode: 0o644 },
  );
  // strict: eve's key expired in 2020, sam's key is revoked.
  await writeFile(
    path.join(workspace.dir, 'strict_signers'),
    `dana@example.com ${await pub(keys.dana)}\nsam@example.com ${await pub(keys.sam)}\n` +
      `old@example.com valid-before="20200101" ${await pub(keys.eve)}\n`,
    { mode: 0o644 },
  );
  await writeFile(path.join(workspace.dir, 'revoked_keys'), `${await pub(keys.sam)}\n`, { mode: 0o644 });
  pipeline = await Pipeline.open(workspace.config, {
    log: silentLogger,
    env,
    transport: 'http',
  });
});

afterAll(async () => {
  await pipeline?.close();
  await knex.schema.dropTableIfExists(table);
  await knex.raw('drop schema if exists ?? cascade', [ledgerSchema]);
  await knex.destroy();
});

let serial = 0;
async function request(environment = 'production'): Promise<{ request: ApprovalRequest; column: string }> {
  serial += 1;
  const column = `c_${serial}`;
  const { request: stored } = await pipeline.submit({
    environment,
    database: environment === 'production' ? 'main_db' : `${environment}_db`,
    sql: `ALTER TABLE ${table} ADD COLUMN ${column} int`,
    title: `Signed case ${serial}`,
    reason: 'Proving which decisions count in a signed environment.',
    priority: 'high',
  });
  return { request: stored, column };
}

function message(stored: ApprovalRequest, fields: Partial<SignedDecision> = {}): string {
  return canonicalMessage({
    id: stored.id,
    requestHash: stored.request_hash,
    installation: pipeline.installation,
    status: 'APPROVED',
    role: 'decided_by',
    principal: 'dana@example.com',
    ...fields,
  });
}

async function refusedWith(stored: ApprovalRequest, code: string, column: string): Promise<void> {
  const file = pipeline.filePath(stored.id);
  await waitForFileText(file, (text) => text.includes(`gate_error: "${code}:`));
  const status = await pipeline.status(stored.id);
  expect(status.problem?.code).toBe(code);
  expect(status.decision).toBeNull();
  expect(await columnsOf(knex, table)).not.toContain(column);
}

describe('security: decisions the agent cannot forge', () => {
  it('the file tells the reviewer how to sign, with the exact message of this request', async () => {
    const { request: stored } = await request();
    const text = await readFile(pipeline.filePath(stored.id), 'utf8');
    expect(text).toContain('**Signed decisions required.**');
    expect(text).toContain(`'id: ${stored.id}' 'request_hash: ${stored.request_hash}'`);
    expect(text).toContain('ssh-keygen -Y sign -n approval-gate');
    expect(text).toContain('signature: ""');
  });

  it('refuses an approval with a name and no signature (SIGNATURE_MISSING)', async () => {
    const { request: stored, column } = await request();
    await decideInFile(pipeline.filePath(stored.id), { status: 'APPROVED', decidedBy: 'dana@example.com' });
    await refusedWith(stored, 'SIGNATURE_MISSING', column);
  });

  it('refuses a signature by a key not in allowed_signers (SIGNATURE_UNKNOWN_KEY)', async () => {
    const { request: stored, column } = await request();
    const signature = await signMessage(message(stored), { keyFile: keys.eve });
    await decideInFile(pipeline.filePath(stored.id), {
      status: 'APPROVED',
      decidedBy: 'dana@example.com',
      signature,
    });
    await refusedWith(stored, 'SIGNATURE_UNKNOWN_KEY', column);
  });

  it('refuses a key listed for another principal (SIGNATURE_WRONG_PRINCIPAL)', async () => {
    const { request: stored, column } = await request();
    const signature = await signMessage(message(stored, { principal: 'sam@example.com' }), {
      keyFile: keys.dana,
    });
    await decideInFile(pipeline.filePath(stored.id), {
      status: 'APPROVED',
      decidedBy: 'sam@example.com',
      signature,
    });
    await refusedWith(stored, 'SIGNATURE_WRONG_PRINCIPAL', column);
  });

  it('refuses a signature made for a twin request with identical SQL (SIGNATURE_MISMATCH)', async () => {
    const { request: first } = await request();
    const { request: twin, column } = await request();
    const signature = await signMessage(message(first), { keyFile: keys.dana });
    await decideInFile(pipeline.filePath(twin.id), {
      status: 'APPROVED',
      decidedBy: 'dana@example.com',
      signature,
    });
    await refusedWith(twin, 'SIGNATURE_MISMATCH', column);
  });

  it('refuses a signature for REJECTED pasted under APPROVED (SIGNATURE_MISMATCH)', async () => {
    const { request: stored, column } = await request();
    const signature = await signMessage(message(stored, { status: 'REJECTED' }), { keyFile: keys.dana });
    await decideInFile(pipeline.filePath(stored.id), {
      status: 'APPROVED',
      decidedBy: 'dana@example.com',
      signature,
    });
    await refusedWith(stored, 'SIGNATURE_MISMATCH', column);
  });

  const malformed = '-----BEGIN SSH SIGNATURE-----\nbm90IGEgc2lnbmF0dXJl\n-----END SSH SIGNATURE-----\n';
  const cases: Array<[string, string, () => Promise<{ decidedBy: string; signature: string }>]> = [
    [
      'text that is not an SSH signature',
      'SIGNATURE_MALFORMED',
      async () => ({ decidedBy: 'dana@example.com', signature: malformed }),
    ],
    [
      'a signature made for another namespace (git)',
      'SIGNATURE_WRONG_NAMESPACE',
      async () => ({
        decidedBy: 'dana@example.com',
        signature: execFileSync('ssh-keygen', ['-q', '-Y', 'sign', '-n', 'git', '-f', keys.dana], {
          input: 'anything',
          encoding: 'utf8',
        }),
      }),
    ],
    [
      'a key outside its validity window',
      'SIGNATURE_KEY_NOT_VALID',
      async () => ({ decidedBy: 'old@example.com', signature: '' }),
    ],
    ['a revoked key', 'SIGNATURE_REVOKED', async () => ({ decidedBy: 'sam@example.com', signature: '' })],
  ];
  it.each(cases)('refuses %s through the gate (%s)', async (_what, code, make) => {
    const { request: stored, column } = await request('strict');
    const made = await make();
    const key =
      made.decidedBy === 'old@example.com'
        ? keys.eve
        : made.decidedBy === 'sam@example.com'
          ? keys.sam
          : keys.dana;
    const signature =
      made.signature !== ''
        ? made.signature
        : await signMessage(message(stored, { principal: made.decidedBy }), { keyFile: key });
    await decideInFile(pipeline.filePath(stored.id), {
      status: 'APPROVED',
      decidedBy: made.decidedBy,
      signature,
    });
    await refusedWith(stored, code, column);
  });

  it('the CLI signs and edits in one step; it runs, and the Outcome and audit name the key', async () => {
    const { request: stored, column } = await request();
    const code = await decideCommand(
      pipeline,
      stored.id,
      { status: 'APPROVED', as: 'dana@example.com', key: keys.dana },
      { waitSeconds: 15, style: 'rename' },
      silent,
    );
    expect(code).toBe(0);
    const final = await pipeline.waitForFinal(stored.id, { timeoutMs: 15_000, tickMs: 50 });
    expect(final.execution).toBe('succeeded');
    expect(await columnsOf(knex, table)).toContain(column);
    const fingerprint = execFileSync('ssh-keygen', ['-lf', `${keys.dana}.pub`], { encoding: 'utf8' }).split(
      ' ',
    )[1];
    const text = await waitForFileText(pipeline.filePath(stored.id), (t) => t.includes('Executed by'));
    expect(text).toContain(`Signed (decided_by) by dana@example.com with ssh-ed25519 key ${fingerprint}`);
    const audit = await readFile(path.join(workspace.config.stateDir, 'audit.jsonl'), 'utf8');
    expect(audit).toContain(`signed (decided_by) by dana@example.com, key ${fingerprint}`);
  });

  it('records a signed rejection made with the CLI', async () => {
    const { request: stored, column } = await request();
    await decideCommand(
      pipeline,
      stored.id,
      { status: 'REJECTED', as: 'sam@example.com', reason: 'Use CONCURRENTLY', key: keys.sam },
      { waitSeconds: 15, style: 'rename' },
      silent,
    );
    const final = await pipeline.waitForFinal(stored.id, { timeoutMs: 15_000, tickMs: 50 });
    expect(final.decision?.status).toBe('REJECTED');
    expect(final.decision?.signatures.map((s) => s.principal)).toEqual(['sam@example.com']);
    expect(await columnsOf(knex, table)).not.toContain(column);
  });

  it('a decision written straight into the state directory never runs, signed for another request or not', async () => {
    const { request: executed } = await request();
    await decideCommand(
      pipeline,
      executed.id,
      { status: 'APPROVED', as: 'dana@example.com', key: keys.dana },
      { waitSeconds: 15, style: 'rename' },
      silent,
    );
    const good = (await pipeline.waitForFinal(executed.id, { timeoutMs: 15_000, tickMs: 50 })).decision;
    for (const signatures of [[], good?.signatures ?? []]) {
      const { request: target, column } = await request();
      const forged = {
        ...good,
        approval_id: target.id,
        request_hash: target.request_hash,
        signatures,
      };
      await writeFile(
        path.join(workspace.config.stateDir, 'decisions', `${target.id}.json`),
        JSON.stringify(forged),
      );
      // Any save of its file makes the gate look again and find the recorded decision.
      const file = pipeline.filePath(target.id);
      await writeFile(file, `${await readFile(file, 'utf8')}\n`);
      const final = await pipeline.waitForFinal(target.id, { timeoutMs: 15_000, tickMs: 50 });
      expect(final.final).toBe(true);
      expect(final.execution).toBe('failed');
      expect(final.executionError).toMatch(/not signed as required/);
      expect(await columnsOf(knex, table)).not.toContain(column);
      // Recorded, not only in memory: after a restart it is still final, never "running".
      const restarted = await Pipeline.open(workspace.config, {
        log: silentLogger,
        env,
        transport: 'http',
      });
      try {
        const again = await restarted.status(target.id);
        expect(again.final).toBe(true);
        expect(again.execution).toBe('failed');
      } finally {
        await restarted.close();
      }
    }
  });

  it('two approvers each sign for their own role; one signature alone runs nothing', async () => {
    const { request: stored, column } = await request('critical');
    expect(stored.approvals_required).toBe(2);
    const approve = (as: string, key: string) =>
      decideCommand(
        pipeline,
        stored.id,
        { status: 'APPROVED', as, key },
        { waitSeconds: 0, style: 'rename' },
        silent,
      );
    await approve('dana@example.com', keys.dana);
    await waitForFileText(pipeline.filePath(stored.id), (text) => text.includes('SECOND_APPROVER_MISSING'));
    expect(await columnsOf(knex, table)).not.toContain(column);
    await approve('sam@example.com', keys.sam);
    const final = await pipeline.waitForFinal(stored.id, { timeoutMs: 15_000, tickMs: 50 });
    expect(final.execution).toBe('succeeded');
    expect(final.decision?.signatures.map((s) => [s.role, s.principal])).toEqual([
      ['decided_by', 'dana@example.com'],
      ['second_approver', 'sam@example.com'],
    ]);
  });

  it('environments without allowed_signers are unchanged, and their files say decisions are not authenticated', async () => {
    const { request: stored, column } = await request('staging');
    const file = pipeline.filePath(stored.id);
    expect(await readFile(file, 'utf8')).toContain('**Not authenticated:**');
    await decideInFile(file, { status: 'APPROVED', decidedBy: 'Dana Reyes' });
    expect((await pipeline.waitForFinal(stored.id, { timeoutMs: 15_000, tickMs: 50 })).execution).toBe(
      'succeeded',
    );
    expect(await columnsOf(knex, table)).toContain(column);
  });
});

describe('security: the server does not start on trust anchors the agent could edit', () => {
  it('refuses a config file others can write, with the fix', async () => {
    await chmod(workspace.configPath, 0o666);
    try {
      await expect(
        Pipeline.open(workspace.config, { log: silentLogger, transport: 'http' }),
      ).rejects.toMatchObject({
        code: 'TRUST_ANCHOR_WRITABLE',
        message: expect.stringContaining('chmod 644'),
      });
    } finally {
      await chmod(workspace.configPath, 0o644);
    }
  });

  it('refuses to run over stdio as root, where the agent would be root too', async () => {
    if (process.getuid?.() !== 0) return;
    await expect(
      Pipeline.open(workspace.config, { log: silentLogger, transport: 'stdio' }),
    ).rejects.toMatchObject({ code: 'TRUST_ANCHOR_WRITABLE' });
  });

  it('refuses a missing allowed_signers file', async () => {
    const missing = {
      ...workspace.config,
      environments: {
        production: {
          ...workspace.config.environments.production,
          allowed_signers: '/nonexistent/allowed_signers',
        },
      },
    } as typeof workspace.config;
    await expect(Pipeline.open(missing, { log: silentLogger, transport: 'http' })).rejects.toMatchObject({
      code: 'ALLOWED_SIGNERS_MISSING',
    });
  });
});
