import { spawn } from 'node:child_process';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { lockEmbeddedDatabase } from '../src/db.js';

describe('embedded database lock', () => {
  it('refuses a second opener while the first holds the data directory, and frees it on release', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'gate-pglite-'));
    const dataDir = path.join(dir, 'pgdata');
    const release = lockEmbeddedDatabase('main_db', dataDir);
    // A live process other than us owns it:
    const sleeper = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 10000)']);
    try {
      const lockFile = path.join(dir, '.pgdata.approval-gate.lock');
      expect(await readFile(lockFile, 'utf8')).toBe(String(process.pid));
      release();
      await writeFile(lockFile, String(sleeper.pid));
      expect(() => lockEmbeddedDatabase('main_db', dataDir)).toThrow(/open in another process/);
    } finally {
      sleeper.kill('SIGKILL');
      await new Promise((resolve) => sleeper.once('exit', resolve));
    }
    // The owner died without releasing: the lock is stale and taken over.
    const again = lockEmbeddedDatabase('main_db', dataDir);
    again();
  });
});
