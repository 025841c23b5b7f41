/** What the benchmark scripts share: output, options, percentiles and the top-level handler. */

export const say = (line = ''): void => {
  process.stdout.write(`${line}\n`);
};

export const sleep = (ms: number): Promise<void> => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A bad command-line option or environment value: reported without a stack, exit code 2. */
export class UsageError extends Error {}

/** An integer option from argv or the environment, within bounds; `fallback` when not given. */
export function integerOption(
  name: string,
  raw: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new UsageError(`${name} must be an integer from ${min} to ${max}, not "${raw}".`);
  }
  return value;
}

/** Nearest rank: always a value that was actually measured; NaN for an empty sample. */
export function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
}

/** Runs a benchmark's main, sets its exit code, and prints errors once (usage errors without stack). */
export function runMain(name: string, main: () => Promise<number>): void {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      if (error instanceof UsageError) {
        process.stderr.write(`${name}: ${error.message}\n`);
        process.exitCode = 2;
        return;
      }
      process.stderr.write(
        `${name}: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
      );
      process.exitCode = 1;
    },
  );
}

/** Where the benches find Postgres when no URL is given: the test server on this machine. */
export const DEFAULT_DATABASE_URL = 'postgres://postgres@127.0.0.1:5432/test';

/**
 * The Postgres a bench may use: BENCH_DATABASE_URL, else TEST_DATABASE_URL, else the local default,
 * and only ever on this machine (the benches create and drop schemas and flood the server).
 */
export function loopbackDatabaseUrl(env: NodeJS.ProcessEnv = process.env): URL {
  const rawUrl = env.BENCH_DATABASE_URL ?? env.TEST_DATABASE_URL ?? DEFAULT_DATABASE_URL;
  let databaseUrl: URL;
  try {
    databaseUrl = new URL(rawUrl);
  } catch {
    throw new UsageError('BENCH_DATABASE_URL is not a postgres:// URL.');
  }
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(databaseUrl.hostname)) {
    throw new UsageError(`runs only against a Postgres on this machine, not ${databaseUrl.hostname}.`);
  }
  return databaseUrl;
}

/** Columns whose index is in `numeric` are right-aligned. */
export function table(rows: readonly (readonly string[])[], numeric: ReadonlySet<number>): string[] {
  const widths =
    rows[0]?.map((_, column) => Math.max(...rows.map((row) => (row[column] ?? '').length))) ?? [];
  return rows.map((row) =>
    row
      .map((cell, column) =>
        numeric.has(column) ? cell.padStart(widths[column] ?? 0) : cell.padEnd(widths[column] ?? 0),
      )
      .join('  ')
      .trimEnd(),
  );
}
