import { GateError } from '../errors.js';

/**
 * Characters that change what a reviewer sees without being seen themselves: bidirectional controls
 * ("Trojan Source": text shown in another order than Postgres reads it), zero-width characters, a
 * carriage return not followed by a line feed (a terminal returns to the line start and the text
 * after it overwrites what came before), NUL and every other control or format character. Agent text
 * holding one is refused before anything is written; the message names the character and where it is.
 */

/** Names of the characters an attack is most likely to use; others get their Unicode category. */
const NAMES: Readonly<Record<number, string>> = {
  0x00: 'NUL',
  0x08: 'BACKSPACE',
  0x0b: 'LINE TABULATION',
  0x0c: 'FORM FEED',
  0x0d: 'CARRIAGE RETURN (not followed by a line feed)',
  0x1b: 'ESCAPE (starts terminal control sequences)',
  0x7f: 'DELETE',
  0x85: 'NEXT LINE',
  0xad: 'SOFT HYPHEN',
  0x061c: 'ARABIC LETTER MARK',
  0x115f: 'HANGUL CHOSEONG FILLER',
  0x1160: 'HANGUL JUNGSEONG FILLER',
  0x180e: 'MONGOLIAN VOWEL SEPARATOR',
  0x200b: 'ZERO WIDTH SPACE',
  0x200c: 'ZERO WIDTH NON-JOINER',
  0x200d: 'ZERO WIDTH JOINER',
  0x200e: 'LEFT-TO-RIGHT MARK',
  0x200f: 'RIGHT-TO-LEFT MARK',
  0x2028: 'LINE SEPARATOR',
  0x2029: 'PARAGRAPH SEPARATOR',
  0x202a: 'LEFT-TO-RIGHT EMBEDDING',
  0x202b: 'RIGHT-TO-LEFT EMBEDDING',
  0x202c: 'POP DIRECTIONAL FORMATTING',
  0x202d: 'LEFT-TO-RIGHT OVERRIDE',
  0x202e: 'RIGHT-TO-LEFT OVERRIDE',
  0x2060: 'WORD JOINER',
  0x2066: 'LEFT-TO-RIGHT ISOLATE',
  0x2067: 'RIGHT-TO-LEFT ISOLATE',
  0x2068: 'FIRST STRONG ISOLATE',
  0x2069: 'POP DIRECTIONAL ISOLATE',
  0x3164: 'HANGUL FILLER',
  0xfeff: 'ZERO WIDTH NO-BREAK SPACE (byte order mark)',
  0xffa0: 'HALFWIDTH HANGUL FILLER',
};

/** Letters that render as blank space: shown as nothing, though Unicode calls them letters. */
const BLANK_LETTERS = new Set([0x115f, 0x1160, 0x3164, 0xffa0]);

/**
 * Cc (controls), Cf (format: bidi, zero-width, tags), Zl/Zp (line and paragraph separators, which
 * some editors break lines at and Postgres does not), Cs (a lone surrogate: not encodable as UTF-8,
 * so the text hashed would differ from the text sent).
 */
const INVISIBLE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/u;

export interface InvisibleCharacter {
  /** e.g. "U+202E". */
  readonly codePoint: string;
  readonly name: string;
  /** 1-based line and column (in characters) in the text. */
  readonly line: number;
  readonly column: number;
}

function describe(code: number): string {
  const name = NAMES[code];
  if (name) return name;
  const char = String.fromCodePoint(code);
  if (/\p{Cs}/u.test(char)) return 'a lone surrogate (not valid Unicode text)';
  if (/\p{Cc}/u.test(char)) return 'a control character';
  return 'an invisible format character';
}

/** The first character of `text` a reviewer could not see, or null. Tab and line feed are fine. */
export function findInvisibleCharacter(text: string): InvisibleCharacter | null {
  let line = 1;
  let column = 0;
  for (let i = 0; i < text.length; i += 1) {
    const code = text.codePointAt(i) ?? 0;
    const width = code > 0xffff ? 2 : 1;
    column += 1;
    if (code === 0x0a) {
      line += 1;
      column = 0;
    } else if (code === 0x0d && text.charCodeAt(i + 1) === 0x0a) {
      // CRLF: a Windows line end, shown as one by every viewer.
    } else if (code !== 0x09 && (BLANK_LETTERS.has(code) || INVISIBLE.test(text.slice(i, i + width)))) {
      return {
        codePoint: `U+${code.toString(16).toUpperCase().padStart(4, '0')}`,
        name: describe(code),
        line,
        column,
      };
    }
    i += width - 1;
  }
  return null;
}

/** Refuses agent text holding a character the reviewer could not see (INVISIBLE_CHARACTER). */
export function assertVisible(field: string, text: string | null | undefined): void {
  if (text === null || text === undefined) return;
  const found = findInvisibleCharacter(text);
  if (!found) return;
  throw new GateError(
    'INVISIBLE_CHARACTER',
    `${field} contains ${found.codePoint} ${found.name} at line ${found.line}, column ${found.column}. ` +
      'A reviewer could not see it, and it can make the text look different from what runs. ' +
      "Remove it (write it with an escape such as E'\\u202E' or chr() if the data needs it) and resubmit. Nothing was written.",
    { context: { field, codePoint: found.codePoint, line: found.line, column: found.column } },
  );
}

/** Refuses a title that is not one line (it is shown as a heading and in lists). */
export function assertOneLine(field: string, text: string): void {
  const index = text.search(/[\r\n]/);
  if (index === -1) return;
  throw new GateError(
    'TITLE_NOT_ONE_LINE',
    `${field} must be a single line; it has a line break after "${text.slice(0, index)}". Put details in reason. Nothing was written.`,
    { context: { field } },
  );
}
