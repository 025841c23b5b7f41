/**
 * Test-only fault injection. When APPROVAL_GATE_CRASH_AT names a point, the process kills itself
 * with SIGKILL there: no `finally`, no flush, exactly like a power cut or an OOM kill. The crash and
 * soak tests use it to prove that every step of the pipeline can die and be resumed without a
 * second execution or a lost decision. Unset (always, outside those tests) it does nothing.
 */

export const CRASH_POINTS = [
  'after-file-write',
  'after-decision-recorded',
  'after-advisory-lock',
  'mid-migration',
  'after-commit',
  'after-step-started',
  'after-step-executed',
] as const;
export type CrashPoint = (typeof CRASH_POINTS)[number];

export function crashPoint(point: CrashPoint): void {
  if (process.env.APPROVAL_GATE_CRASH_AT === point) {
    process.stderr.write(`approval-gate: crashing on purpose at ${point} (APPROVAL_GATE_CRASH_AT)\n`);
    process.kill(process.pid, 'SIGKILL');
  }
}
