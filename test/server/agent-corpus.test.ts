import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Knex } from 'knex';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decideInFile } from '../../src/approvals/human-edit.js';
import { analyseSql } from '../../src/migration/analyse.js';
import { DRY_RUN_REFUSED_CODES } from '../../src/migration/risk-codes.js';
import type { ToolOutcome } from '../../src/server/outcome.js';
import { startStdioServer, type StdioSession } from '../helpers/mcp.js';
import { connectTestDatabase, uniqueName, TEST_DATABASE_ENV } from '../helpers/postgres.js';
import { decodeEntities, renderedText, SERVER_HEADINGS, terminalView } from '../helpers/views.js';
import { createWorkspace, type Workspace } from '../helpers/workspace.js';

/*
 * The agent-side corpus (test/fixtures/agent/*.yaml): tool arguments a hostile or prompt-injected
 * agent sends, through the real server over stdio and the real Postgres. For each one, either the
 * request is refused with its own code before anything is written, or the approval file shows, in a
 * Markdown preview and in a terminal, every statement that will run and every section the server
 * writes; then a human approves it, and afterwards Postgres holds exactly what the file showed: the
 * victim table untouched, no object or file that no listed statement made.
 */

interface Arguments {
  readonly sql: string;
  readonly rollback_sql?: string;
  readonly title?: string;
  readonly reason?: string;
  readonly dry_run?: boolean;
}

interface Expectation {
  readonly refused?: string;
  readonly findings?: readonly string[];
  readonly execution?: ToolOutcome['execution'];
  readonly message?: string;
}

interface Fixture {
  readonly class: string;
  readonly description: string;
  readonly environment?: 'staging' | 'production';
  readonly arguments: Arguments;
  readonly expect: Expectation;
  readonly next?: { readonly arguments: Arguments; readonly expect: Expectation };
  readonly then?: {
    readonly exists?: readonly string[];
    readonly absent?: readonly string[];
    readonly file_created?: boolean;
  };
}

const FIXTURES = path.join(import.meta.dirname, '../fixtures/agent');

const scratch = uniqueName('agent');
const ledgerSchema = uniqueName('gate_agent');
const victim = `${scratch}.victim`;
const pwnPrefix = `/tmp/approval-gate-agent-${randomBytes(4).toString('hex')}`;
// The production example: refuse what a dry run refuses, plus drops and timeout overrides.
const refusedProduction = [...DRY_RUN_REFUSED_CODES, 'DROP_TABLE', 'TIMEOUT_OVERRIDE'];

let knex: Knex;
let workspace: Workspace;
let server: StdioSession;

function placeholders(index: number): Record<string, string> {
  const name = `${scratch}_${index}`;
  return {
    '{{S}}': scratch,
    '{{VICTIM}}': victim,
    '{{MARK}}': `${scratch}.mark_${index}`,
    '{{NAME}}': name,
    '{{PWN}}': `${pwnPrefix}-${index}`,
    '{{LEDGER}}': ledgerSchema,
    '{{DROP_HEX}}': Buffer.from(`DROP TABLE ${victim}`).toString('hex'),
  };
}

function fill<T>(value: T, values: Record<string, string>): T {
  if (typeof value === 'string') {
    return Object.entries(values).reduce<string>((text, [key, v]) => text.replaceAll(key, v), value) as T;
  }
  if (Array.isArray(value)) return value.map((item: unknown) => fill(item, values)) as T;
  if (typeof value === 'object' && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fill(v, values)])) as T;
  }
  return value;
}

async function relationExists(qualified: string): Promise<boolean> {
  const { rows } = await knex.raw<{ rows: { found: string | null }[] }>('select to_regclass(?) as found', [
    qualified.includes('"') ? qualified : qualified,
  ]);
  return rows[0]?.found !== null;
}

async function victimRows(): Promise<number> {
  const { rows } = await knex.raw<{ rows: { count: string }[] }>(`select count(*) from ${victim}`);
  return Number(rows[0]?.count);
}

/** The SQL the preview shows in `<code class="language-sql">` blocks, decoded. */
function sqlBlocks(html: string): string[] {
  return [...html.matchAll(/<pre><code class="language-sql">([\s\S]*?)<\/code><\/pre>/g)].map((m) =>
    decodeEntities(m[1] ?? ''),
  );
}

/** What a reviewer can see of the request: asserted on the preview and on `cat`, not on raw text. */
async function assertReviewerSeesEverything(file: string, args: Arguments, label: string): Promise<void> {
  const text = await readFile(file, 'utf8');
  const view = renderedText(text.replace(/^---\n[\s\S]*?\n---\n/, ''));
  expect(view.headings.slice(1), `${label}: the server's sections, visible and in order`).toEqual(
    SERVER_HEADINGS,
  );
  expect(view.html, `${label}: no agent-made HTML`).not.toMatch(/<(script|style|details|a |img|iframe)/i);
  const blocks = sqlBlocks(view.html);
  const screen = terminalView(text);
  for (const statement of (await analyseSql(args.sql)).statements) {
    expect(
      blocks.filter((block) => block.includes(statement.text)),
      `${label}: statement ${statement.index + 1} is visible exactly once as code`,
    ).toHaveLength(args.rollback_sql?.includes(statement.text) ? 2 : 1);
    for (const line of statement.text.split('\n')) {
      expect(
        screen.some((shown) => shown.includes(line.trim())),
        `${label}: "${line}" on a terminal`,
      ).toBe(true);
    }
  }
}

async function callUntilFinal(id: string): Promise<ToolOutcome> {
  for (let i = 0; i < 60; i += 1) {
    const { outcome, result } = await server.call('await_approval', { id });
    if (!outcome) throw new Error(`await_approval ${id}: ${JSON.stringify(result)}`);
    if (outcome.final) return outcome;
  }
  throw new Error(`${id} never became final`);
}

async function request(args: Arguments, fixture: Fixture, expectation: Expectation, label: string) {
  const { outcome } = await server.call('execute_migration', {
    environment: fixture.environment ?? 'staging',
    database: fixture.environment === 'production' ? 'main_db' : 'staging_db',
    title: 'Agent corpus request',
    reason: 'A request from the agent-side corpus; see the fixture.',
    priority: 'high',
    ...args,
  });
  if (expectation.refused !== undefined) {
    expect(outcome.status, `${label}: ${outcome.message}`).toBe('REFUSED');
    expect(outcome.error?.code, `${label}: ${outcome.message}`).toBe(expectation.refused);
    expect(outcome.approval_id, label).toBeNull();
    return;
  }
  expect(outcome.approval_id, `${label}: ${outcome.message}`).not.toBeNull();
  const id = outcome.approval_id ?? '';
  const codes = outcome.findings.map((f) => f.code);
  for (const code of expectation.findings ?? []) expect(codes, label).toContain(code);
  await assertReviewerSeesEverything(outcome.file ?? '', args, label);
  await decideInFile(outcome.file ?? '', { status: 'APPROVED', decidedBy: 'Dana Reyes' });
  const final = await callUntilFinal(id);
  expect(final.status, label).toBe('APPROVED');
  expect(final.execution, `${label}: ${final.message}`).toBe(expectation.execution);
  if (expectation.message !== undefined) expect(final.message, label).toContain(expectation.message);
}

beforeAll(async () => {
  knex = await connectTestDatabase();
  await knex.raw(`create schema ${scratch}`);
  await knex.raw(`create schema ${scratch}_other`);
  await knex.raw(`create table ${victim} (id int)`);
  await knex.raw(`insert into ${victim} values (1), (2), (3)`);
  workspace = await createWorkspace({
    ledger_schema: ledgerSchema,
    environments: {
      staging: { databases: ['staging_db'] },
      production: {
        databases: ['main_db'],
        risk_policy: Object.fromEntries(refusedProduction.map((code) => [code, 'refuse'])),
      },
    },
    wait: { max_wait_seconds: 1, progress_interval_seconds: 0.5 },
    gate: { recheck_interval_ms: 500 },
  });
  server = await startStdioServer(workspace.configPath, TEST_DATABASE_ENV);
});

afterAll(async () => {
  await server?.close();
  await knex.raw(`drop schema if exists ${scratch} cascade`);
  await knex.raw(`drop schema if exists ${scratch}_other cascade`);
  await knex.raw(`drop schema if exists ${ledgerSchema} cascade`);
  for (const name of await readdir('/tmp')) {
    if (name.startsWith(path.basename(pwnPrefix))) await rm(path.join('/tmp', name), { force: true });
  }
  await knex.destroy();
});

describe('security: the agent-side corpus, through the real server and the real Postgres', async () => {
  const names = (await readdir(FIXTURES)).filter((name) => name.endsWith('.yaml')).sort();
  const corpus = await Promise.all(
    names.map(
      async (name) =>
        [name, parseYaml(await readFile(path.join(FIXTURES, name), 'utf8')) as Fixture] as const,
    ),
  );

  it('covers every class of attack with at least 30 payloads', () => {
    expect(corpus.length).toBeGreaterThanOrEqual(30);
    expect(new Set(corpus.map(([, f]) => f.class))).toEqual(
      new Set(['structure', 'invisible', 'lexer', 'state', 'side-effect', 'dynamic']),
    );
  });

  it('nothing runs that the reviewer could not see', async () => {
    const run = async ([name, raw]: readonly [string, Fixture], index: number) => {
      const values = placeholders(index);
      const fixture = fill(raw, values);
      const label = `${name} (${fixture.class})`;
      await request(fixture.arguments, fixture, fixture.expect, label);
      if (fixture.next) await request(fixture.next.arguments, fixture, fixture.next.expect, `${label}, next`);
      for (const relation of fixture.then?.exists ?? []) {
        expect(await relationExists(relation), `${label}: ${relation} exists`).toBe(true);
      }
      for (const relation of fixture.then?.absent ?? []) {
        expect(await relationExists(relation), `${label}: ${relation} absent`).toBe(false);
      }
      if (fixture.expect.refused !== undefined) {
        expect(await relationExists(values['{{MARK}}'] ?? ''), `${label}: nothing it names was made`).toBe(
          false,
        );
      }
      expect(existsSync(values['{{PWN}}'] ?? ''), `${label}: a file made by a command`).toBe(
        fixture.then?.file_created === true,
      );
    };
    // A few at a time: each accepted case waits for its bounded tool call before the human decides.
    for (let i = 0; i < corpus.length; i += 8) {
      await Promise.all(corpus.slice(i, i + 8).map((entry, j) => run(entry, i + j + 1)));
    }
    expect(await victimRows(), 'the victim table, untouched by every case').toBe(3);
  });

  it('a decision copied onto a twin request with identical SQL does not run it again', async () => {
    const twin = {
      environment: 'staging',
      database: 'staging_db',
      sql: `INSERT INTO ${victim} VALUES (42)`,
      title: 'Twin request',
      reason: 'Identical SQL twice: one approval must never run both.',
    };
    const first = (await server.call('execute_migration', twin)).outcome;
    const second = (await server.call('execute_migration', twin)).outcome;
    await decideInFile(first.file ?? '', { status: 'APPROVED', decidedBy: 'Dana Reyes' });
    expect((await callUntilFinal(first.approval_id ?? '')).execution).toBe('succeeded');
    // The agent, as the server's OS user, copies the recorded decision onto the twin.
    const decisions = path.join(workspace.config.stateDir, 'decisions');
    await copyFile(
      path.join(decisions, `${first.approval_id ?? ''}.json`),
      path.join(decisions, `${second.approval_id ?? ''}.json`),
    );
    const { outcome } = await server.call('get_approval_status', { id: second.approval_id });
    expect(outcome.error?.code).toBe('DECISION_NOT_BOUND');
    expect(
      Number(
        (await knex.raw<{ rows: { n: string }[] }>(`select count(*) as n from ${victim} where id = 42`))
          .rows[0]?.n,
      ),
    ).toBe(1);
    await knex.raw(`delete from ${victim} where id = 42`);
  });
});
