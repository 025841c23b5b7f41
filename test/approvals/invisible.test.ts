import { describe, expect, it } from 'vitest';
import { assertOneLine, assertVisible, findInvisibleCharacter } from '../../src/approvals/invisible.js';
import { GateError } from '../../src/errors.js';

function refusal(field: string, text: string): GateError {
  try {
    assertVisible(field, text);
  } catch (error) {
    if (error instanceof GateError) return error;
    throw error;
  }
  throw new Error(`${JSON.stringify(text)} was accepted`);
}

describe('security: agent text a reviewer cannot see is refused', () => {
  const cases: Array<[string, string, string]> = [
    ['RIGHT-TO-LEFT OVERRIDE (Trojan Source)', "SELECT '\u202E' AS x", 'U+202E'],
    ['LEFT-TO-RIGHT EMBEDDING', 'SELECT 1 \u202A', 'U+202A'],
    ['POP DIRECTIONAL FORMATTING', 'SELECT 1 \u202C', 'U+202C'],
    ['RIGHT-TO-LEFT ISOLATE', '\u2067DROP TABLE t', 'U+2067'],
    ['POP DIRECTIONAL ISOLATE', 'x\u2069', 'U+2069'],
    ['ZERO WIDTH SPACE', 'DROP\u200BTABLE', 'U+200B'],
    ['ZERO WIDTH NON-JOINER', 'a\u200Cb', 'U+200C'],
    ['ZERO WIDTH JOINER', 'a\u200Db', 'U+200D'],
    ['WORD JOINER', 'a\u2060b', 'U+2060'],
    ['a byte order mark inside the text', 'SELECT 1;\uFEFF', 'U+FEFF'],
    ['a lone carriage return', 'UPDATE t SET x = 1;\rSELECT 1', 'U+000D'],
    ['NUL', 'SELECT 1\u0000', 'U+0000'],
    ['ESCAPE (terminal control sequences)', 'SELECT 1 -- \u001b[2K', 'U+001B'],
    ['BACKSPACE', 'SELECT 1\b\b', 'U+0008'],
    ['a C1 control', 'SELECT 1\u0085', 'U+0085'],
    ['LINE SEPARATOR', 'SELECT 1\u2028DROP TABLE t', 'U+2028'],
    ['SOFT HYPHEN', 'DR\u00ADOP', 'U+00AD'],
    ['a tag character', 'SELECT 1 \u{E0041}', 'U+E0041'],
    ['HANGUL FILLER (a blank letter)', 'SELECT \u3164 FROM t', 'U+3164'],
    ['a lone surrogate', 'SELECT 1 \uD800', 'U+D800'],
  ];

  it.each(cases)('refuses %s, naming the character and its position', (_label, text, codePoint) => {
    const error = refusal('sql', text);
    expect(error.code).toBe('INVISIBLE_CHARACTER');
    expect(error.message).toContain(codePoint);
    expect(error.message).toMatch(/^sql contains U\+[0-9A-F]{4,6} .+ at line \d+, column \d+\./);
  });

  it('reports the line and column of the character', () => {
    const found = findInvisibleCharacter('SELECT 1;\nSELECT \u{1F600} \u202E;');
    expect(found).toEqual({
      codePoint: 'U+202E',
      name: 'RIGHT-TO-LEFT OVERRIDE',
      line: 2,
      column: 10,
    });
  });

  it('accepts tabs, line feeds, CRLF line ends, emoji and non-Latin scripts', () => {
    for (const text of [
      'SELECT\t1;\nSELECT 2;\r\nSELECT 3',
      "INSERT INTO t VALUES ('😀 👍🏽 ❤️', 'שלום', 'مرحبا', 'こんにちは')",
      'plain ASCII',
    ]) {
      expect(findInvisibleCharacter(text), text).toBeNull();
    }
  });

  it('refuses a title with a line break, which would end the heading it is shown in', () => {
    expect(() => assertOneLine('title', 'Add a column\n# Approved already')).toThrow(
      expect.objectContaining({ code: 'TITLE_NOT_ONE_LINE' }),
    );
    expect(() => assertOneLine('title', 'Add a column\rX')).toThrow(
      expect.objectContaining({ code: 'TITLE_NOT_ONE_LINE' }),
    );
    expect(() => assertOneLine('title', 'Add a column')).not.toThrow();
  });
});
