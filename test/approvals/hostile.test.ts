import { mkdir, readdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Knex } from 'knex';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { updateFrontMatter, type FrontMatterValue } from '../../src/approvals/frontmatter.js';
import { saveAs } from '../../src/approvals/human-edit.js';
import { RESULT_MARKER } from '../../src/approvals/render.js';
import { hashCommand, type ApprovalRequest } from '../../src/approvals/request.js';
import { silentLogger } from '../helpers/log.js';
import { Pipeline, type ApprovalStatus } from '../../src/pipeline.js';
import { columnsOf, connectTestDatabase, uniqueName, TEST_DATABASE_ENV } from '../helpers/postgres.js';
import { createWorkspace, type Workspace } from '../helpers/workspace.js';

/*
 * A corpus of hostile and sloppy edits (test/fixtures/hostile/*.yaml), each applied to a fresh
 * request and run through the real gate against the real Postgres server. For every one: its own
 * error code, nothing executed, the server's record of the request intact. The benign corpus proves
 * the same harness does see an execution when there should be one.
 */

interface Edit {
  front_matter?: Record<string, FrontMatterValue>;
  remove?: string[];
  replace?: { from: string; to: string; occurrence?: number }[];
  raw?: string;
}

interface Fixture extends Edit {
  category: string;
  expect: string;
  environment?: 'production' | 'staging';
  dry_run?: boolean;
  after_expiry?: boolean;
  foreign?: boolean;
  first?: Edit;
  action?:
    | 'invalid-utf8'
    | 'oversize'
    | 'symlink'
    | 'directory'
    | 'delete'
    | 'rename-away'
    | 'bom-crlf'
    | 'delete-and-recreate';
}

const FIXTURES = path.join(import.meta.dirname, '../fixtures');
const VOID_CODES = new Set(['COMMAND_TAMPERED', 'PREVIEW_TAMPERED', 'TARGET_TAMPERED']);
const FOREIGN_ID = 'APR-20991231-999';

async function loadCorpus(dir: string): Promise<[string, Fixture][]> {
  const names = (await readdir(path.join(FIXTURES, dir))).filter((n) => n.endsWith('.yaml')).sort();
  return Promise.all(
    names.map(
      async (name) =>
        [name, parseYaml(await readFile(path.join(FIXTURES, dir, name), 'utf8')) as Fixture] as [
          string,
          Fixture,
        ],
    ),
  );
}

function replaceOccurrence(text: string, from: string, to: string, occurrence = 1): string {
  let index = -1;
  for (let i = 0; i < occurrence; i += 1) {
    index = text.indexOf(from, index + 1);
    if (index === -1) throw new Error(`fixture: "${from}" occurs fewer than ${occurrence} times`);
  }
  return text.slice(0, index) + to + text.slice(index + from.length);
}

function applyEdit(text: string, edit: Edit, request: ApprovalRequest): string {
  if (edit.raw !== undefined) {
    return edit.raw.replaceAll('{{ID}}', request.id).replaceAll('{{HASH}}', request.request_hash);
  }
  let edited = text;
  for (const r of edit.replace ?? []) edited = replaceOccurrence(edited, r.from, r.to, r.occurrence);
  const fields: Record<string, FrontMatterValue> = { ...edit.front_matter };
  for (const key of edit.remove ?? []) fields[key] = undefined;
  return Object.keys(fields).length > 0 ? updateFrontMatter(edited, fields) : edited;
}

async function until(what: string, probe: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await probe()) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

let knex: Knex;
let workspace: Workspace;
let pipeline: Pipeline;
const table = uniqueName('hostile');
const ledgerSchema = uniqueName('gate_hostile');

beforeAll(async () => {
  knex = await connectTestDatabase();
  await knex.schema.createTable(table, (t) => t.increments('id'));
  workspace = await createWorkspace({
    ledger_schema: ledgerSchema,
    environments: {
      production: { databases: ['main_db'], approvers: ['Dana Reyes', 'Sam Okafor'] },
      staging: { databases: ['staging_db'] },
    },
    expiry_minutes: { critical: 15, high: 60, medium: 240, low: 0.05 },
    gate: { recheck_interval_ms: 500, watch_files: true },
  });
  pipeline = await Pipeline.open(workspace.config, {
    log: silentLogger,
    env: TEST_DATABASE_ENV,
  });
});

afterAll(async () => {
  await pipeline?.close();
  await knex.schema.dropTableIfExists(table);
  await knex.raw('drop schema if exists ?? cascade', [ledgerSchema]);
  await knex.destroy();
});

interface CaseResult {
  readonly request: ApprovalRequest;
  readonly column: string;
  readonly status: ApprovalStatus;
}

async function runCase(index: number, fixture: Fixture): Promise<CaseResult> {
  const column = `c_${index}`;
  const { request } = await pipeline.submit({
    environment: fixture.environment ?? 'production',
    database: (fixture.environment ?? 'production') === 'production' ? 'main_db' : 'staging_db',
    sql: `ALTER TABLE ${table} ADD COLUMN ${column} int`,
    rollback_sql: `ALTER TABLE ${table} DROP COLUMN ${column}`,
    dry_run: fixture.dry_run ?? false,
    title: `Hostile case ${index}`,
    reason: 'Proving that this edit can never execute anything.',
    priority: fixture.after_expiry ? 'low' : 'high',
  });
  const file = pipeline.filePath(request.id);
  const style = index % 2 === 0 ? 'in-place' : 'rename';
  const original = await readFile(file, 'utf8');

  if (fixture.first) {
    await saveAs(file, applyEdit(original, fixture.first, request), style);
    await until('the first decision', async () => (await pipeline.status(request.id)).decision !== null);
    await until('its outcome in the file', async () =>
      (await readFile(file, 'utf8')).includes(RESULT_MARKER),
    );
  }
  if (fixture.after_expiry) {
    await until('expiry', async () => (await pipeline.status(request.id)).decision?.status === 'EXPIRED');
    // A human who edits after expiry edits the file the server has already marked EXPIRED.
    await until('EXPIRED in the file', async () => (await readFile(file, 'utf8')).includes(RESULT_MARKER));
  }
  const current = await readFile(file, 'utf8');
  const edited = applyEdit(current, fixture, request);
  const outside = path.join(workspace.dir, `outside-${index}.md`);
  switch (fixture.action) {
    case 'invalid-utf8':
      await writeFile(
        file,
        Buffer.concat([Buffer.from(edited.slice(0, 40)), Buffer.from([0xc3, 0x28, 0xff])]),
      );
      break;
    case 'oversize':
      await saveAs(file, `${edited}\n${'<!-- padding -->\n'.repeat(20_000)}`, style);
      break;
    case 'symlink':
      await writeFile(outside, edited);
      await rm(file);
      await symlink(outside, file);
      break;
    case 'directory':
      await rm(file);
      await mkdir(file);
      break;
    case 'delete':
      await rm(file);
      break;
    case 'rename-away':
      await rename(file, path.join(path.dirname(file), `notes-${index}.md`));
      break;
    case 'bom-crlf':
      await saveAs(file, `\uFEFF${edited.replace(/\n/g, '\r\n')}`, style);
      break;
    case 'delete-and-recreate':
      await rm(file);
      await new Promise((resolve) => setTimeout(resolve, 150));
      await writeFile(file, edited);
      break;
    default:
      if (fixture.foreign) {
        await writeFile(pipeline.filePath(FOREIGN_ID), edited.replaceAll(request.id, FOREIGN_ID));
      } else {
        await saveAs(file, edited, style);
      }
  }

  const id = fixture.foreign ? FOREIGN_ID : request.id;
  const reached = async (): Promise<boolean> => {
    const status = await pipeline.status(request.id);
    const problem = fixture.foreign ? await pipeline.problemOf(id) : status.problem;
    switch (fixture.expect) {
      case 'EXECUTED':
        return status.execution === 'succeeded';
      case 'REJECTED':
      case 'CANCELLED':
        return status.decision?.status === fixture.expect;
      default:
        if (VOID_CODES.has(fixture.expect)) {
          return (
            status.decision?.status === 'VOID' && (status.decision.reason ?? '').startsWith(fixture.expect)
          );
        }
        return problem?.code === fixture.expect;
    }
  };
  await until(`${fixture.expect} for case ${index}`, reached);
  return { request, column, status: await pipeline.status(request.id) };
}

async function ledgerRows(id: string): Promise<number> {
  const rows = await knex.withSchema(ledgerSchema).table('ledger').where({ approval_id: id });
  return rows.length;
}

describe('security: hostile approval files never execute', async () => {
  const corpus = await loadCorpus('hostile');

  it('has at least 40 cases, each with its own file', () => {
    expect(corpus.length).toBeGreaterThanOrEqual(40);
  });

  it('every hostile edit yields its specific code, executes nothing, and leaves the request intact', async () => {
    const results = await Promise.all(corpus.map(([, fixture], i) => runCase(i + 1, fixture)));
    const columns = await columnsOf(knex, table);
    for (const [i, [name, fixture]] of corpus.entries()) {
      const { request, column, status } = results[i] as CaseResult;
      const label = `${name} (${fixture.expect})`;
      expect(status.execution, label).toBe('not_started');
      expect(status.result, label).toBeNull();
      expect(columns, label).not.toContain(column);
      expect(await ledgerRows(request.id), label).toBe(0);
      expect(status.request, label).toEqual(request);
      expect(hashCommand(status.request.command), label).toBe(request.request_hash);
      if (
        !VOID_CODES.has(fixture.expect) &&
        !['CANCELLED', 'DECISION_TOO_LATE', 'DECISION_ALREADY_MADE'].includes(fixture.expect)
      ) {
        expect(status.decision, `${label} stays undecided`).toBeNull();
      }
    }
    expect(await ledgerRows(FOREIGN_ID)).toBe(0);
    expect((globalThis as Record<string, unknown>).__approvalGatePwned).toBeUndefined();
  });
});

describe('benign edits through the same harness do execute', async () => {
  const corpus = await loadCorpus('benign');

  it('each benign edit reaches its expected outcome', async () => {
    const results = await Promise.all(corpus.map(([, fixture], i) => runCase(1000 + i, fixture)));
    const columns = await columnsOf(knex, table);
    for (const [i, [name, fixture]] of corpus.entries()) {
      const { column, status } = results[i] as CaseResult;
      expect(columns.includes(column), name).toBe(fixture.expect === 'EXECUTED');
      expect(status.decision?.status, name).toBe(fixture.expect === 'EXECUTED' ? 'APPROVED' : fixture.expect);
    }
  });
});
