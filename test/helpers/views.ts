import MarkdownIt from 'markdown-it';

/*
 * What a human actually sees of an approval file, in the two ways the README promises it can be
 * reviewed: a Markdown preview (rendered HTML) and a terminal (`cat`). Tests assert on these views,
 * not on the raw text, because the attacks hide text from a view while leaving it in the file.
 */

// The default preset: CommonMark plus GFM tables and strikethrough, raw HTML passed through.
const preview = new MarkdownIt({ html: true });

const ENTITIES: Readonly<Record<string, string>> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

export function decodeEntities(html: string): string {
  return html.replace(/&(#x[0-9a-f]+|#[0-9]+|[a-z]+);/gi, (whole, name: string) => {
    if (name.startsWith('#x') || name.startsWith('#X'))
      return String.fromCodePoint(parseInt(name.slice(2), 16));
    if (name.startsWith('#')) return String.fromCodePoint(parseInt(name.slice(1), 10));
    return ENTITIES[name.toLowerCase()] ?? whole;
  });
}

/** HTML as a browser shows it: comments (an unclosed one hides the rest of the page) removed. */
function withoutComments(html: string): string {
  return html.replace(/<!--[\s\S]*?(?:-->|$)/g, '');
}

/** Every heading below the title the server writes, in order, as a reader of the preview sees them. */
export const SERVER_HEADINGS = [
  'Proposed Action',
  'Action Details',
  'Execution Command',
  'Reasoning',
  'Context',
  'Why This Action?',
  'Expected Outcome',
  'Risk Analysis',
  'Impact Assessment',
  'Potential Risks',
  'Safeguards',
  'Compliance & Policy',
  'Preview',
  'Migration SQL',
  'Rollback SQL',
  'Impact Analysis',
  'Approval Decision',
  'If APPROVED:',
  'If REJECTED:',
  'If EXPIRED:',
  'Human Instructions',
] as const;

export interface RenderedView {
  /** The HTML a preview builds, with comments removed (they are not shown). */
  readonly html: string;
  /** What a reader sees: tags removed, entities decoded. */
  readonly text: string;
  /** The text of each `<pre><code>` block, decoded, in order. */
  readonly codeBlocks: readonly string[];
  /** The text of each visible h1–h6 heading, decoded, in order. */
  readonly headings: readonly string[];
}

const stripTags = (html: string) => decodeEntities(html.replace(/<[^>]*>/g, ''));

export function renderedText(markdown: string): RenderedView {
  const html = withoutComments(preview.render(markdown));
  return {
    html,
    text: stripTags(html),
    codeBlocks: [...html.matchAll(/<pre><code[^>]*>([\s\S]*?)<\/code><\/pre>/g)].map((m) =>
      decodeEntities(m[1] ?? ''),
    ),
    headings: [...html.matchAll(/<h[1-6]>([\s\S]*?)<\/h[1-6]>/g)].map((m) => stripTags(m[1] ?? '')),
  };
}

/*
 * A small terminal: printable characters overwrite the cell under the cursor; `\r` returns to the
 * start of the line, `\b` moves left, `\n` starts a new line; CSI (`ESC [ … final`) and OSC
 * (`ESC ] … BEL or ESC \`) sequences are consumed, `ESC[K`/`ESC[0K` erase to the end of the line,
 * `ESC[1K` to the cursor, `ESC[2K` the whole line; `ESC[nA` moves up (so earlier lines can be
 * erased). Other escapes are dropped. Returns the lines as they stay on screen.
 */
export function terminalView(text: string): string[] {
  const lines: string[][] = [[]];
  let row = 0;
  let column = 0;
  const line = () => {
    while (lines.length <= row) lines.push([]);
    return lines[row] as string[];
  };
  for (let i = 0; i < text.length; i += 1) {
    const char = text[i] ?? '';
    if (char === '\n') {
      row += 1;
      column = 0;
      line();
    } else if (char === '\r') {
      column = 0;
    } else if (char === '\b') {
      column = Math.max(0, column - 1);
    } else if (char === '\t') {
      column = (Math.floor(column / 8) + 1) * 8;
    } else if (char === '\x1b' || char === '\x9b' || char === '\x9d') {
      const csi = char === '\x9b' || text[i + 1] === '[';
      const osc = char === '\x9d' || text[i + 1] === ']';
      let j = char === '\x1b' ? i + 2 : i + 1;
      if (csi) {
        const match = /^([0-?]*)[ -/]*([@-~])/.exec(text.slice(j));
        if (match) {
          const parameter = match[1] ?? '';
          const final = match[2] ?? '';
          const current = line();
          if (final === 'K') {
            if (parameter === '2') current.fill(' ');
            else if (parameter === '1') current.fill(' ', 0, column + 1);
            else current.length = Math.min(current.length, column);
          } else if (final === 'A') {
            row = Math.max(0, row - Math.max(1, Number(parameter) || 1));
          } else if (final === 'G') {
            column = Math.max(0, (Number(parameter) || 1) - 1);
          }
          j += match[0].length;
        }
        i = j - 1;
      } else if (osc) {
        while (j < text.length && text[j] !== '\x07' && !(text[j] === '\x1b' && text[j + 1] === '\\')) j += 1;
        i = text[j] === '\x1b' ? j + 1 : j;
      } else {
        i += 1; // a two-character escape such as ESC c
      }
    } else if (char >= ' ' && char !== '\x7f') {
      const current = line();
      while (current.length < column) current.push(' ');
      current[column] = char;
      column += 1;
    }
  }
  return lines.map((cells) => cells.join('').trimEnd());
}
