import type { Token } from 'markdown-it';
import { parseDocument } from 'yaml';
import { codeText } from './markdown.js';
import { fenceIn, headingPositions, parseBlocks, sectionTokens } from './sections.js';
import { COMMAND_FIELDS, type ApprovalRequest } from './request.js';

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

const SERVER_HEADINGS = ['Execution Command', 'Migration SQL', 'Rollback SQL'] as const;
type ServerHeading = (typeof SERVER_HEADINGS)[number];

/**
 * The content of the first fenced block under the one real `### <heading>` heading, before the next
 * h1–h3 heading; null when there is no such block, or the heading is missing or appears twice.
 */
export function fencedBlockUnder(body: string, heading: string): string | null {
  const tokens = parseBlocks(body);
  const positions = headingPositions(tokens, 'h3', heading.replace(/^### /, ''));
  const [only] = positions;
  return positions.length === 1 && only !== undefined ? fenceIn(sectionTokens(tokens, only)) : null;
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
  const expected: Record<string, unknown> = Object.fromEntries(
    COMMAND_FIELDS.map((field) => [field, command[field]]),
  );
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
  const tokens = parseBlocks(body);
  const sections = new Map<ServerHeading, Token[]>();
  let rollbackStart: number | null = null;
  for (const heading of SERVER_HEADINGS) {
    const positions = headingPositions(tokens, 'h3', heading);
    const [only] = positions;
    if (positions.length !== 1 || only === undefined) {
      return {
        code: heading === 'Execution Command' ? 'COMMAND_TAMPERED' : 'PREVIEW_TAMPERED',
        message:
          positions.length === 0
            ? `The "### ${heading}" heading is missing (a heading hidden in an HTML comment or a code block does not count).`
            : `The "### ${heading}" heading appears ${positions.length} times; the file must show exactly one.`,
      };
    }
    sections.set(heading, sectionTokens(tokens, only));
    if (heading === 'Rollback SQL') rollbackStart = only;
  }
  const block = fenceIn(sections.get('Execution Command') ?? []);
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
  // The server writes raw HTML only after the Preview (the outcome marker); before that, an HTML
  // block could hide the server's sections from a preview while leaving them in the text.
  const rollbackSection = sections.get('Rollback SQL') ?? [];
  const previewEnd = (rollbackStart ?? 0) + 3 + rollbackSection.length;
  if (tokens.slice(0, previewEnd).some((token) => token.type === 'html_block')) {
    return {
      code: 'PREVIEW_TAMPERED',
      message: 'The file contains raw HTML that can hide sections (before the end of the Preview).',
    };
  }
  const preview = fenceIn(sections.get('Migration SQL') ?? []);
  if (preview === null || normaliseEol(preview) !== normaliseEol(codeText(command.sql))) {
    return {
      code: 'PREVIEW_TAMPERED',
      message: "The Preview's Migration SQL differs from the SQL that would run.",
    };
  }
  const rollbackShown =
    command.rollback_sql === null
      ? rollbackSection.some(
          (token) => token.type === 'inline' && token.content.includes('No rollback SQL was provided'),
        )
      : normaliseEol(fenceIn(rollbackSection) ?? '') === normaliseEol(codeText(command.rollback_sql));
  if (!rollbackShown) {
    return {
      code: 'PREVIEW_TAMPERED',
      message: "The Preview's Rollback SQL differs from the server's record.",
    };
  }
  return null;
}
