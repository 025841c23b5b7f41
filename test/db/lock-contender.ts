/*
 * One process contending for the embedded-database lock, driven by test/db/embedded-lock.test.ts.
 * It says "ready", and on each line "go <epoch ms>" spins until that moment (so that all contenders
 * try within microseconds of each other), tries to take the lock of the data directory given as
 * argument, and says "won", "locked" or "error <message>". A winner keeps the lock until killed.
 */
import { createInterface } from 'node:readline';
import { lockEmbeddedDatabase } from '../../src/db/embedded-lock.js';

const dataDir = process.argv[2] ?? '';
const say = (line: string) => process.stdout.write(`${line}\n`);

say('ready');
for await (const line of createInterface({ input: process.stdin })) {
  const at = /^go (\d+)$/.exec(line);
  if (!at) continue;
  const start = Number(at[1]);
  while (Date.now() < start) {
    // Spinning, not sleeping: a timer would wake each contender at a different moment.
  }
  try {
    await lockEmbeddedDatabase('main_db', dataDir);
    say('won');
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    say(code === 'DATABASE_LOCKED' ? 'locked' : `error ${String(error)}`);
  }
}
