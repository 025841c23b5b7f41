import { splitFrontMatter } from './frontmatter.js';
import { plainText } from './markdown.js';
import type { Decision } from './request.js';
import { onlySectionUnder, parseBlocks } from './sections.js';

/**
 * The "## Approval Decision" section of a new file shows PENDING and placeholders (renderApprovalFile);
 * once a decision is recorded, the server's own edit shows it there. The decision itself is read from
 * the front matter and the server's record only: these lines are a display.
 */

const DECISION_HEADING = 'Approval Decision';

/** Splits on every line break the gate's reader normalises (`\r\n`, `\r`, `\n`), keeping them. */
const LINE_BREAK = /(\r\n|\r|\n)/;

function displayLines(decision: Decision): ReadonlyMap<string, string> {
  return new Map([
    ['**Status:**', decision.status],
    ['**Decided By:**', decision.decided_by ? plainText(decision.decided_by) : 'the server'],
    ['**Decided At:**', plainText(decision.decided_at)],
  ]);
}

/**
 * The file with the Status, Decided By and Decided At lines of its real Approval Decision section
 * showing `decision`. That section is found as a Markdown preview shows it (sections.ts), so a
 * look-alike section inside the agent's fenced reason is never touched; a file whose heading is
 * missing or appears twice is returned as it is. Only those display lines change: the front matter,
 * the Comments line, every other line and every line ending stay byte for byte.
 */
export function showDecisionInBody(fileText: string, decision: Decision): string {
  const frontMatter = splitFrontMatter(fileText)?.block;
  if (frontMatter === undefined) return fileText;
  // Alternating line, line break, line, …: line n of the body is parts[2n].
  const parts = fileText.slice(frontMatter.length).split(LINE_BREAK);
  const lines = parts.filter((_, i) => i % 2 === 0);
  const section = onlySectionUnder(parseBlocks(lines.join('\n')), DECISION_HEADING);
  if (section === null) return fileText;
  const shown = displayLines(decision);
  let changed = false;
  for (const token of section) {
    // Paragraphs of the section itself, not text nested in a list, a quote or a code block.
    if (token.type !== 'paragraph_open' || token.level !== 0 || token.map === null) continue;
    const [start, end] = token.map;
    for (let line = start; line < end; line += 1) {
      const text = parts[2 * line] ?? '';
      const [, indent = '', label = '', trailing = ''] =
        /^([ \t]*)(\*\*(?:Status|Decided By|Decided At):\*\*).*?([ \t]*)$/.exec(text) ?? [];
      const value = shown.get(label);
      if (value === undefined) continue;
      const replacement = `${indent}${label} ${value}${trailing}`;
      if (replacement === text) continue;
      parts[2 * line] = replacement;
      changed = true;
    }
  }
  return changed ? `${frontMatter}${parts.join('')}` : fileText;
}
