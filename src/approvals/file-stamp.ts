import { lstatSync, type BigIntStats } from 'node:fs';

/**
 * What the file looked like when it was last read: enough to tell, with one lstat and without
 * reading it, that it has not changed since (a save writes new content or times, a rename-save
 * brings a new inode). `none`: missing or not stat-able, which never proves anything.
 */
export type FileStamp =
  | {
      readonly kind: 'file';
      readonly ino: bigint;
      readonly size: bigint;
      readonly mtimeNs: bigint;
      readonly ctimeNs: bigint;
    }
  | { readonly kind: 'none' };

export function stampOf(stats: BigIntStats | null): FileStamp {
  return stats === null
    ? { kind: 'none' }
    : { kind: 'file', ino: stats.ino, size: stats.size, mtimeNs: stats.mtimeNs, ctimeNs: stats.ctimeNs };
}

/**
 * A file changed within this long before it was read may change again with the same size and the
 * same times (file times tick in jiffies locally, in seconds or worse on some file systems), so its
 * stamp proves nothing yet: it is read once more on the next re-check.
 */
export const RACY_STAMP_MS = 2000;

/**
 * True when `now` proves the file is the one read at `readAtMs` (wall clock, as file times are):
 * the same inode, size and times, and those times were already old enough at the read.
 */
export function unchangedSinceRead(
  read: { readonly stamp: FileStamp; readonly readAtMs: number },
  now: FileStamp,
): boolean {
  const was = read.stamp;
  if (was.kind !== 'file') return false;
  const racy = Number(was.mtimeNs / 1_000_000n) >= read.readAtMs - RACY_STAMP_MS;
  return !racy && sameStamp(was, now);
}

/** The stamp of `file` now, by one lstat; `none` when it is missing or cannot be stat-ed. */
export function stampFile(file: string): FileStamp {
  try {
    return stampOf(lstatSync(file, { bigint: true, throwIfNoEntry: false }) ?? null);
  } catch {
    // Not stat-able (permissions, I/O): proves nothing, so the file is read.
    return stampOf(null);
  }
}

/** True when both stamps are of one file with the same inode, size and times. */
export function sameStamp(a: FileStamp | undefined, b: FileStamp): boolean {
  return (
    a?.kind === 'file' &&
    b.kind === 'file' &&
    a.ino === b.ino &&
    a.size === b.size &&
    a.mtimeNs === b.mtimeNs &&
    a.ctimeNs === b.ctimeNs
  );
}
