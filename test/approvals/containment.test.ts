import { parse as parseYaml } from 'yaml';
import { describe, expect, it } from 'vitest';
import { parseApprovalText } from '../../src/approvals/frontmatter.js';
import { codeText, singleLine } from '../../src/approvals/markdown.js';
import {
  renderApprovalFile,
  renderOutcomeSection,
  RESULT_MARKER,
  type RenderContext,
} from '../../src/approvals/render.js';
import { hashCommand, type ApprovalRequest, type MigrationCommand } from '../../src/approvals/request.js';
import { findTampering } from '../../src/approvals/tamper.js';
import { RISK_TITLES, type RiskFinding } from '../../src/migration/risk-codes.js';
import { sampleCommand, sampleContext, sampleRequest } from '../helpers/requests.js';
import { decodeEntities, renderedText, SERVER_HEADINGS, terminalView } from '../helpers/views.js';

/*
 * Everything the agent writes (title, reason, SQL, rollback, migration file) and everything it can
 * steer indirectly (quoted identifiers in relation names and finding messages, RAISE EXCEPTION text
 * in the outcome) is rendered into the approval file. None of it may change what a reviewer sees of
 * the server's own sections, in a Markdown preview or in a terminal.
 */

interface Payload {
  readonly name: string;
  readonly title?: string;
  readonly reason?: string;
  readonly command?: Partial<MigrationCommand>;
  readonly requestedBy?: string;
  /** A relation name the SQL could carry as a quoted identifier. */
  readonly relation?: string;
  readonly finding?: Partial<RiskFinding>;
}

const FAKE_PREVIEW =
  '## Preview\n\n### Migration SQL\n```sql\nSELECT 1;\n```\n\n### Rollback SQL\n```sql\nSELECT 1;\n```\n';
const ticks = (n: number) => '`'.repeat(n);
const DROP = 'DROP TABLE customers;\n';

const PAYLOADS: readonly Payload[] = [
  {
    name: 'a comment opened in the title and closed in the reason around a fake Preview',
    title: 'Harmless tidy-up <!--',
    reason: `-->\n${FAKE_PREVIEW}<!--`,
    command: { sql: DROP, rollback_sql: null },
  },
  { name: 'a reason ending in an unclosed comment', reason: 'Routine change.\n<!--', command: { sql: DROP } },
  { name: 'a reason closing a comment', reason: '--> and <!-- again -->', command: { sql: DROP } },
  {
    name: 'a reason with a fake Migration SQL section and fenced block',
    reason: `Context.\n\n### Migration SQL\n\`\`\`sql\nSELECT 1;\n\`\`\`\n\n### Execution Command\n\`\`\`yaml\nmethod: "execute_migration"\n\`\`\``,
  },
  {
    name: 'a reason with thematic breaks and setext underlines',
    reason: 'Line one\n---\nLine two\n===\n***',
  },
  {
    name: 'a title with a line break',
    title: 'Harmless\n### Execution Command\n```yaml',
    command: { sql: DROP },
  },
  {
    name: 'backtick runs of length 3 to 10 in SQL literals and comments',
    command: {
      sql: [3, 4, 5, 6, 7, 8, 9, 10]
        .map((n) => `SELECT '${ticks(n)}' AS a; -- ${ticks(n)} end\n`)
        .join('')
        .concat(`${ticks(10)}\n## Approval Decision\n`),
      rollback_sql: `SELECT '${ticks(4)}sql';\n${ticks(3)}\n`,
    },
  },
  {
    name: 'tilde fences in the SQL and the reason',
    reason: '~~~\n### Rollback SQL\n~~~',
    command: { sql: "SELECT 1;\n~~~\nSELECT '~~~~~';\n" },
  },
  {
    name: 'HTML tags that hide or run things',
    title: '<details><summary>ok</summary>',
    reason:
      '<details>\n<summary>Click</summary>\n\n<script>alert(1)</script>\n<style>h3{display:none}</style>',
    command: { sql: DROP },
  },
  {
    name: 'javascript links and images',
    title: '[approve](javascript:alert(1)) ![x](http://evil/x.png)',
    reason: '[click here](javascript:alert(1)) <http://evil.example> <a href="x">a</a>',
  },
  {
    name: 'pipes, backticks and comments in a quoted relation name',
    relation: 'a|b`<!--',
    command: { sql: 'CREATE TABLE "a|b`<!--" (c int);\n' },
  },
  {
    name: 'a relation name with a line break and a heading',
    relation: 'x\n\n### Migration SQL\n|x|',
    command: { sql: 'CREATE TABLE "x\n\n### Migration SQL\n|x|" (c int);\n' },
  },
  {
    name: 'finding messages, locks and safer advice carrying markup',
    finding: {
      message: 'Drops "a<!--".\n\n# Looks safe\n-->',
      safer: '[use this](javascript:alert(1)) `x` | y',
      lock: 'ACCESS EXCLUSIVE on "a|b" <!--',
    },
  },
  {
    name: 'entity references that decode to a comment',
    title: '&lt;!-- x',
    reason: '&lt;!-- &#60;!-- &#x3C;!--',
  },
  {
    name: 'a 10,000 character reason ending in an unclosed fence',
    reason: `${'Because. '.repeat(1110)}\n${ticks(3)}`,
    command: { sql: DROP },
  },
  {
    name: 'a migration file name and requester with markup',
    command: { migration_file: 'm`<!--|\n### x.sql' },
    requestedBy: 'agent <!-- **x**',
  },
  {
    name: 'a rollback with a comment and a fence',
    command: { rollback_sql: `-- <!--\n${ticks(5)}\nSELECT 1;\n` },
  },
  {
    name: 'terminal escapes and carriage returns that would overwrite lines in cat',
    reason: 'ok\x1b[1A\x1b[2K\x1b[1A\x1b[2K\rhidden\x1b]0;title\x07',
    command: { sql: "DROP TABLE customers; -- \r                          \x1b[2K\nSELECT '\b\b\b';\n" },
  },
  { name: 'emphasis, headings and lists at the start of the title', title: '# - 1. *a* _b_ ~~c~~ $x$' },
  {
    name: 'bidirectional overrides in the title and SQL',
    title: 'abc\u202edcba',
    command: { sql: 'SELECT 1; -- \u202e;1 TCELES\n' },
  },
];

function build(payload: Payload): { request: ApprovalRequest; context: RenderContext } {
  const command = sampleCommand(payload.command);
  const request = sampleRequest(
    {
      ...(payload.title !== undefined ? { title: payload.title } : {}),
      ...(payload.reason !== undefined ? { reason: payload.reason } : {}),
      ...(payload.requestedBy !== undefined ? { requested_by: payload.requestedBy } : {}),
      request_hash: hashCommand(command),
    },
    command,
  );
  const relation = payload.relation ?? 'customers';
  const [sampleFinding] = sampleContext.findings;
  const context: RenderContext = {
    ...sampleContext,
    impact: [
      { ...sampleContext.impact[0], name: relation } as RenderContext['impact'][number],
      { name: relation, exists: false, kind: null, estimated_rows: null, total_bytes: null, indexes: null },
    ],
    statements: sampleContext.statements.map((s) => ({ ...s, relations: [relation] })),
    findings: [
      { ...sampleFinding, ...payload.finding } as RiskFinding,
      {
        statement: null,
        code: 'DROP_TABLE',
        severity: 'danger',
        lock: null,
        message: `Drops ${relation}.`,
        safer: null,
      },
    ],
  };
  return { request, context };
}

const shown = (text: string) => codeText(text).replace(/\r?\n$/, '');

describe('security: agent text cannot change what a reviewer sees', () => {
  it.each(PAYLOADS.map((p) => [p.name, p] as const))('%s', (_name, payload) => {
    const { request, context } = build(payload);
    const file = renderApprovalFile(request, context);
    const { data, body } = parseApprovalText(file);
    const view = renderedText(body);

    // The server's sections, each once, in order, and nothing else as a heading but the title.
    expect(view.headings[0]).toMatch(/^Approval Request: /);
    expect(view.headings.slice(1)).toEqual(SERVER_HEADINGS);
    // Every finding's headline and message is visible text.
    for (const finding of context.findings) {
      expect(view.text).toContain(RISK_TITLES[finding.code]);
    }
    // No agent text became HTML, a comment, a link or an image.
    for (const tag of [
      '<a ',
      '<img',
      '<script',
      '<style',
      '<details',
      '<summary',
      '<!--',
      '<h4',
      '<h5',
      '<h6',
    ]) {
      expect(view.html).not.toContain(tag);
    }
    expect(view.html.match(/<hr>/g)).toHaveLength(1);
    // Relation names stay whole in their table cells: every row has its header's number of cells.
    const cells = [...view.html.matchAll(/<td><code>([\s\S]*?)<\/code><\/td>/g)].map((m) =>
      decodeEntities(m[1] ?? ''),
    );
    expect(cells).toContain(singleLine(context.impact[0]?.name ?? ''));
    for (const table of view.html.match(/<table>[\s\S]*?<\/table>/g) ?? []) {
      const width = (table.match(/<th>/g) ?? []).length;
      for (const row of table.match(/<tr>[\s\S]*?<\/tr>/g) ?? []) {
        expect((row.match(/<t[dh]>/g) ?? []).length).toBe(width);
      }
    }

    // The SQL is shown exactly, in one Preview block; the rollback too; the reason is shown whole.
    const sqlBlocks = view.codeBlocks.filter(
      (block) => block.replace(/\n$/, '') === shown(request.command.sql),
    );
    expect(sqlBlocks).toHaveLength(1);
    if (request.command.rollback_sql !== null) {
      expect(view.codeBlocks.map((b) => b.replace(/\n$/, ''))).toContain(shown(request.command.rollback_sql));
    } else {
      expect(view.text).toContain('No rollback SQL was provided');
    }
    expect(view.codeBlocks.map((b) => b.replace(/\n$/, ''))).toContain(shown(request.reason));
    // The Execution Command block (the first code block) holds the exact SQL.
    const command = parseYaml(view.codeBlocks[0] ?? '') as { parameters: { sql: string } };
    expect(command.parameters.sql).toBe(request.command.sql);

    // The title stays on the heading's line.
    const titleLine = body.split('\n').findIndex((line) => line.startsWith('# Approval Request: '));
    expect(body.split('\n')[titleLine + 1]).toBe('');

    // In a terminal, every line of the SQL is on screen, in the Preview as in the file.
    const screen = terminalView(file);
    for (const line of shown(request.command.sql).split('\n')) {
      expect(screen).toContain(line.trimEnd());
    }

    // The tamper check finds the real sections, not the agent's fake ones.
    expect(findTampering(data, body, request)).toBeNull();
  });

  it('keeps error text with comments and line breaks inside the Outcome section', () => {
    const { request, context } = build({ name: 'outcome' });
    const error = 'ERROR: boom <!--\n\n## Approval Decision\n`x` [a](javascript:1) -->\r\x1b[2K';
    const file =
      renderApprovalFile(request, context) +
      renderOutcomeSection({
        decision: {
          approval_id: request.id,
          request_hash: request.request_hash,
          status: 'APPROVED',
          decided_by: 'Dana <!-- Reyes',
          decided_at: '2026-02-13T09:05:00Z',
          claimed_decided_at: null,
          second_approver: null,
          reason: null,
          signatures: [],
        },
        summary: 'Failed <!-- hidden',
        details: [`Error: ${error}`],
      });
    const { data, body } = parseApprovalText(file);
    expect(body.split(RESULT_MARKER)).toHaveLength(2);
    const view = renderedText(body);
    expect(view.headings.slice(1)).toEqual([...SERVER_HEADINGS, 'Outcome']);
    expect(view.html).not.toContain('<a ');
    expect(view.text).toContain('Dana <!-- Reyes');
    expect(view.text).toContain('Failed <!-- hidden');
    expect(view.text).toContain(
      'Error: ERROR: boom <!--⏎⏎## Approval Decision⏎`x` [a](javascript:1) -->⏎<U+001B>[2K',
    );
    // On screen the raw line keeps its escapes, but nothing in it can clear or overwrite it.
    expect(
      terminalView(file).some(
        (line) => line.startsWith('- Error: ERROR: boom') && line.endsWith('\\<U+001B\\>\\[2K'),
      ),
    ).toBe(true);
    expect(findTampering(data, body, request)).toBeNull();
  });
});
