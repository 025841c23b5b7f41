import { realpath } from 'node:fs/promises';
import path from 'node:path';
import type { Config } from '../config.js';
import { GateError } from '../errors.js';

/** `inner` is `outer` or below it; `outer + sep` so that /migrations-evil is not inside /migrations. */
function isWithin(outer: string, inner: string): boolean {
  return inner === outer || inner.startsWith(outer.endsWith(path.sep) ? outer : outer + path.sep);
}

/**
 * migration_file is informational (the SQL that runs is `sql`), but it is shown to reviewers, so it
 * must name a file inside the configured migrations directory: relative, no "..", and, if it exists,
 * not a symlink leading out.
 */
export async function validateMigrationFile(
  file: string | undefined,
  config: Config,
): Promise<string | null> {
  if (file === undefined) return null;
  const shown = file.replaceAll('\0', '\\0');
  const normalised = file.replaceAll('\\', '/');
  const refuse = (why: string) =>
    new GateError('MIGRATION_FILE_INVALID', `migration_file "${shown}" ${why}. Nothing was written.`);
  if ([...file].some((c) => c.charCodeAt(0) < 0x20)) throw refuse('contains control characters');
  if (path.isAbsolute(file) || /^[A-Za-z]:/.test(file) || normalised.startsWith('/'))
    throw refuse('must be a relative path');
  if (normalised.split('/').some((segment) => segment === '..')) throw refuse('must not contain ".."');
  const resolved = path.resolve(config.baseDir, normalised);
  if (!isWithin(config.migrationsDir, resolved)) {
    throw refuse(
      `must lie inside the migrations directory ${path.relative(config.baseDir, config.migrationsDir) || '.'}`,
    );
  }
  const real = await realpath(resolved).catch(() => null);
  const realRoot = await realpath(config.migrationsDir).catch(() => config.migrationsDir);
  if (real !== null && !isWithin(realRoot, real))
    throw refuse('is a link leading outside the migrations directory');
  return normalised;
}
