import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, describe, expect, it } from 'vitest';
import { lockEmbeddedDatabase } from '../../src/db/index.js';
import { PROJECT_ROOT } from '../../src/server/launch.js';

/** A lock-contender process (lock-contender.ts), answering one line per request. */
class Contender {
  readonly #child: ChildProcessWithoutNullStreams;
  readonly #lines: string[] = [];
  readonly #waiting: ((line: string) => void)[] = [];
  readonly exited: Promise<void>;

  constructor(dataDir: string) {
    this.#child = spawn(process.execPath, ['--import', 'tsx', 'test/db/lock-contender.ts', dataDir], {
      cwd: PROJECT_ROOT,
    });
    this.exited = new Promise((resolve) => this.#child.once('exit', () => resolve()));
    createInterface({ input: this.#child.stdout }).on('line', (line) => {
      const waiter = this.#waiting.shift();
      if (waiter) waiter(line);
      else this.#lines.push(line);
    });
  }

  get pid(): number | undefined {
    return this.#child.pid;
  }

  next(): Promise<string> {
    const line = this.#lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  go(at: number): void {
    this.#child.stdin.write(`go ${at}\n`);
  }

  /** SIGKILL: no finally, no release, exactly what a crash leaves behind. */
  async kill(): Promise<void> {
    this.#child.kill('SIGKILL');
    await this.exited;
  }
}

const contenders: Contender[] = [];
const dirs: string[] = [];

async function dataDirIn(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  dirs.push(dir);
  return path.join(dir, 'pgdata');
}

async function contender(dataDir: string): Promise<Contender> {
  const started = new Contender(dataDir);
  contenders.push(started);
  expect(await started.next()).toBe('ready');
  return started;
}

afterEach(async () => {
  await Promise.all(contenders.splice(0).map((c) => c.kill()));
  await Promise.all(dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

describe('embedded database lock', () => {
  it('refuses a second opener while the first holds the data directory, naming its pid, and frees it on release', async () => {
    const dataDir = await dataDirIn('gate-pglite-');
    const holder = await contender(dataDir);
    holder.go(Date.now());
    expect(await holder.next()).toBe('won');
    await expect(lockEmbeddedDatabase('main_db', dataDir)).rejects.toMatchObject({
      code: 'DATABASE_LOCKED',
      message: expect.stringMatching(new RegExp(`open in another process \\(pid ${holder.pid}\\)`)),
    });
    // The owner died without releasing: nothing stale is left to refuse the next opener.
    await holder.kill();
    const release = await lockEmbeddedDatabase('main_db', dataDir);
    await expect(lockEmbeddedDatabase('main_db', path.join(dataDir, '..', 'pgdata'))).rejects.toMatchObject({
      code: 'DATABASE_LOCKED',
    });
    await release();
    await (
      await lockEmbeddedDatabase('main_db', dataDir)
    )();
  });

  it('lets exactly one of several simultaneous openers take over a lock its killed owner left', async () => {
    const dataDir = await dataDirIn('gate-pglite-race-');
    // Two cores here: more contenders than that would only take turns on the CPU.
    const waiting = await Promise.all([contender(dataDir), contender(dataDir), contender(dataDir)]);
    for (let round = 1; round <= 8; round += 1) {
      const at = Date.now() + 200;
      for (const c of waiting) c.go(at);
      const answers = await Promise.all(waiting.map((c) => c.next()));
      expect(answers.filter((a) => a.startsWith('error'))).toEqual([]);
      expect(
        answers.filter((a) => a === 'won'),
        `round ${round}: ${answers.join(', ')}`,
      ).toHaveLength(1);
      // The winner dies holding the lock: the next round races over what it left behind.
      const winner = waiting.splice(answers.indexOf('won'), 1)[0];
      await winner?.kill();
      waiting.push(await contender(dataDir));
    }
  }, 60_000);
});
