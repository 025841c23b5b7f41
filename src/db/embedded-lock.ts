import { createHash } from 'node:crypto';
import {
  closeSync,
  constants,
  ftruncateSync,
  mkdirSync,
  openSync,
  readFileSync,
  realpathSync,
  writeSync,
} from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { GateError } from '../errors.js';

/**
 * PGlite runs inside one process and has no locking of its own: two processes opening one data
 * directory (two Claude Desktop windows, say) would corrupt it. So the first opener takes a lock
 * that the operating system holds for it and drops when the process ends, however it ends.
 *
 * Why not a lock file: one outlives a killed owner, and taking a stale one over ("it is stale,
 * remove it, create mine") races: two openers both see the dead owner, and the second removes the
 * lock the first has just made. proper-lockfile does the same (stat, rmdir, mkdir), only noticing
 * afterwards (onCompromised), and calls a lock stale when its owner has not touched it for a while,
 * which a long PGlite statement blocking the event loop would cause. A kernel-held lock has no stale
 * state, so nothing is taken over and nothing races. Without a native addon (Node has no flock()):
 * on Linux a Unix socket in the abstract namespace (per network namespace), on Windows a named pipe,
 * which exist only while their one listener lives; elsewhere (macOS, BSD) open(2) with O_EXLOCK.
 */

/** The directory, canonical, so two spellings of one directory take one lock. */
function canonicalDataDir(dataDir: string): string {
  const parent = path.dirname(path.resolve(dataDir));
  mkdirSync(parent, { recursive: true });
  return path.join(realpathSync(parent), path.basename(dataDir));
}

function lockedError(name: string, dataDir: string, owner: string | null): GateError {
  const where =
    owner === String(process.pid)
      ? 'is already open in this process'
      : `is open in another process${owner ? ` (pid ${owner})` : ''}`;
  return new GateError(
    'DATABASE_LOCKED',
    `The embedded database "${name}" (${dataDir}) ${where}. ` +
      'PGlite cannot be shared between processes; stop the other one, or use a real Postgres server for several instances.',
    { context: { database: name } },
  );
}

/** Takes the lock of `dataDir` for this process; resolves to its release. DATABASE_LOCKED if taken. */
export async function lockEmbeddedDatabase(name: string, dataDir: string): Promise<() => Promise<void>> {
  const canonical = canonicalDataDir(dataDir);
  const id = createHash('sha256').update(canonical).digest('hex').slice(0, 32);
  if (process.platform === 'linux' || process.platform === 'android') {
    return listenLock(name, dataDir, `\0approval-gate/pglite/${id}`);
  }
  if (process.platform === 'win32')
    return listenLock(name, dataDir, `\\\\?\\pipe\\approval-gate-pglite-${id}`);
  return flockLock(
    name,
    dataDir,
    path.join(path.dirname(canonical), `.${path.basename(canonical)}.approval-gate.lock`),
  );
}

/** Listening on `address` is the lock; a connection to it is answered with the owner's pid. */
async function listenLock(name: string, dataDir: string, address: string): Promise<() => Promise<void>> {
  const server = net.createServer((socket) => {
    // A second opener that hangs up early must not end this process with an unhandled error.
    socket.on('error', () => undefined);
    socket.end(`${process.pid}\n`);
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(address, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error;
    throw lockedError(name, dataDir, await ownerPid(address));
  }
  server.on('error', () => undefined);
  // The lock must not keep an otherwise finished process alive.
  server.unref();
  let released: Promise<void> | null = null;
  return () => (released ??= new Promise<void>((resolve) => server.close(() => resolve())));
}

/** The pid the owner answers with, or null when it does not answer within a second. */
function ownerPid(address: string): Promise<string | null> {
  return new Promise((resolve) => {
    let text = '';
    const socket = net.connect(address);
    const done = (pid: string | null) => {
      socket.destroy();
      resolve(pid);
    };
    socket.setTimeout(1000, () => done(null));
    socket.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
    socket.on('end', () => done(/^\d+$/.test(text.trim()) ? text.trim() : null));
    socket.on('error', () => done(null));
  });
}

/** flock(2) semantics through open(2): O_EXLOCK and O_NONBLOCK, as Darwin and the BSDs number them. */
const O_EXLOCK = 0x20;

async function flockLock(name: string, dataDir: string, lockFile: string): Promise<() => Promise<void>> {
  let fd: number;
  try {
    fd = openSync(lockFile, constants.O_RDWR | constants.O_CREAT | constants.O_NONBLOCK | O_EXLOCK, 0o600);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EAGAIN') throw error;
    const owner = readFileSync(lockFile, 'utf8').trim();
    throw lockedError(name, dataDir, /^\d+$/.test(owner) ? owner : null);
  }
  // The pid is only for the message above; the open descriptor is the lock.
  ftruncateSync(fd);
  writeSync(fd, `${process.pid}\n`, 0);
  let released = false;
  return async () => {
    if (released) return;
    released = true;
    // Never unlinked: a second opener may hold the path open already, and would lock a removed file.
    closeSync(fd);
  };
}
