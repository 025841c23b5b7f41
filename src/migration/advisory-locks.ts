import { createHash } from 'node:crypto';

/** First key of every advisory lock this gate takes ('APRG'), so it cannot collide with others' locks. */
export const ADVISORY_LOCK_NAMESPACE = 0x41505247;

/** Second key: a stable 32-bit hash of a name. A collision only serialises two unrelated things. */
export function advisoryLockKey(name: string): number {
  return createHash('sha256').update(name).digest().readInt32BE(0);
}

/** The advisory lock that serialises runs of one approval of one installation. */
export function executionLockKeys(installation: string, approvalId: string): [number, number] {
  return [ADVISORY_LOCK_NAMESPACE, advisoryLockKey(`${installation}/${approvalId}`)];
}
