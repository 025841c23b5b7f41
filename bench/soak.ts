/**
 * Crash soak: hundreds of randomized crash/restart trials of the real server against the real
 * Postgres, counting the two things the gate must never do: execute an approved migration twice, or
 * lose a human's decision. Each trial spawns a server that SIGKILLs itself at a random crash point
 * (src/faults.ts) or not at all, saves APPROVED the way an editor would, restarts the server, and
 * checks the ledger, a counter table and the approval file.
 *
 *   npm run soak
 *   npm run soak -- --seed 12345 --trials 400 --concurrency 6
 *   npm run soak -- --quick --trials 20 --seed 12345 --only 7,13 --keep-failed
 *   SOAK_TRIALS=400 SOAK_CONCURRENCY=6 SOAK_SEED=12345 npm run soak
 *
 * Exit code: 0 when every trial behaved, 1 when any did not (double execution, lost decision, hung
 * trial, stuck "running", wrong outcome) or the time budget ran out, 2 for bad arguments, 130 when
 * interrupted.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport, getDefaultEnvironment } from '@modelcontextprotocol/sdk/client/stdio.js';
import knexFactory, { type Knex } from 'knex';
import { stringify } from 'yaml';
import { parseApprovalText } from '../src/approvals/frontmatter.js';
import { decideInFile, type SaveStyle } from '../src/approvals/human-edit.js';
import { RESULT_MARKER } from '../src/approvals/render.js';
import { ApprovalStore } from '../src/approvals/store.js';
import { parseConfig, type ConfigInput } from '../src/config.js';
import { CRASH_POINTS, type CrashPoint } from '../src/faults.js';
import { PROJECT_ROOT, stdioServerCommand } from '../src/server/launch.js';
import { ToolOutcome } from '../src/server/outcome.js';
import { UsageError, integerOption, runMain, say, sleep } from './common.js';

/** Fewer trials leave too few per crash point (~20 each at 200) to mean anything; --quick overrides. */
const MIN_TRIALS = 200;
/** Share of trials without a crash: the baseline every crash point is compared with. */
const NO_CRASH_SHARE = 0.25;
const MAX_DECISION_DELAY_MS = 300;
/**
 * A tool call waits at most this long server-side. Short, so a trial whose decision went missing
 * polls again soon instead of sitting out the default 50 s; long enough for any healthy execution.
 */
const MAX_WAIT_SECONDS = 5;
/**
 * Client-side bound of one tool call. Far above MAX_WAIT_SECONDS: a call only gets near it when
 * the server is stuck (or the machine overloaded), and then the trial fails rather than waiting on.
 */
const CALL_TIMEOUT_MS = 60_000;
/** How long the first server may take to write the approval file (it prepares the ledger first). */
const FILE_DEADLINE_MS = 60_000;
/** After the restart, a decision not final within this long counts as lost. */
const DECISION_DEADLINE_MS = 30_000;
/** How long the server may take to append the Outcome section after answering with a final result. */
const OUTCOME_DEADLINE_MS = 10_000;
/** A trial still running after this long is killed and counted as hung (healthy: ~5-25 s). */
const TRIAL_DEADLINE_MS = 180_000;
/** Server stderr lines kept per process, printed only when its trial fails. */
const STDERR_TAIL_LINES = 25;
const STDERR_LINE_CHARS = 400;

/** The real server on this machine, as in the tests. */
const DEFAULT_DATABASE_URL = 'postgres://postgres@127.0.0.1:5432/test';

interface Options {
  readonly trials: number;
  readonly concurrency: number;
  readonly seed: number;
  readonly quick: boolean;
  readonly only: ReadonlySet<number> | null;
  readonly keepFailed: boolean;
  /** Print every trial's notes, not only failed ones' (to see where a trial spends its time). */
  readonly verbose: boolean;
  readonly maxMinutes: number;
  readonly databaseUrl: string;
}

function readOptions(): Options {
  const { values } = parseArgs({
    options: {
      trials: { type: 'string' },
      concurrency: { type: 'string' },
      seed: { type: 'string' },
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      'keep-failed': { type: 'boolean', default: false },
      verbose: { type: 'boolean', default: false },
      'max-minutes': { type: 'string' },
    },
    strict: true,
  });
  const env = process.env;
  const quick = values.quick === true;
  const trials = integerOption('trials', values.trials ?? env.SOAK_TRIALS, MIN_TRIALS, 1, 100_000);
  let only: Set<number> | null = null;
  if (values.only !== undefined) {
    only = new Set(values.only.split(',').map((part) => integerOption('only', part.trim(), 0, 1, trials)));
  }
  const planned = only?.size ?? trials;
  if (planned < MIN_TRIALS && !quick) {
    throw new UsageError(
      `${planned} trial(s) is too few for a soak (at least ${MIN_TRIALS}); add --quick to run them anyway.`,
    );
  }
  return {
    trials,
    concurrency: integerOption('concurrency', values.concurrency ?? env.SOAK_CONCURRENCY, 4, 1, 32),
    // A 32-bit seed: what the PRNG takes, and short enough to copy from a log.
    seed: integerOption('seed', values.seed ?? env.SOAK_SEED, randomInt(0, 2 ** 32), 0, 2 ** 32 - 1),
    quick,
    only,
    keepFailed: values['keep-failed'] === true,
    verbose: values.verbose === true,
    maxMinutes: integerOption('max-minutes', values['max-minutes'] ?? env.SOAK_MAX_MINUTES, 30, 1, 24 * 60),
    databaseUrl: env.SOAK_DATABASE_URL ?? env.TEST_DATABASE_URL ?? DEFAULT_DATABASE_URL,
  };
}

/** mulberry32: tiny, fast, and good enough to pick test cases; the same seed gives the same trials. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Point = CrashPoint | 'none';
const POINTS: readonly Point[] = ['none', ...CRASH_POINTS];

/**
 * When the human saves APPROVED. Only 'after-file-write' has a choice: it dies before any decision,
 * so the save can race the dying process, land while no server runs, or reach the restarted one.
 * Every other crash point is reached only because of the decision, so the save comes first there.
 */
type Timing = 'with-first-server' | 'while-down' | 'after-restart';
const FILE_WRITE_TIMINGS: readonly Timing[] = ['with-first-server', 'while-down', 'after-restart'];

interface TrialSpec {
  /** 1-based; with the seed, names the trial for --only. */
  readonly index: number;
  readonly point: Point;
  readonly style: SaveStyle;
  readonly delayMs: number;
  readonly timing: Timing;
}

const isStepPoint = (point: Point) => point === 'after-step-started' || point === 'after-step-executed';

/**
 * Specs are drawn up front, in trial order, so trial n is the same for a seed whatever the worker
 * count or the order trials finish in. Only timing (the OS, Postgres) differs between runs.
 */
function planTrials(seed: number, count: number): TrialSpec[] {
  const random = prng(seed);
  const pick = <T>(items: readonly T[]): T => {
    const item = items[Math.floor(random() * items.length)];
    if (item === undefined) throw new Error('pick from an empty list');
    return item;
  };
  const specs: TrialSpec[] = [];
  for (let index = 1; index <= count; index += 1) {
    const point: Point = random() < NO_CRASH_SHARE ? 'none' : pick(CRASH_POINTS);
    const style: SaveStyle = random() < 0.5 ? 'in-place' : 'rename';
    const delayMs = Math.floor(random() * (MAX_DECISION_DELAY_MS + 1));
    // Drawn for every trial, used only where it matters, so one trial's choice never shifts the next.
    const timingDraw = pick(FILE_WRITE_TIMINGS);
    const timing = point === 'after-file-write' ? timingDraw : 'with-first-server';
    specs.push({ index, point, style, delayMs, timing });
  }
  return specs;
}

/** A spawned server over stdio: the test helper's session, plus a kill switch and a stderr tail. */
interface Session {
  readonly role: string;
  /** The crash point the server announced before killing itself, if it did. */
  crashedAt(): string | null;
  stderrTail(): string[];
  call(name: string, args: Record<string, unknown>, timeoutMs: number): Promise<ToolOutcome>;
  close(): Promise<void>;
  /** SIGKILL by pid, for hung trials and interrupts. */
  kill(): void;
}

/** Every server alive right now, so a hung trial or Ctrl-C can kill exactly the processes we started. */
const live = new Set<Session>();

async function startServer(role: string, configPath: string, env: Record<string, string>): Promise<Session> {
  const { command, args, cwd } = stdioServerCommand(configPath);
  const transport = new StdioClientTransport({
    command,
    args,
    cwd,
    env: { ...getDefaultEnvironment(), ...env },
    stderr: 'pipe',
  });
  // The servers log every step to stderr; hundreds of them would bury the report, so keep a tail.
  const tail: string[] = [];
  let partial = '';
  let crashedAt: string | null = null;
  transport.stderr?.on('data', (chunk: Buffer) => {
    const lines = (partial + chunk.toString('utf8')).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      const crash = /crashing on purpose at (\S+)/.exec(line);
      if (crash) crashedAt = crash[1] ?? null;
      tail.push(line.length > STDERR_LINE_CHARS ? `${line.slice(0, STDERR_LINE_CHARS)}…` : line);
      if (tail.length > STDERR_TAIL_LINES) tail.shift();
    }
  });
  const client = new Client({ name: 'approval-gate-soak', version: '0.1.0' });
  let closed = false;
  const session: Session = {
    role,
    crashedAt: () => crashedAt,
    stderrTail: () => (partial ? [...tail, partial] : [...tail]),
    async call(name, callArgs, timeoutMs) {
      const result = await client.callTool({ name, arguments: callArgs }, undefined, { timeout: timeoutMs });
      if (result.structuredContent === undefined) {
        // A tool that threw: the SDK answers with isError and the message as text only.
        const content = Array.isArray(result.content) ? (result.content as { text?: unknown }[]) : [];
        const text = content.map((c) => (typeof c.text === 'string' ? c.text : '')).join(' ');
        throw new Error(`${name} answered without a structured result: ${text.slice(0, 500)}`);
      }
      // Validated, not cast: a changed result shape should fail trials loudly, not skew the counts.
      return ToolOutcome.parse(result.structuredContent);
    },
    async close() {
      if (closed) return;
      closed = true;
      try {
        await client.close();
      } finally {
        live.delete(session);
      }
    },
    kill() {
      const pid = transport.pid;
      if (pid !== null) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Already gone.
        }
      }
      live.delete(session);
    },
  };
  live.add(session);
  try {
    await client.connect(transport);
  } catch (error) {
    session.kill();
    throw error;
  }
  return session;
}

interface Workspace {
  readonly dir: string;
  readonly configPath: string;
  readonly approvalsDir: string;
  readonly schema: string;
  /** Its trials so far, checked again by one more restart when the worker leaves the workspace. */
  readonly trials: Trial[];
}

/** Rows of a tag in the counter table, and the ledger rows of an approval id. */
interface Observation {
  readonly rows: number;
  readonly ledger: readonly { readonly state: string }[];
}

class Soak {
  readonly #options: Options;
  readonly #knex: Knex;
  readonly #run = randomBytes(4).toString('hex');
  readonly #counter: string;
  readonly #root: string;
  readonly #schemas: string[] = [];
  readonly #keep: string[] = [];
  readonly #generations = new Map<number, number>();
  /** Failures of the soak itself (not of a trial), e.g. a verification server that did not answer. */
  readonly problems: string[] = [];
  #interrupted = false;

  private constructor(options: Options, knex: Knex, root: string) {
    this.#options = options;
    this.#knex = knex;
    this.#root = root;
    this.#counter = `soak_runs_${this.#run}`;
  }

  static async open(options: Options): Promise<Soak> {
    const knex = knexFactory({ client: 'pg', connection: options.databaseUrl, pool: { min: 0, max: 4 } });
    try {
      await knex.raw('select 1');
    } catch (error) {
      await knex.destroy();
      throw new Error(
        `Postgres at ${options.databaseUrl.replace(/:[^:@/]*@/, ':***@')} is not reachable: ${String(error)}`,
      );
    }
    const root = await mkdtemp(path.join(tmpdir(), 'approval-gate-soak-'));
    const soak = new Soak(options, knex, root);
    await knex.schema.createTable(soak.#counter, (t) => {
      t.increments('id');
      t.text('tag').notNullable();
    });
    return soak;
  }

  get databaseUrl(): string {
    return this.#options.databaseUrl;
  }

  get counter(): string {
    return this.#counter;
  }

  get schemaPrefix(): string {
    return `soak_${this.#run}_`;
  }

  interrupt(): void {
    this.#interrupted = true;
    for (const session of [...live]) session.kill();
  }

  get interrupted(): boolean {
    return this.#interrupted;
  }

  /**
   * One workspace per worker, reused across its trials, with its own ledger schema. Not one schema
   * for the whole run: approval ids (APR-YYYYMMDD-NNN) are unique only within a workspace, so
   * two workspaces sharing a ledger would collide on APR-…-001 (LEDGER_CONFLICT). After a failed
   * trial the worker moves to a fresh workspace, so one failure cannot leak into the next trials.
   */
  async newWorkspace(worker: number): Promise<Workspace> {
    const generation = this.#generations.get(worker) ?? 0;
    this.#generations.set(worker, generation + 1);
    const schema = `${this.schemaPrefix}w${worker}_${generation}`;
    this.#schemas.push(schema);
    const dir = path.join(this.#root, `w${worker}-${generation}`);
    await mkdir(path.join(dir, 'approvals'), { recursive: true });
    const input: ConfigInput = {
      approvals_dir: 'approvals',
      state_dir: 'state',
      ledger_schema: schema,
      databases: { main_db: { client: 'pg', connection_env: 'SOAK_MAIN_DB_URL' } },
      environments: { production: { databases: ['main_db'] } },
      wait: { max_wait_seconds: MAX_WAIT_SECONDS, progress_interval_seconds: 0.5 },
      gate: { recheck_interval_ms: 1000 },
      executor: { lock_timeout_ms: 1000, statement_timeout_ms: 30_000 },
    };
    const configPath = path.join(dir, 'approval-gate.yaml');
    await writeFile(configPath, stringify(input));
    const config = parseConfig(input, dir, configPath);
    return { dir, configPath, approvalsDir: config.approvalsDir, schema, trials: [] };
  }

  /**
   * The last check of a workspace: one more restart over every request its trials left behind.
   * Every server start resumes whatever looks unfinished, so a finished request that is run again
   * shows up here as extra rows or a changed answer. (Each trial's own restart already ran over all
   * earlier trials of the workspace; this covers the last one.) Returns the trials that failed it.
   */
  async retire(workspace: Workspace): Promise<Trial[]> {
    const finished = workspace.trials.filter((t) => t.id !== null && t.execution !== null && !t.hung);
    const newlyFailed: Trial[] = [];
    if (finished.length > 0 && !this.#interrupted) {
      let verifier: Session | null = null;
      try {
        verifier = await startServer('verification restart', workspace.configPath, {
          SOAK_MAIN_DB_URL: this.databaseUrl,
        });
        const answers = new Map<Trial, string>();
        for (const trial of finished) {
          if (trial.id === null) continue;
          const status = await verifier.call('get_approval_status', { id: trial.id }, CALL_TIMEOUT_MS);
          answers.set(trial, status.execution);
        }
        // Closed before counting, so the rows include whatever its own resume did.
        await verifier.close();
        for (const trial of finished) {
          const wasFailed = trial.failed;
          trial.verify(answers.get(trial) ?? '(no answer)', await this.observe(workspace, trial));
          if (trial.failed && !wasFailed) newlyFailed.push(trial);
        }
      } catch (error) {
        this.problems.push(
          `verification restart of ${workspace.dir} failed: ${error instanceof Error ? error.message : String(error)}` +
            (verifier ? `\n${verifier.stderrTail().join('\n')}` : ''),
        );
      } finally {
        verifier?.kill();
      }
    }
    if (this.#options.keepFailed && workspace.trials.some((t) => t.failed)) this.#keep.push(workspace.dir);
    return newlyFailed;
  }

  async observe(workspace: Workspace, trial: Trial): Promise<Observation> {
    const [row] = await this.#knex(this.#counter)
      .where({ tag: trial.tag })
      .count<{ count: string }[]>('* as count');
    const hasLedger = await this.#knex.schema.withSchema(workspace.schema).hasTable('ledger');
    const ledger: { state: string }[] =
      hasLedger && trial.id !== null
        ? await this.#knex
            .withSchema(workspace.schema)
            .table('ledger')
            .where({ approval_id: trial.id })
            .select('state')
        : [];
    return { rows: Number(row?.count ?? 0), ledger };
  }

  async close(): Promise<void> {
    for (const session of [...live]) session.kill();
    try {
      await this.#knex.schema.dropTableIfExists(this.#counter);
      for (const schema of this.#schemas) await this.#knex.raw('drop schema if exists ?? cascade', [schema]);
    } catch (error) {
      this.problems.push(`could not drop the soak's table and schemas: ${String(error)}`);
    } finally {
      await this.#knex.destroy();
    }
    if (this.#keep.length === 0) {
      await rm(this.#root, { recursive: true, force: true });
    } else {
      // Only the kept workspaces stay; their ledger schemas are dropped all the same.
      for (const name of await readdir(this.#root)) {
        const dir = path.join(this.#root, name);
        if (!this.#keep.includes(dir)) await rm(dir, { recursive: true, force: true });
      }
      say(`note: kept the workspaces of failed trials: ${this.#keep.join(', ')}`);
    }
  }

  /** Runs one trial under its deadline; a trial past it is killed and counted as hung. */
  async runTrial(spec: TrialSpec, workspace: Workspace): Promise<Trial> {
    const trial = new Trial(this, spec, workspace);
    workspace.trials.push(trial);
    const started = Date.now();
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'hung'>((resolve) => {
      timer = setTimeout(() => resolve('hung'), TRIAL_DEADLINE_MS);
    });
    const work = trial.run();
    const outcome = await Promise.race([work, deadline]);
    clearTimeout(timer);
    if (outcome === 'hung') {
      trial.cancel();
      // The killed servers make its pending calls fail; give the trial a moment to notice and stop.
      await Promise.race([work, sleep(5000)]);
    }
    await trial.closeSessions();
    trial.durationMs = Date.now() - started;
    return trial;
  }
}

/** One crash/restart trial: its steps, and everything it saw (the record the report is made of). */
class Trial {
  readonly #soak: Soak;
  readonly spec: TrialSpec;
  readonly #workspace: Workspace;
  readonly #sessions: Session[] = [];
  readonly tag: string;
  /** What happened, each line stamped with ms since the trial began, for the failure report. */
  readonly notes: string[] = [];
  readonly #began = Date.now();
  /** Wall-clock start (UTC), to line a failure up with server logs and code edits. */
  readonly startedAt = new Date().toISOString().slice(11, 19);
  /** Anything unexpected that is not a double execution, lost decision, stuck file or hang. */
  readonly wrong: string[] = [];
  id: string | null = null;
  rows: number | null = null;
  /** The final answer's execution; null when the trial never got one. */
  execution: string | null = null;
  double = false;
  lost = false;
  stuck = false;
  hung = false;
  durationMs = 0;
  #cancelled = false;

  constructor(soak: Soak, spec: TrialSpec, workspace: Workspace) {
    this.#soak = soak;
    this.spec = spec;
    this.#workspace = workspace;
    this.tag = `t${spec.index}_${randomBytes(3).toString('hex')}`;
  }

  #note(line: string): void {
    this.notes.push(`+${String(Date.now() - this.#began).padStart(5)} ms  ${line}`);
  }

  get failed(): boolean {
    return this.double || this.lost || this.stuck || this.hung || this.wrong.length > 0;
  }

  get workspaceDir(): string {
    return this.#workspace.dir;
  }

  stderr(): { role: string; lines: string[] }[] {
    return this.#sessions.map((s) => ({ role: s.role, lines: s.stderrTail() }));
  }

  /** The deadline passed: kill its servers and let no later step of it start another. */
  cancel(): void {
    this.#cancelled = true;
    this.hung = true;
    for (const session of this.#sessions) session.kill();
  }

  async closeSessions(): Promise<void> {
    for (const session of this.#sessions) {
      if (this.#cancelled) session.kill();
      else await session.close().catch(() => session.kill());
    }
  }

  async #start(role: string, crashAt: CrashPoint | null): Promise<Session> {
    // A hung trial's leftover steps must not spawn servers into a workspace the worker has left.
    if (this.#cancelled || this.#soak.interrupted) throw new Error('trial cancelled');
    const env: Record<string, string> = { SOAK_MAIN_DB_URL: this.#soak.databaseUrl };
    if (crashAt !== null) env.APPROVAL_GATE_CRASH_AT = crashAt;
    const session = await startServer(role, this.#workspace.configPath, env);
    if (this.#cancelled) {
      // Spawned while the deadline passed: nobody will close it.
      session.kill();
      throw new Error('trial cancelled');
    }
    this.#sessions.push(session);
    this.#note(`${role} up`);
    return session;
  }

  async #decide(file: string): Promise<void> {
    await sleep(this.spec.delayMs);
    await decideInFile(file, { status: 'APPROVED', decidedBy: 'Soak Reviewer' }, this.spec.style);
    this.#note(`saved APPROVED (${this.spec.style}, after ${this.spec.delayMs} ms, ${this.spec.timing})`);
  }

  get #expectedRows(): number {
    if (this.spec.point === 'after-step-started') return 0;
    if (this.spec.point === 'after-step-executed') return 1;
    return 2;
  }

  get #expectedExecution(): 'unknown' | 'succeeded' {
    return isStepPoint(this.spec.point) ? 'unknown' : 'succeeded';
  }

  async run(): Promise<void> {
    try {
      await this.#steps();
    } catch (error) {
      if (!this.#cancelled)
        this.wrong.push(`trial error: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  async #steps(): Promise<void> {
    const { point, timing } = this.spec;
    const counter = this.#soak.counter;
    const tag = this.tag;
    // Transactional SQL must run exactly once (2 rows); step-by-step SQL must never be retried.
    const sql = isStepPoint(point)
      ? `INSERT INTO ${counter} (tag) VALUES ('${tag}'); CREATE INDEX CONCURRENTLY ${tag}_idx ON ${counter}(tag)`
      : `INSERT INTO ${counter} (tag) VALUES ('${tag}'); INSERT INTO ${counter} (tag) VALUES ('${tag}')`;
    const known = new Set(await approvalFileNames(this.#workspace.approvalsDir));

    const first = await this.#start(
      point === 'none' ? 'server' : 'doomed server',
      point === 'none' ? null : point,
    );
    const call = first
      .call(
        'execute_migration',
        {
          environment: 'production',
          database: 'main_db',
          sql,
          title: `Soak trial ${this.spec.index}: ${point}`,
          reason: 'Crash soak: this request must run exactly once, or be reported honestly as unknown.',
        },
        CALL_TIMEOUT_MS,
      )
      .then(
        (outcome) => ({ died: false as const, outcome }),
        (error: unknown) => ({ died: true as const, error: String(error) }),
      );
    let ended: string | null = null;
    void call.then((answer) => {
      ended = answer.died
        ? `failed: ${answer.error}`
        : `answered ${answer.outcome.status}: ${answer.outcome.message}`;
    });
    const file = await nextApprovalFile(this.#workspace.approvalsDir, known, () => ended);
    const id = ApprovalStore.idOfFileName(path.basename(file));
    if (id === null) throw new Error(`unexpected approval file name ${file}`);
    this.id = id;
    if (timing === 'with-first-server') await this.#decide(file);

    const answer = await call;
    if (point === 'none') {
      if (answer.died) {
        this.wrong.push(`server without a crash point died: ${answer.error}`);
      } else {
        this.#note(`first answer: ${answer.outcome.status}/${answer.outcome.execution}`);
      }
    } else if (!answer.died) {
      this.wrong.push(
        `crash point ${point} not reached: answered ${answer.outcome.status}/${answer.outcome.execution}`,
      );
    } else if (first.crashedAt() !== point) {
      this.wrong.push(`server died, but not at ${point} (announced: ${first.crashedAt() ?? 'nothing'})`);
    } else {
      this.#note(`killed at ${point}`);
    }
    // Without a crash there is nothing to restart for: the agent keeps talking to the same server.
    // Restarts over finished requests are still exercised, by the next trials' servers in this
    // workspace and by its verification restart, and they cost a spawn each.
    let server = first;
    let outcome: ToolOutcome | null = answer.died ? null : answer.outcome;
    if (point !== 'none' || answer.died) {
      outcome = null;
      await first.close();
      this.#note(`${first.role} gone`);
      if (timing === 'while-down') await this.#decide(file);
      server = await this.#start('restarted server', null);
      if (timing === 'after-restart') await this.#decide(file);
    }

    // The agent's side: keep awaiting, as the tool tells it to, until final or the decision is lost.
    // Counted from when both a server and the decision exist, so a slow spawn is not a lost decision.
    const awaitDeadline = Date.now() + DECISION_DEADLINE_MS;
    while (outcome === null || (!outcome.final && Date.now() < awaitDeadline)) {
      const left = Math.max(0.1, Math.min(MAX_WAIT_SECONDS, (awaitDeadline - Date.now()) / 1000));
      outcome = await server.call('await_approval', { id, max_wait_seconds: left }, CALL_TIMEOUT_MS);
    }
    this.#note(
      `${server.role}: ${outcome.status}/${outcome.execution}, final ${String(outcome.final)}: ${outcome.message}`,
    );
    const seen = await this.#soak.observe(this.#workspace, this);
    this.rows = seen.rows;
    this.#note(`rows ${seen.rows}, ledger [${seen.ledger.map((r) => r.state).join(', ')}]`);
    this.#judgeRows(seen);
    if (!outcome.final || outcome.status !== 'APPROVED') {
      this.lost = true;
      this.#note(outcome.final ? `approved decision ended as ${outcome.status}` : 'never became final');
      return;
    }
    this.execution = outcome.execution;
    if (outcome.execution !== this.#expectedExecution)
      this.wrong.push(`execution ${outcome.execution}, expected ${this.#expectedExecution}`);
    const ledgerState = seen.ledger[0]?.state;
    if (ledgerState !== this.#expectedExecution)
      this.wrong.push(`ledger state ${ledgerState ?? '(none)'}, expected ${this.#expectedExecution}`);

    // The file is what the human reads: it must end with the Outcome and never still say running.
    const text = await waitForFileText(file, (t) => t.includes(RESULT_MARKER) && t.includes('## Outcome'));
    const fileExecution = frontMatterExecution(text.text);
    if (fileExecution === 'running') this.stuck = true;
    if (!text.ok) this.wrong.push(`no Outcome section in the file after ${OUTCOME_DEADLINE_MS} ms`);
    else if (fileExecution !== this.#expectedExecution && fileExecution !== 'running')
      this.wrong.push(`file says execution ${fileExecution ?? '(none)'}`);
    await server.close();
  }

  /** More rows than one execution makes, a retried step, or two ledger rows: executed twice. */
  #judgeRows(seen: Observation): void {
    const expected = this.#expectedRows;
    if (seen.rows > expected || seen.ledger.length > 1) this.double = true;
    if (!isStepPoint(this.spec.point)) {
      if (seen.rows === 0) this.lost = true;
      else if (seen.rows === 1) this.wrong.push('1 row: the transaction was only half applied');
    } else if (seen.rows < expected) {
      this.wrong.push(`${seen.rows} rows: the executed step is missing`);
    }
    if (seen.ledger.length === 0) this.wrong.push('no ledger row');
  }

  /** The verification restart's view: same answer, and not one row more. */
  verify(execution: string, seen: Observation): void {
    if (execution !== this.execution)
      this.wrong.push(`a later restart reports ${execution}, the trial saw ${this.execution ?? '(none)'}`);
    if (seen.rows !== this.rows || seen.ledger.length !== 1) {
      this.#note(`after later restarts: rows ${seen.rows}, ledger rows ${seen.ledger.length}`);
      if (seen.rows > (this.rows ?? 0) || seen.ledger.length > 1) this.double = true;
      else this.wrong.push('rows or ledger row disappeared after later restarts');
      this.rows = seen.rows;
    }
  }
}

/**
 * Modification times of the code every spawned server loads. Each server reads src/ afresh, so an
 * edit during the run means later trials test different code than earlier ones (and a ledger row
 * written by one version is read by another); a failure near such an edit may be that skew.
 */
async function codeSnapshot(): Promise<Map<string, number>> {
  const times = new Map<string, number>();
  for (const top of ['src', 'migrations']) {
    const root = path.join(PROJECT_ROOT, top);
    const entries = await readdir(root, { recursive: true }).catch(() => [] as string[]);
    for (const entry of entries) {
      const file = path.join(top, entry);
      const info = await stat(path.join(PROJECT_ROOT, file)).catch(() => null);
      if (info?.isFile()) times.set(file, info.mtimeMs);
    }
  }
  return times;
}

function codeChanges(before: ReadonlyMap<string, number>, after: ReadonlyMap<string, number>): string[] {
  const clock = (ms: number) => new Date(ms).toISOString().slice(11, 19);
  const changes: string[] = [];
  for (const [file, ms] of after) {
    const was = before.get(file);
    if (was === undefined) changes.push(`${file} (added ${clock(ms)})`);
    else if (was !== ms) changes.push(`${file} (${clock(ms)})`);
  }
  for (const file of before.keys()) if (!after.has(file)) changes.push(`${file} (removed)`);
  return changes.sort();
}

function frontMatterExecution(text: string): string | null {
  try {
    const value = parseApprovalText(text).data.execution;
    return typeof value === 'string' ? value : null;
  } catch {
    return null;
  }
}

async function approvalFileNames(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((name) => ApprovalStore.idOfFileName(name) !== null);
}

/**
 * The path of the first approval file in `dir` not in `known` (after test/helpers/files.ts). Gives
 * up early once `settled()` says the call that should write it has ended without writing one.
 */
async function nextApprovalFile(
  dir: string,
  known: ReadonlySet<string>,
  settled: () => string | null,
): Promise<string> {
  const deadline = Date.now() + FILE_DEADLINE_MS;
  while (Date.now() < deadline) {
    // Read before listing: a call that ended before the listing had its chance to write the file.
    const ended = settled();
    for (const name of await approvalFileNames(dir)) {
      if (!known.has(name)) return path.join(dir, name);
    }
    if (ended !== null) throw new Error(`no approval file was written; execute_migration ${ended}`);
    await sleep(10);
  }
  throw new Error(`no new approval file appeared in ${dir} within ${FILE_DEADLINE_MS} ms`);
}

/** Polls `file` until `predicate` holds; returns the last text either way. */
async function waitForFileText(
  file: string,
  predicate: (text: string) => boolean,
): Promise<{ ok: boolean; text: string }> {
  const deadline = Date.now() + OUTCOME_DEADLINE_MS;
  let text = '';
  while (Date.now() < deadline) {
    text = await readFile(file, 'utf8').catch(() => '');
    if (predicate(text)) return { ok: true, text };
    await sleep(20);
  }
  return { ok: false, text };
}

interface Tally {
  trials: number;
  once: number;
  unknownOk: number;
  double: number;
  lost: number;
  stuck: number;
  wrong: number;
  hung: number;
  ms: number;
}

const emptyTally = (): Tally => ({
  trials: 0,
  once: 0,
  unknownOk: 0,
  double: 0,
  lost: 0,
  stuck: 0,
  wrong: 0,
  hung: 0,
  ms: 0,
});

function add(tally: Tally, r: Trial): void {
  tally.trials += 1;
  tally.ms += r.durationMs;
  if (!r.failed) {
    if (isStepPoint(r.spec.point)) tally.unknownOk += 1;
    else tally.once += 1;
  }
  if (r.double) tally.double += 1;
  if (r.lost) tally.lost += 1;
  if (r.stuck) tally.stuck += 1;
  if (r.wrong.length > 0) tally.wrong += 1;
  if (r.hung) tally.hung += 1;
}

function table(rows: readonly (readonly string[])[]): string[] {
  const widths =
    rows[0]?.map((_, column) => Math.max(...rows.map((row) => (row[column] ?? '').length))) ?? [];
  // The first column is a label, the rest are numbers.
  return rows.map((row) =>
    row
      .map((cell, column) =>
        column === 0 ? cell.padEnd(widths[column] ?? 0) : cell.padStart(widths[column] ?? 0),
      )
      .join('  ')
      .trimEnd(),
  );
}

function describeTrial(r: Trial): string[] {
  const { spec } = r;
  const flags = [
    r.double ? 'DOUBLE EXECUTION' : null,
    r.lost ? 'LOST DECISION' : null,
    r.stuck ? 'STUCK RUNNING' : null,
    r.hung ? `HUNG (killed after ${TRIAL_DEADLINE_MS / 1000} s)` : null,
    ...r.wrong.map((w) => `wrong: ${w}`),
  ].filter((f): f is string => f !== null);
  const lines = [
    `FAILED trial ${spec.index} at ${r.startedAt} (${spec.point}, ${spec.style}, delay ${spec.delayMs} ms, ${spec.timing}) ` +
      `${r.id ?? '(no id)'}: ${flags.join('; ')}`,
    ...r.notes.map((n) => `    ${n}`),
    `    workspace ${r.workspaceDir}`,
  ];
  for (const { role, lines: stderr } of r.stderr()) {
    lines.push(`    --- ${role} stderr (last ${stderr.length} lines) ---`);
    for (const line of stderr) lines.push(`    | ${line}`);
  }
  return lines;
}

async function main(): Promise<number> {
  const options = readOptions();
  const started = Date.now();
  const specs = planTrials(options.seed, options.trials).filter(
    (spec) => options.only === null || options.only.has(spec.index),
  );
  const codeBefore = await codeSnapshot();
  const soak = await Soak.open(options);
  const onSignal = () => {
    say('\ninterrupted: killing the servers and cleaning up');
    soak.interrupt();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const reproduce = [
    `--seed ${options.seed}`,
    ...(options.trials !== MIN_TRIALS ? [`--trials ${options.trials}`] : []),
    ...(options.quick ? ['--quick'] : []),
  ];
  say('approval-gate crash soak: randomized crash/restart trials against Postgres');
  say(
    `seed ${options.seed} (reproduce: npm run soak -- ${reproduce.join(' ')}); ` +
      `${specs.length} trials, ${options.concurrency} workers; node ${process.version}`,
  );
  say(
    `counter table ${soak.counter}, ledger schemas ${soak.schemaPrefix}*; ` +
      `decision deadline ${DECISION_DEADLINE_MS / 1000} s, trial deadline ${TRIAL_DEADLINE_MS / 1000} s, budget ${options.maxMinutes} min`,
  );
  say();

  const budgetEnds = started + options.maxMinutes * 60_000;
  const results: Trial[] = [];
  let next = 0;
  let outOfTime = false;
  const progressEvery = Math.max(1, Math.round(specs.length / 8));
  const worker = async (w: number) => {
    let workspace = await soak.newWorkspace(w);
    for (;;) {
      if (soak.interrupted) break;
      if (Date.now() > budgetEnds) {
        outOfTime = true;
        break;
      }
      const spec = specs[next];
      if (spec === undefined) break;
      next += 1;
      const trial = await soak.runTrial(spec, workspace);
      if (soak.interrupted) break;
      results.push(trial);
      if (options.verbose && !trial.failed) {
        say(
          `trial ${spec.index} (${spec.point}, ${spec.style}, ${spec.delayMs} ms, ${spec.timing}) ${trial.id ?? ''}`,
        );
        for (const note of trial.notes) say(`    ${note}`);
      }
      if (trial.failed) {
        for (const line of describeTrial(trial)) say(line);
        await retire(workspace);
        workspace = await soak.newWorkspace(w);
      }
      if (results.length % progressEvery === 0 || results.length === specs.length) {
        const bad = results.filter((r) => r.failed).length;
        say(
          `  ${results.length}/${specs.length} trials, ${bad} failed, ${((Date.now() - started) / 1000).toFixed(0)} s`,
        );
      }
    }
    await retire(workspace);
  };
  const retire = async (workspace: Workspace) => {
    for (const trial of await soak.retire(workspace)) {
      say(`(found by the verification restart of ${workspace.dir})`);
      for (const line of describeTrial(trial)) say(line);
    }
  };
  try {
    await Promise.all(Array.from({ length: options.concurrency }, (_, i) => worker(i + 1)));
  } finally {
    await soak.close();
  }
  if (soak.interrupted) return 130;

  const byPoint = new Map<Point, Tally>(POINTS.map((p) => [p, emptyTally()]));
  const total = emptyTally();
  for (const r of results) {
    const tally = byPoint.get(r.spec.point);
    if (tally) add(tally, r);
    add(total, r);
  }
  const header = [
    'crash point',
    'trials',
    'executed once',
    'unknown as expected',
    'double exec',
    'lost decisions',
    'stuck running',
    'wrong outcome',
    'hung',
    'avg s',
  ];
  const row = (label: string, t: Tally) => [
    label,
    String(t.trials),
    String(t.once),
    String(t.unknownOk),
    String(t.double),
    String(t.lost),
    String(t.stuck),
    String(t.wrong),
    String(t.hung),
    t.trials > 0 ? (t.ms / t.trials / 1000).toFixed(1) : '-',
  ];
  say();
  for (const line of table([
    header,
    ...POINTS.map((p) => row(p, byPoint.get(p) ?? emptyTally())),
    row('total', total),
  ]))
    say(line);

  const count = (predicate: (r: Trial) => boolean) => results.filter(predicate).length;
  say();
  say(
    `mix: save in-place ${count((r) => r.spec.style === 'in-place')}, rename ${count((r) => r.spec.style === 'rename')}; ` +
      `after-file-write decided with the dying server ${count((r) => r.spec.point === 'after-file-write' && r.spec.timing === 'with-first-server')}, ` +
      `while down ${count((r) => r.spec.timing === 'while-down')}, after restart ${count((r) => r.spec.timing === 'after-restart')}`,
  );
  say(
    `double executions: ${total.double}   lost decisions: ${total.lost}   stuck running: ${total.stuck}   ` +
      `wrong outcomes: ${total.wrong}   hung trials: ${total.hung}`,
  );
  const notRun = specs.length - results.length;
  if (outOfTime || notRun > 0)
    say(`NOT RUN: ${notRun} trials (time budget of ${options.maxMinutes} min exhausted)`);
  for (const problem of soak.problems) say(`PROBLEM: ${problem}`);
  const changed = codeChanges(codeBefore, await codeSnapshot());
  if (changed.length > 0) {
    say(
      `note: ${changed.length} file(s) under src/ or migrations/ changed during the run (UTC times), so not ` +
        `every trial ran the same code: ${changed.join(', ')}`,
    );
  }
  say(`wall time ${((Date.now() - started) / 1000).toFixed(1)} s; seed ${options.seed}`);
  const pass = results.every((r) => !r.failed) && notRun === 0 && soak.problems.length === 0;
  say(pass ? 'PASS' : 'FAIL');
  return pass ? 0 : 1;
}

runMain('soak', main);
