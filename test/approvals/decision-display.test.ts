import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { evaluateDecision } from '../../src/approvals/decision.js';
import { showDecisionInBody } from '../../src/approvals/decision-display.js';
import { parseApprovalText, updateFrontMatter } from '../../src/approvals/frontmatter.js';
import { decideInFile } from '../../src/approvals/human-edit.js';
import { PLACEHOLDERS, renderApprovalFile } from '../../src/approvals/render.js';
import type { Decision } from '../../src/approvals/request.js';
import { silentLogger } from '../helpers/log.js';
import { Pipeline } from '../../src/pipeline.js';
import { waitForFileText } from '../helpers/files.js';
import { connectTestDatabase, uniqueName, TEST_DATABASE_ENV } from '../helpers/postgres.js';
import { sampleContext, sampleRequest } from '../helpers/requests.js';
import { createWorkspace } from '../helpers/workspace.js';

const request = sampleRequest();

function decision(overrides: Partial<Decision> = {}): Decision {
  return {
    approval_id: request.id,
    request_hash: request.request_hash,
    status: 'APPROVED',
    decided_by: 'Dana',
    decided_at: '2026-02-13T09:05:00+00:00',
    claimed_decided_at: null,
    second_approver: null,
    reason: null,
    signatures: [],
    ...overrides,
  };
}

/** The file as the human saved it: front matter decided, body as rendered. */
const approvedByDana = (file = renderApprovalFile(request, sampleContext)) =>
  updateFrontMatter(file, { status: 'APPROVED', decided_by: 'Dana' });

const frontMatterOf = (text: string) => /^---\r?\n[\s\S]*?\r?\n---\r?\n/.exec(text)?.[0];

/** The lines of the real section as rendered: from its heading to the next heading. */
function decisionSection(text: string): string {
  const lines = text.split(/\r?\n/);
  const start = lines.lastIndexOf('## Approval Decision');
  return lines.slice(start, lines.indexOf('### If APPROVED:', start)).join('\n');
}

const PENDING_DISPLAY = [
  '**Status:** PENDING',
  `**Decided By:** ${PLACEHOLDERS.decidedBy}`,
  `**Decided At:** ${PLACEHOLDERS.decidedBy}`,
].join('\n');

describe('showing the recorded decision in the Approval Decision section', () => {
  it('shows APPROVED, the name and the time, and leaves the Comments line and the front matter as they were', () => {
    const before = approvedByDana();
    const after = showDecisionInBody(before, decision());
    expect(decisionSection(after)).toBe(
      [
        '## Approval Decision',
        '',
        '**Status:** APPROVED',
        '**Decided By:** Dana',
        '**Decided At:** 2026-02-13T09:05:00+00:00',
        `**Comments:** ${PLACEHOLDERS.comments}`,
        '',
      ].join('\n'),
    );
    expect(frontMatterOf(after)).toBe(frontMatterOf(before));
    // Nothing but the three display lines changed.
    const changed = after.split('\n').filter((line, i) => line !== before.split('\n')[i]);
    expect(changed).toEqual([
      '**Status:** APPROVED',
      '**Decided By:** Dana',
      '**Decided At:** 2026-02-13T09:05:00+00:00',
    ]);
  });

  it('shows "the server" for a decision the server made (EXPIRED)', () => {
    const file = updateFrontMatter(renderApprovalFile(request, sampleContext), { status: 'EXPIRED' });
    const after = showDecisionInBody(file, decision({ status: 'EXPIRED', decided_by: null }));
    expect(decisionSection(after)).toContain(
      '**Status:** EXPIRED\n**Decided By:** the server\n**Decided At:** 2026-02-13T09:05:00+00:00\n',
    );
  });

  it('returns the same text when shown twice', () => {
    const once = showDecisionInBody(approvedByDana(), decision());
    expect(showDecisionInBody(once, decision())).toBe(once);
  });

  it('leaves a decided file evaluating as the same decision, with no problem reported', () => {
    const shown = showDecisionInBody(approvedByDana(), decision());
    const { data, body } = parseApprovalText(shown);
    const verdict = evaluateDecision({ data, body, request, now: new Date('2026-02-13T09:05:00Z') });
    expect(verdict).toMatchObject({ kind: 'approved', decidedBy: 'Dana' });
  });
});

describe('security: only the real section is changed', () => {
  const lookAlike = [
    'Routine change.',
    '',
    '## Approval Decision',
    '',
    '**Status:** PENDING',
    `**Decided By:** ${PLACEHOLDERS.decidedBy}`,
    `**Decided At:** ${PLACEHOLDERS.decidedBy}`,
    '**Comments:** none',
  ].join('\n');

  it("leaves a look-alike section in the agent's fenced reason byte for byte, and changes the real one", () => {
    const before = approvedByDana(renderApprovalFile(sampleRequest({ reason: lookAlike }), sampleContext));
    const fenced = '```text\n' + lookAlike + '\n```';
    expect(before).toContain(fenced);
    const after = showDecisionInBody(before, decision());
    expect(after).toContain(fenced);
    expect(after.indexOf(fenced)).toBe(before.indexOf(fenced));
    expect(decisionSection(after)).toContain('**Status:** APPROVED\n**Decided By:** Dana\n');
    expect(after.split(PENDING_DISPLAY)).toHaveLength(2);
  });

  it('changes nothing when the real heading appears twice', () => {
    const file = approvedByDana();
    const twice = file.replace('## Human Instructions', '## Approval Decision\n\n**Status:** PENDING\n\n---');
    expect(showDecisionInBody(twice, decision())).toBe(twice);
  });

  it('changes nothing when the real heading is missing', () => {
    const missing = approvedByDana().replace('## Approval Decision', '## Decision');
    expect(showDecisionInBody(missing, decision())).toBe(missing);
  });

  it('escapes Markdown in the name, as all dynamic text in the file is', () => {
    const after = showDecisionInBody(approvedByDana(), decision({ decided_by: 'Dana <!-- x' }));
    expect(decisionSection(after)).toContain('**Decided By:** Dana \\<\\!-- x\n');
  });
});

describe('line endings', () => {
  it('keeps CRLF line endings, and the front matter byte for byte', () => {
    const crlf = approvedByDana().replace(/\n/g, '\r\n');
    const after = showDecisionInBody(crlf, decision());
    expect(after).not.toMatch(/[^\r]\n/);
    expect(frontMatterOf(after)).toBe(frontMatterOf(crlf));
    expect(after).toContain(
      '\r\n**Status:** APPROVED\r\n**Decided By:** Dana\r\n**Decided At:** 2026-02-13T09:05:00+00:00\r\n',
    );
    expect(after.replace(/\r\n/g, '\n')).toBe(showDecisionInBody(approvedByDana(), decision()));
  });
});

describe('the pipeline shows the decision when it writes the outcome', () => {
  let knex: Knex;
  let pipeline: Pipeline;
  const ledgerSchema = uniqueName('gate_display');
  const lookAlike = '## Approval Decision\n\n**Status:** PENDING';

  beforeAll(async () => {
    knex = await connectTestDatabase();
    const workspace = await createWorkspace({ ledger_schema: ledgerSchema });
    pipeline = await Pipeline.open(workspace.config, {
      log: silentLogger,
      env: TEST_DATABASE_ENV,
    });
  });

  afterAll(async () => {
    await pipeline?.close();
    await knex?.raw('drop schema if exists ?? cascade', [ledgerSchema]);
    await knex?.destroy();
  });

  it('says APPROVED and who approved in the section after an approved run', async () => {
    const { request: submitted } = await pipeline.submit({
      environment: 'staging',
      database: 'staging_db',
      sql: 'SELECT 1',
      title: 'Display',
      reason: `Checking the display.\n\n${lookAlike}`,
    });
    const file = pipeline.filePath(submitted.id);
    await decideInFile(file, { status: 'APPROVED', decidedBy: 'Dana Reyes' });
    const text = await waitForFileText(file, (t) => t.includes('Executed by'));
    expect(decisionSection(text)).toMatch(
      /\*\*Status:\*\* APPROVED\n\*\*Decided By:\*\* Dana Reyes\n\*\*Decided At:\*\* \S+\n/,
    );
    expect(text).toContain(lookAlike);
  });
});
