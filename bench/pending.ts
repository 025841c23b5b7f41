/**
 * A server holding many pending approvals: its memory, its CPU while nobody does anything, and one
 * decision among them against a decision on an empty gate, interleaved in the same run.
 */
import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import type { SaveStyle } from '../src/approvals/human-edit.js';
import { sleep } from './common.js';
import {
  decide,
  humanPause,
  inParallel,
  requestAndLeavePending,
  type RequestFiles,
  type Spawned,
} from './harness.js';

/** Clock ticks per second of /proc/<pid>/stat's utime and stime. */
const CLOCK_TICKS = (() => {
  try {
    const value = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isInteger(value) && value > 0 ? value : 100;
  } catch {
    return 100;
  }
})();

/** Resident set size of a process, from /proc/<pid>/status (VmRSS), in MB (2^20 bytes). */
export async function residentMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1];
  if (kb === undefined) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(kb) / 1024;
}

/** CPU seconds a process has used (user + system), from /proc/<pid>/stat. */
export async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces: fields are counted after its closing parenthesis.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

/** Share of one core each process used over the same `ms` of idleness, in %. */
export async function idleCpuPercent(pids: readonly number[], ms: number): Promise<number[]> {
  const before = await Promise.all(pids.map(cpuSeconds));
  const started = performance.now();
  await sleep(ms);
  const after = await Promise.all(pids.map(cpuSeconds));
  const elapsed = (performance.now() - started) / 1000;
  return pids.map((_, i) => (100 * ((after[i] ?? 0) - (before[i] ?? 0))) / elapsed);
}

/** Makes `count` requests through execute_migration and leaves them all pending. */
export async function fillWithPending(
  server: Spawned,
  files: RequestFiles,
  schema: string,
  count: number,
  concurrency: number,
): Promise<number> {
  const started = performance.now();
  await inParallel(count, concurrency, (i) => requestAndLeavePending(server, files, schema, `pending_${i}`));
  return performance.now() - started;
}

export interface PairedResult {
  readonly empty: number[];
  readonly pending: number[];
  readonly failures: string[];
}

/**
 * `rounds` decisions on each server, alternating (the first of each pair alternating too), so drift in
 * the machine's load hits both alike.
 */
export async function pairedDecisions(
  empty: { readonly server: Spawned; readonly files: RequestFiles },
  pending: { readonly server: Spawned; readonly files: RequestFiles },
  schema: string,
  rounds: number,
): Promise<PairedResult> {
  const result: PairedResult = { empty: [], pending: [], failures: [] };
  for (let i = 0; i < rounds; i += 1) {
    const style: SaveStyle = i % 2 === 0 ? 'rename' : 'in-place';
    const order = i % 2 === 0 ? (['empty', 'pending'] as const) : (['pending', 'empty'] as const);
    for (const which of order) {
      const target = which === 'empty' ? empty : pending;
      const token = `paired_${which}_${i}`;
      const decision = await decide(target.server, target.files, schema, token, style, () =>
        humanPause(50, 150),
      );
      if (decision.latencyMs === null) result.failures.push(`${token}: ${decision.failure ?? ''}`);
      else result[which].push(decision.latencyMs);
    }
  }
  return result;
}
