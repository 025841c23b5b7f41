/**
 * Every piece of non-constant text in an approval file goes through one of these helpers, so that
 * nothing the agent (or an SQL identifier, or a Postgres error message) writes can become Markdown
 * structure: no heading, HTML, comment, link, list, table row or fence of its own, and no line that
 * a terminal's `cat` would overwrite. Pure functions, no Markdown parser needed.
 *
 * How invisible characters are shown (one rule for the whole file):
 * - outside code blocks, a line break (`\r\n`, `\r` or `\n`) is shown as `⏎`, so the text stays on
 *   its line: a code span or a paragraph cannot hold a line break safely (a blank line would end the
 *   block and the next line could start a heading, an HTML comment or a fence);
 * - everywhere, other control characters (C0 but tab and line feed, a lone carriage return, DEL,
 *   C1), bidirectional overrides and Unicode line separators are shown as `<U+XXXX>`: a terminal
 *   would act on them (ESC sequences clear lines, `\r` and backspace overwrite text) and an editor
 *   may reorder text around them.
 */

const LINE_BREAK = /\r\n|\r|\n/g;
const LINE_BREAK_SYMBOL = '⏎';
// In code blocks a line feed (alone or after \r) is a real line end; everything else here is shown.
const INVISIBLE =
  // eslint-disable-next-line no-control-regex
  /\r(?!\n)|[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/** Replaces each invisible character (see above) by `show(hex code point)`. */
export function replaceInvisible(text: string, show: (hex: string) => string): string {
  return text.replace(INVISIBLE, (char) =>
    show((char.codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0')),
  );
}

/** Text for inside a fenced block: lines kept, every other invisible character shown. */
export function codeText(text: string): string {
  return replaceInvisible(text, (hex) => `<U+${hex}>`);
}

/** Text for one line: line breaks as `⏎`, other invisible characters as `<U+XXXX>`. */
export function singleLine(text: string): string {
  return codeText(text.replace(LINE_BREAK, LINE_BREAK_SYMBOL));
}

function longestBacktickRun(text: string): number {
  return Math.max(0, ...[...text.matchAll(/`+/g)].map((m) => m[0].length));
}

/**
 * A fenced code block. The fence is a run of backticks longer than any run in the text (at least 3):
 * a closing fence must be at least as long as the opening one and of the same character, so no line
 * of the text (not a run of backticks, not a `~~~` line) can close it early.
 */
export function codeBlock(language: string, text: string): string {
  const ticks = '`'.repeat(Math.max(3, longestBacktickRun(text) + 1));
  // The info string of a backtick fence may not contain backticks or line breaks.
  const info = language.replace(/[`\s]/g, '');
  return `${ticks}${info}\n${codeText(text).replace(/\r?\n$/, '')}\n${ticks}`;
}

/**
 * A code span that shows `text` exactly, on one line. Its backtick run is longer than any run in the
 * text, so the text cannot close it; it is padded with a space when the text starts or ends with a
 * backtick, or starts and ends with a space (CommonMark strips one such space on each side).
 */
export function inlineCode(text: string): string {
  const shown = singleLine(text);
  if (shown === '') return '` `';
  const ticks = '`'.repeat(longestBacktickRun(shown) + 1);
  const pad =
    shown.startsWith('`') ||
    shown.endsWith('`') ||
    (shown.startsWith(' ') && shown.endsWith(' ') && shown.trim() !== '')
      ? ' '
      : '';
  return `${ticks}${pad}${shown}${pad}${ticks}`;
}

/**
 * A code span for a GFM table cell: table rows are split on `|` before code spans are parsed, even
 * inside them, so pipes are escaped as `\|` (the renderer shows a plain `|`).
 */
export function tableCell(text: string): string {
  return inlineCode(text).replace(/\|/g, '\\|');
}

/*
 * Punctuation escaped wherever it appears: each can open inline markup (emphasis, code span, link,
 * image, autolink, raw HTML or comment, entity, strikethrough, table cell, a heading's closing `#`s)
 * in CommonMark, GFM or Obsidian (`%%` comments hide text there, `$` starts math). CommonMark lets any
 * ASCII punctuation be backslash-escaped, and an escaped character is always literal text. `( )`
 * only matter right after a `]`, which is escaped, so they are left alone for readability, and so is
 * `_` between two letters or digits (`loyalty_tier`), which can neither open nor close emphasis.
 */
const ALWAYS_ESCAPED = /[\\`*[\]<>#!|~&$^%]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])/g;
/*
 * The rest (`- + . = : ...`) is markup only at the start of a line (list, thematic break, setext
 * underline, "1." / "1)" ordered list), and since line breaks are folded the only line start the text
 * can have is its own: there, the first character is escaped if it is punctuation, or the `.`/`)`
 * after leading digits. Escaping there is harmless when the text is not at a line start.
 */
const LEADING_MARKER = /^(?:([0-9]+)([.)])|([!-/:-@[-`{-~]))/;

/**
 * Prose that renders as exactly this text, inside the line it is written on: whitespace at the ends
 * trimmed (leading spaces could make an indented code block), line breaks and invisible characters
 * shown visibly, and markup characters backslash-escaped.
 */
export function plainText(text: string): string {
  const shown = singleLine(text).trim();
  if (shown === '') return '';
  return shown
    .replace(ALWAYS_ESCAPED, (char) => `\\${char}`)
    .replace(LEADING_MARKER, (whole, digits?: string, listDelimiter?: string, first?: string) =>
      // A first character already escaped above starts with `\`, itself an escape.
      first === '\\' ? whole : digits !== undefined ? `${digits}\\${listDelimiter}` : `\\${first}`,
    );
}
