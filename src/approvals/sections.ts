import MarkdownIt from 'markdown-it';
import type { Token } from 'markdown-it';
import { splitFrontMatter } from './frontmatter.js';

/**
 * The approval file's sections as a Markdown preview shows them: CommonMark with raw HTML recognised,
 * so a heading or fence inside an HTML block (a comment, say) or inside a code block (the agent's
 * reason) is not a heading. The gate finds its own sections this way, never by the first line that
 * looks like one: agent text cannot forge a section the server reads.
 */

const markdown = new MarkdownIt('commonmark', { html: true }).enable('table');

export type HeadingTag = 'h1' | 'h2' | 'h3';

/**
 * The block tokens of `body`. One evaluation of a save reads the same body several times (tamper
 * check, Status line, Comments line): the last body's tokens are kept, so it is parsed once.
 */
let lastParsed: { readonly body: string; readonly tokens: readonly Token[] } | null = null;

export function parseBlocks(body: string): readonly Token[] {
  if (lastParsed?.body !== body) lastParsed = { body, tokens: markdown.parse(body, {}) };
  return lastParsed.tokens;
}

const isSectionBreak = (token: Token) =>
  token.type === 'heading_open' && ['h1', 'h2', 'h3'].includes(token.tag);

/** Where `heading` appears as a real heading of level `tag` (not text in a fence or HTML). */
export function headingPositions(tokens: readonly Token[], tag: HeadingTag, heading: string): number[] {
  const positions: number[] = [];
  tokens.forEach((token, i) => {
    if (token.type === 'heading_open' && token.tag === tag && tokens[i + 1]?.content.trim() === heading)
      positions.push(i);
  });
  return positions;
}

/** The block tokens after the heading at `start`, up to the next h1–h3 heading. */
export function sectionTokens(tokens: readonly Token[], start: number): Token[] {
  const rest = tokens.slice(start + 3);
  const end = rest.findIndex(isSectionBreak);
  return end === -1 ? rest : rest.slice(0, end);
}

export function fenceIn(section: readonly Token[]): string | null {
  const fence = section.find((token) => token.type === 'fence');
  return fence === undefined ? null : fence.content.replace(/\n$/, '');
}

/**
 * The block tokens under the one real `## <heading>`, up to the next h1–h3 heading; null when the
 * heading is missing or appears more than once (which of two would be the server's?).
 */
export function onlySectionUnder(tokens: readonly Token[], heading: string): Token[] | null {
  const positions = headingPositions(tokens, 'h2', heading);
  const [only] = positions;
  return positions.length === 1 && only !== undefined ? sectionTokens(tokens, only) : null;
}

/**
 * The lines of text (paragraphs, as written) directly under the one real `## <heading>`, before the
 * next h1–h3 heading; null when the heading is missing or appears more than once.
 */
export function paragraphLinesUnder(body: string, heading: string): string[] | null {
  return (
    onlySectionUnder(parseBlocks(body), heading)
      ?.filter((token) => token.type === 'inline')
      .flatMap((token) => token.content.split('\n')) ?? null
  );
}

/**
 * Whether the file already carries the server's outcome section: its marker as a raw HTML block of
 * its own, not the same text quoted inside the agent's reason (a fence), which would otherwise make the
 * server skip writing the outcome, or skip resuming an approved request after a restart.
 */
export function hasOutcomeMarker(text: string, marker: string): boolean {
  // Without the marker's text anywhere there is nothing to parse for.
  if (!text.includes(marker)) return false;
  const body = splitFrontMatter(text)?.body ?? text;
  return parseBlocks(body).some((token) => token.type === 'html_block' && token.content.trim() === marker);
}
