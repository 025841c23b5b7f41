import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Knex } from 'knex';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { serveHttp, type HttpServerHandle } from '../../src/server/http.js';
import type { ToolOutcome } from '../../src/server/outcome.js';
import { silentLogger } from '../helpers/log.js';
import {
  connectTestDatabase,
  TEST_DATABASE_ENV,
  unreachableTestDatabase,
  uniqueName,
} from '../helpers/postgres.js';
import { startTokenProxy, type TokenProxy } from '../helpers/token-proxy.js';
import { createWorkspace } from '../helpers/workspace.js';

/*
 * The MCP conformance suite (@modelcontextprotocol/conformance, pinned in package.json) against our
 * Streamable HTTP server: every server scenario the suite has (`--suite all`, pending ones included),
 * in one run of its CLI, judged from the checks.json it writes per scenario. The CLI cannot send a
 * bearer token, so it talks to a loopback proxy that adds ours (test/helpers/token-proxy.ts); the
 * server's own auth is unchanged.
 *
 * Most scenarios need the reference server's fixtures (tools such as test_image_content, prompts,
 * test:// resources); those are listed in conformance-expected-failures.json with the reason. The list
 * must stay true both ways: a scenario that fails and is not listed fails its test, and so does a
 * listed scenario that passes now (remove its entry then). An entry that names `checks` pins the
 * failing checks exactly, so the scenario's other checks keep guarding what they test.
 */

const TOKEN = 'conformance-token-0123456789abcdef';
/** The whole run takes seconds; the CLI has no time limit of its own for a server that never answers. */
const RUN_TIMEOUT_MS = 90_000;

const require = createRequire(import.meta.url);
const packageJsonPath = require.resolve('@modelcontextprotocol/conformance/package.json');
const conformancePackage = z
  .object({ version: z.string(), bin: z.object({ conformance: z.string() }) })
  .parse(JSON.parse(await readFile(packageJsonPath, 'utf8')));
const CLI = path.join(path.dirname(packageJsonPath), conformancePackage.bin.conformance);

interface CliRun {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

function runConformance(args: readonly string[], cwd: string): Promise<CliRun> {
  return new Promise((resolve) => {
    const child = execFile(
      process.execPath,
      [CLI, ...args],
      { cwd, timeout: RUN_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024 },
      (_error, stdout, stderr) => resolve({ code: child.exitCode, signal: child.signalCode, stdout, stderr }),
    );
  });
}

/** The server scenarios of the installed suite, as its `list --server` prints them ("  - name"). */
async function serverScenarios(): Promise<string[]> {
  const run = await runConformance(['list', '--server'], tmpdir());
  if (run.code !== 0) throw new Error(`conformance list failed (${run.code}): ${run.stderr}`);
  return [...run.stdout.matchAll(/^\s+- (\S+)$/gm)].map((match) => match[1] ?? '');
}

const ExpectedFailures = z.array(
  z
    .object({
      scenario: z.string().min(1),
      reason: z.string().min(1),
      checks: z.array(z.string().min(1)).min(1).optional(),
    })
    .strict(),
);
const expectedFailuresPath = path.join(import.meta.dirname, 'conformance-expected-failures.json');
const expectedFailures = ExpectedFailures.parse(JSON.parse(await readFile(expectedFailuresPath, 'utf8')));
const expectedFailure = new Map(expectedFailures.map((entry) => [entry.scenario, entry]));

const Checks = z.array(
  z.object({
    id: z.string(),
    name: z.string(),
    description: z.string(),
    status: z.enum(['SUCCESS', 'FAILURE', 'WARNING', 'SKIPPED', 'INFO']),
    errorMessage: z.string().optional(),
  }),
);
type Check = z.infer<typeof Checks>[number];

/** The CLI's result directory for a scenario: server-<scenario>-<ISO time with : and . as ->. */
const RESULT_DIR = /^server-(.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$/;

const scenarios = await serverScenarios();
const unreachable = await unreachableTestDatabase('the MCP conformance suite');

describe.skipIf(unreachable !== undefined)(
  `MCP conformance ${conformancePackage.version}, Streamable HTTP through a token proxy`,
  () => {
    const table = uniqueName('conformance');
    const ledgerSchema = uniqueName('gate_conformance');
    let knex: Knex | undefined;
    let handle: HttpServerHandle | undefined;
    let proxy: TokenProxy | undefined;
    let resultsDir: string | undefined;
    let run: CliRun;
    const results = new Map<string, Check[]>();

    beforeAll(async () => {
      knex = await connectTestDatabase();
      await knex.schema.createTable(table, (t) => t.increments('id'));
      // A short wait: this file's requests only have to be written, and stay PENDING.
      const workspace = await createWorkspace({
        ledger_schema: ledgerSchema,
        wait: { max_wait_seconds: 0.2, progress_interval_seconds: 0.1 },
      });
      process.env.APPROVAL_GATE_TOKEN = TOKEN;
      Object.assign(process.env, TEST_DATABASE_ENV);
      handle = await serveHttp(workspace.config, silentLogger, { port: 0 });
      proxy = await startTokenProxy(handle.url, TOKEN);

      // One approval, so resources/list has a resource of ours for the suite to validate.
      await requestApproval('Conformance fixture');

      // One process for all scenarios: a CLI start costs more than most scenarios take.
      resultsDir = await mkdtemp(path.join(tmpdir(), 'approval-gate-conformance-'));
      run = await runConformance(
        ['server', '--url', proxy.url, '--suite', 'all', '--output-dir', resultsDir],
        resultsDir,
      );
      for (const entry of await readdir(resultsDir)) {
        const scenario = RESULT_DIR.exec(entry)?.[1];
        // The directory is made before the scenario runs: one that threw has no checks.json.
        const text = await readFile(path.join(resultsDir, entry, 'checks.json'), 'utf8').catch(
          () => undefined,
        );
        if (scenario !== undefined && text !== undefined)
          results.set(scenario, Checks.parse(JSON.parse(text)));
      }
    }, RUN_TIMEOUT_MS + 30_000);

    afterAll(async () => {
      await proxy?.close();
      await handle?.close();
      if (resultsDir) await rm(resultsDir, { recursive: true, force: true });
      if (knex) {
        await knex.schema.dropTableIfExists(table);
        await knex.raw('drop schema if exists ?? cascade', [ledgerSchema]);
        await knex.destroy();
      }
    });

    /** Writes a PENDING approval through the SDK's client, straight to the server with the token. */
    async function requestApproval(title: string): Promise<void> {
      const client = new Client({ name: 'conformance-setup', version: '0.0.0' });
      await client.connect(
        new StreamableHTTPClientTransport(new URL(handle?.url ?? ''), {
          requestInit: { headers: { Authorization: `Bearer ${TOKEN}` } },
        }),
      );
      const result = await client.callTool({
        name: 'execute_migration',
        arguments: {
          environment: 'staging',
          database: 'staging_db',
          sql: `ALTER TABLE ${table} ADD COLUMN note text`,
          title,
          reason: 'A request for the conformance run to see; never decided.',
        },
      });
      expect((result.structuredContent as ToolOutcome | undefined)?.status).toBe('PENDING');
      await client.close();
    }

    /** A scenario's checks, or one failure saying why the CLI left none (it threw, or the run died). */
    function checksOf(scenario: string): Check[] {
      const checks = results.get(scenario);
      if (checks !== undefined) return checks;
      const how = run.signal
        ? `was killed (${run.signal}; over ${RUN_TIMEOUT_MS} ms?)`
        : `exited ${run.code}`;
      return [
        {
          id: 'conformance-cli',
          name: 'ConformanceCli',
          description: `the conformance CLI wrote no checks.json for ${scenario} and ${how}`,
          status: 'FAILURE',
          errorMessage: `the CLI ${how}; the end of its stderr: ${run.stderr.slice(-2000)}`,
        },
      ];
    }

    it('the expected-failures file names scenarios of this suite, each once and with a reason', () => {
      const listed = expectedFailures.map((entry) => entry.scenario);
      expect(scenarios.length).toBeGreaterThan(0);
      expect(
        listed.filter((name) => !scenarios.includes(name)),
        `entries naming no server scenario of conformance ${conformancePackage.version}`,
      ).toEqual([]);
      expect(
        listed.filter((name, index) => listed.indexOf(name) !== index),
        'entries listed more than once',
      ).toEqual([]);
    });

    // The suite's SSE checks read POST streams, which end with their response; a proxy that buffered
    // would pass them all. A GET stream stays open, so its event arrives only if the proxy streams.
    it('the token proxy passes a GET stream event by event', async () => {
      const url = proxy?.url ?? '';
      const json = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };
      const initialize = await fetch(url, {
        method: 'POST',
        headers: json,
        body: JSON.stringify({
          jsonrpc: '2.0',
          id: 1,
          method: 'initialize',
          params: {
            protocolVersion: '2025-06-18',
            capabilities: {},
            clientInfo: { name: 'proxy-check', version: '0' },
          },
        }),
      });
      await initialize.text();
      expect(initialize.status).toBe(200);
      const session = {
        'mcp-session-id': initialize.headers.get('mcp-session-id') ?? '',
        'mcp-protocol-version': '2025-06-18',
      };
      const initialized = await fetch(url, {
        method: 'POST',
        headers: { ...json, ...session },
        body: JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }),
      });
      await initialized.text();
      const controller = new AbortController();
      const stream = await fetch(url, {
        headers: { accept: 'text/event-stream', ...session },
        signal: controller.signal,
      });
      expect(stream.status).toBe(200);
      if (!stream.body) throw new Error('the GET stream has no body');
      const reader = stream.body.pipeThrough(new TextDecoderStream()).getReader();
      try {
        // A new approval makes the server announce resources/list_changed on the open stream.
        await requestApproval('Proxy stream check');
        let text = '';
        while (!text.includes('notifications/resources/list_changed')) {
          const { value, done } = await reader.read();
          if (done) break;
          text += value;
        }
        expect(text).toContain('notifications/resources/list_changed');
      } finally {
        controller.abort();
      }
    }, 15_000);

    it.each(scenarios)('%s', (scenario) => {
      const failed = checksOf(scenario).filter((check) => check.status === 'FAILURE');
      const failures = failed.map((check) => `${check.id}: ${check.errorMessage ?? check.description}`);
      const expected = expectedFailure.get(scenario);
      if (expected === undefined) {
        expect(failures, `${scenario} fails and is not an expected failure`).toEqual([]);
        return;
      }
      // A listed scenario that passes fails here too: its entry must go, so the list stays true.
      expect(
        failures.length,
        `${scenario} passes now but conformance-expected-failures.json lists it ("${expected.reason}"): ` +
          'remove its entry',
      ).toBeGreaterThan(0);
      if (expected.checks !== undefined) {
        expect(
          failed.map((check) => check.id).sort(),
          `${scenario} must fail exactly the checks its entry names; it failed: ${failures.join('; ')}`,
        ).toEqual([...expected.checks].sort());
      }
    });
  },
);
