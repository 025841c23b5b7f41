import matter from 'gray-matter';
import { Document, isMap, isScalar, parseDocument, Scalar, type ToStringOptions } from 'yaml';
import { describeError, GateError } from '../errors.js';
import { codeText } from './markdown.js';

/**
 * The approval file is a user interface, not a code path. Front matter is YAML 1.2 (core schema),
 * parsed as data only: no JavaScript engines, no duplicate keys, bounded aliases, no custom tags.
 */

export const MAX_FILE_BYTES = 256 * 1024;
const MAX_ALIASES = 50;

export interface ParsedApprovalFile {
  readonly data: Readonly<Record<string, unknown>>;
  /** The Markdown after the front matter, line endings normalised to \n. */
  readonly body: string;
}

function refuseEngine(name: string) {
  return () => {
    throw new GateError(
      'FRONT_MATTER_LANGUAGE',
      `Front matter must be plain YAML between --- lines; "---${name}" front matter is refused (it would run code).`,
    );
  };
}

/** The YAML reader gray-matter is given: strict, data-only. */
export function parseYamlData(text: string): Record<string, unknown> {
  const document = parseDocument(text, {
    schema: 'core',
    uniqueKeys: true,
    prettyErrors: true,
    customTags: [],
    strict: true,
  });
  // Warnings include unresolved tags (`!!js/function`): in a decision file, any doubt is a refusal.
  const problem = document.errors[0] ?? document.warnings[0];
  if (problem) {
    throw new GateError('FRONT_MATTER_YAML', `The front matter is not valid YAML: ${problem.message}`);
  }
  let data: unknown;
  try {
    data = document.toJS({ maxAliasCount: MAX_ALIASES });
  } catch (error) {
    throw new GateError('FRONT_MATTER_YAML', `The front matter is not valid YAML: ${describeError(error)}`);
  }
  if (data === null || data === undefined) return {};
  if (typeof data !== 'object' || Array.isArray(data)) {
    throw new GateError('FRONT_MATTER_SHAPE', 'The front matter must be a mapping of keys to values.');
  }
  return data as Record<string, unknown>;
}

const FRONT_MATTER = /^\uFEFF?---[ \t]*(?:\r\n|\r|\n)((?:[\s\S]*?(?:\r\n|\r|\n))?)---[ \t]*(?:\r\n|\r|\n|$)/;

/**
 * The front-matter block at the start of `text` as written (an optional BOM, `---` lines, any line
 * ending), its YAML, and the rest; null when the text has none. The one place that finds the block for
 * the server's own edits; reading a decision goes through gray-matter (parseApprovalText).
 */
export function splitFrontMatter(text: string): { block: string; yaml: string; body: string } | null {
  const match = FRONT_MATTER.exec(text);
  if (!match) return null;
  return { block: match[0], yaml: match[1] ?? '', body: text.slice(match[0].length) };
}

/** Strips a UTF-8 BOM and normalises CRLF/CR so files from any editor read the same. */
export function normaliseText(text: string): string {
  return text.replace(/^\uFEFF/, '').replace(/\r\n?/g, '\n');
}

/** Decodes bytes as UTF-8, refusing invalid sequences instead of replacing them silently. */
export function decodeUtf8(bytes: Uint8Array): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new GateError('FILE_ENCODING', 'The file is not valid UTF-8.');
  }
}

/** Splits and parses an approval file's text. Throws GateError for anything but plain YAML front matter. */
export function parseApprovalText(raw: string): ParsedApprovalFile {
  const text = normaliseText(raw);
  const firstLine = text.slice(0, text.indexOf('\n') === -1 ? text.length : text.indexOf('\n'));
  if (firstLine.trimEnd() !== '---') {
    if (firstLine.startsWith('---')) refuseEngine(firstLine.slice(3).trim())();
    throw new GateError('FRONT_MATTER_MISSING', 'The file must start with front matter between --- lines.');
  }
  if (!/\n---[ \t]*(\n|$)/.test(text.slice(3))) {
    throw new GateError(
      'FRONT_MATTER_UNTERMINATED',
      'The front matter has no closing --- line (is the file half saved?).',
    );
  }
  // Every engine gray-matter could pick is overridden; passing options also bypasses its shared cache.
  const parsed = matter(text, {
    language: 'yaml',
    engines: {
      yaml: { parse: parseYamlData, stringify: refuseEngine('yaml-stringify') },
      js: { parse: refuseEngine('js'), stringify: refuseEngine('js') },
      javascript: { parse: refuseEngine('javascript'), stringify: refuseEngine('javascript') },
      coffee: { parse: refuseEngine('coffee'), stringify: refuseEngine('coffee') },
      coffeescript: { parse: refuseEngine('coffeescript'), stringify: refuseEngine('coffeescript') },
      json: { parse: refuseEngine('json'), stringify: refuseEngine('json') },
      toml: { parse: refuseEngine('toml'), stringify: refuseEngine('toml') },
    },
  } as unknown as Parameters<typeof matter>[1]);
  return { data: parsed.data as Record<string, unknown>, body: parsed.content };
}

const STRING_STYLE: ToStringOptions = {
  defaultStringType: 'QUOTE_DOUBLE',
  defaultKeyType: 'PLAIN',
  lineWidth: 0,
};

/** Renders front matter the way the reference file looks: plain keys, double-quoted strings. */
export function stringifyFrontMatter(data: Record<string, unknown>): string {
  return new Document(data).toString(STRING_STYLE);
}

/** A value to set; `undefined` removes the key. */
export type FrontMatterValue = string | number | boolean | null | undefined;

/**
 * Sets the server's own fields in an existing file's front matter through the YAML Document API, so
 * everything the human wrote (comments, order, quoting) stays as it was. Returns the new file text.
 */
export function updateFrontMatter(raw: string, fields: Readonly<Record<string, FrontMatterValue>>): string {
  const text = normaliseText(raw);
  const split = splitFrontMatter(text);
  if (!split) throw new GateError('FRONT_MATTER_MISSING', 'The file has no front matter to update.');
  const document = parseDocument(split.yaml, { schema: 'core', uniqueKeys: true });
  if (document.errors.length > 0 || (document.contents !== null && !isMap(document.contents))) {
    throw new GateError(
      'FRONT_MATTER_YAML',
      'The front matter cannot be updated because it is not valid YAML.',
    );
  }
  let changed = false;
  for (const [key, raw] of Object.entries(fields)) {
    // Values can carry text the agent controls (a RAISE message in execution_error): YAML escapes
    // C0 controls in quotes, not bidirectional overrides, so those are shown visibly here.
    const value = typeof raw === 'string' ? codeText(raw) : raw;
    const existing = document.get(key, true);
    if (value === undefined) {
      if (document.has(key)) {
        document.delete(key);
        changed = true;
      }
      continue;
    }
    if (isScalar(existing) && existing.value === value) continue;
    const node = new Scalar(value);
    // A signature spans lines: a block keeps it readable, as a human would paste it.
    if (typeof value === 'string')
      node.type = value.includes('\n') ? Scalar.BLOCK_LITERAL : Scalar.QUOTE_DOUBLE;
    document.set(key, node);
    changed = true;
  }
  // Untouched files stay byte-for-byte as the human saved them (and cause no watcher events).
  if (!changed) return raw;
  const yamlText = document.toString(STRING_STYLE);
  return `---\n${yamlText}---\n${split.body}`;
}
