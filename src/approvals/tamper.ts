import { parseDocument } from 'yaml';
import type { ApprovalRequest } from './request.js';

/**
 * What executes is exactly what was shown. Before a decision counts, the file must still show the
 * server's record: front matter target and hash, the Execution Command block, and the Preview SQL.
 * The Preview is display, but it is what most reviewers read, so a Preview that differs from what
 * would run voids the approval just like an edited command.
 */

export interface TamperFinding {
  readonly code: 'COMMAND_TAMPERED' | 'PREVIEW_TAMPERED' | 'TARGET_TAMPERED';
  readonly message: string;
}

/** The content of the first fenced block under `heading`, before the next heading of any level ≤ 3. */
export function fencedBlockUnder(body: string, heading: string): string | null {
  const lines = body.split('\n');
  const start = lines.findIndex((line) => line.trim() === heading);
  if (start === -1) return null;
  for (let i = start + 1; i < lines.length; i += 1) {
    const line = lines[i] ?? '';
    if (/^#{1,3} /.test(line)) return null;
    const open = /^(`{3,})[\w-]*\s*$/.exec(line);
    if (!open) continue;
    const ticks = open[1] ?? '```';
    const end = lines.findIndex((l, j) => j > i && l.trimEnd() === ticks);
    return end === -1 ? null : lines.slice(i + 1, end).join('\n');
  }
  return null;
}

/** The text under `heading` up to the next heading, for the "no rollback" sentence. */
function sectionText(body: string, heading: string): string | null {
  const lines = body.split('\n');
  const start = lines.findIndex((line) => line.trim() === heading);
  if (start === -1) return null;
  const end = lines.findIndex((line, j) => j > start && /^#{1,3} /.test(line));
  return lines.slice(start + 1, end === -1 ? undefined : end).join('\n');
}

const normaliseEol = (text: string) => text.replace(/\r\n?/g, '\n').replace(/\n+$/, '');

function differingParameters(block: string, request: ApprovalRequest): string[] | null {
  const document = parseDocument(block, { schema: 'core', uniqueKeys: true, customTags: [] });
  if (document.errors.length > 0 || document.warnings.length > 0) return null;
  let data: unknown;
  try {
    data = document.toJS({ maxAliasCount: 0 });
  } catch {
    return null;
  }
  if (typeof data !== 'object' || data === null) return null;
  const shown = data as { method?: unknown; parameters?: Record<string, unknown> };
  const parameters = shown.parameters;
  if (shown.method !== 'execute_migration' || typeof parameters !== 'object' || parameters === null)
    return null;
  const { command } = request;
  const expected: Record<string, unknown> = {
    environment: command.environment,
    database: command.database,
    migration_file: command.migration_file,
    sql: command.sql,
    rollback_sql: command.rollback_sql,
    dry_run: command.dry_run,
    backup_before: command.backup_before,
  };
  const differing = Object.entries(expected)
    .filter(([key, value]) => (parameters[key] ?? null) !== value)
    .map(([key]) => key);
  const extra = Object.keys(parameters).filter((key) => !(key in expected));
  return [...differing, ...extra];
}

/** Returns the first way the file no longer shows the server's record, or null when it does. */
export function findTampering(
  data: Readonly<Record<string, unknown>>,
  body: string,
  request: ApprovalRequest,
): TamperFinding | null {
  const { command } = request;
  for (const [key, expected] of [
    ['environment', command.environment],
    ['database', command.database],
    ['request_hash', request.request_hash],
  ] as const) {
    if (data[key] !== expected) {
      return {
        code: 'TARGET_TAMPERED',
        message: `${key} in the front matter was changed from "${expected}" to ${JSON.stringify(data[key] ?? null)}.`,
      };
    }
  }
  const block = fencedBlockUnder(body, '### Execution Command');
  const differing = block === null ? null : differingParameters(block, request);
  if (differing === null) {
    return {
      code: 'COMMAND_TAMPERED',
      message: 'The Execution Command block is missing or no longer valid YAML.',
    };
  }
  if (differing.length > 0) {
    return {
      code: 'COMMAND_TAMPERED',
      message: `The Execution Command block was edited after the request (${differing.join(', ')} differ from the server's record).`,
    };
  }
  const preview = fencedBlockUnder(body, '### Migration SQL');
  if (preview === null || normaliseEol(preview) !== normaliseEol(command.sql)) {
    return {
      code: 'PREVIEW_TAMPERED',
      message: "The Preview's Migration SQL differs from the SQL that would run.",
    };
  }
  const rollbackShown =
    command.rollback_sql === null
      ? (sectionText(body, '### Rollback SQL') ?? '').includes('No rollback SQL was provided')
      : normaliseEol(fencedBlockUnder(body, '### Rollback SQL') ?? '') === normaliseEol(command.rollback_sql);
  if (!rollbackShown) {
    return {
      code: 'PREVIEW_TAMPERED',
      message: "The Preview's Rollback SQL differs from the server's record.",
    };
  }
  return null;
}
