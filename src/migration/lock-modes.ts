/**
 * Postgres' table-level lock modes (https://www.postgresql.org/docs/15/explicit-locking.html), weakest
 * first, with what each keeps the application from doing while it is held.
 */
export const LOCK_MODES = [
  'ACCESS SHARE',
  'ROW SHARE',
  'ROW EXCLUSIVE',
  'SHARE UPDATE EXCLUSIVE',
  'SHARE',
  'SHARE ROW EXCLUSIVE',
  'EXCLUSIVE',
  'ACCESS EXCLUSIVE',
] as const;

export type LockMode = (typeof LOCK_MODES)[number];

export function stronger(a: LockMode | undefined, b: LockMode): LockMode {
  return a !== undefined && LOCK_MODES.indexOf(a) >= LOCK_MODES.indexOf(b) ? a : b;
}

/** SELECT takes ACCESS SHARE, which only ACCESS EXCLUSIVE conflicts with. */
export function blocksReads(mode: LockMode): boolean {
  return mode === 'ACCESS EXCLUSIVE';
}

/** INSERT, UPDATE and DELETE take ROW EXCLUSIVE, which SHARE and every stronger mode conflict with. */
export function blocksWrites(mode: LockMode): boolean {
  return LOCK_MODES.indexOf(mode) >= LOCK_MODES.indexOf('SHARE');
}

/** What the application cannot do while `mode` is held, in words. */
export function blockedBy(mode: LockMode): 'reads and writes' | 'writes' | 'nothing the application does' {
  if (blocksReads(mode)) return 'reads and writes';
  if (blocksWrites(mode)) return 'writes';
  return 'nothing the application does';
}
