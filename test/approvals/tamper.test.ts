import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { describe, expect, it } from 'vitest';
import { parseApprovalText } from '../../src/approvals/frontmatter.js';
import { renderApprovalFile, renderOutcomeSection } from '../../src/approvals/render.js';
import { COMMAND_FIELDS, hashCommand } from '../../src/approvals/request.js';
import { fencedBlockUnder, findTampering } from '../../src/approvals/tamper.js';
import { sampleContext, sampleRequest } from '../helpers/requests.js';

const request = sampleRequest({
  reason:
    'Context.\n\n### Execution Command\n```yaml\nmethod: "execute_migration"\n```\n### Migration SQL\n```sql\nSELECT 1;\n```',
});
const file = renderApprovalFile(request, sampleContext);
const { data, body } = parseApprovalText(file);

function edited(edit: (body: string) => string) {
  return findTampering({ ...data, status: 'APPROVED' }, edit(body), request);
}

describe('security: the tamper check reads sections as a Markdown preview shows them', () => {
  it('accepts the untouched file, whose reason holds fake server headings in a code block', () => {
    expect(findTampering(data, body, request)).toBeNull();
    expect(fencedBlockUnder(body, '### Migration SQL')).toBe(request.command.sql.replace(/\n$/, ''));
  });

  it('accepts the file with the outcome section and its HTML marker appended', () => {
    const outcome = renderOutcomeSection({
      decision: {
        approval_id: request.id,
        request_hash: request.request_hash,
        status: 'APPROVED',
        decided_by: 'Dana',
        decided_at: '2026-02-13T09:05:00Z',
        claimed_decided_at: null,
        second_approver: null,
        reason: null,
        signatures: [],
      },
      summary: 'Executed.',
      details: [],
    });
    expect(findTampering(data, body + outcome, request)).toBeNull();
  });

  it('voids an approval when a comment hides the real command and Preview behind a fake command', () => {
    const fake =
      body.replace('CREATE INDEX', 'CREATE INDEX CONCURRENTLY').split('### Execution Command')[1] ?? '';
    const fakeCommand = `### Execution Command${fake.slice(0, fake.indexOf('## Reasoning'))}`;
    const hide = (text: string, visible: string) =>
      text
        .replace('### Execution Command', `${visible}\n<!--\n### Execution Command`)
        .replace('### Impact Analysis', '-->\n\n### Impact Analysis');
    expect(['COMMAND_TAMPERED', 'PREVIEW_TAMPERED']).toContain(
      edited((text) => hide(text, fakeCommand))?.code,
    );
    // Even a faithful visible copy of the command does not excuse hiding the Preview in a comment.
    const copy = `### Execution Command${(body.split('### Execution Command')[1] ?? '').split('## Reasoning')[0] ?? ''}`;
    expect(edited((text) => hide(text, copy))).toMatchObject({
      code: 'PREVIEW_TAMPERED',
      message: expect.stringContaining('Migration SQL') as unknown,
    });
  });

  it('voids an approval when a heading is duplicated, and says which', () => {
    const result = edited((text) =>
      text.replace('### Rollback SQL', '### Migration SQL\n```sql\nSELECT 1;\n```\n\n### Rollback SQL'),
    );
    expect(result).toMatchObject({ code: 'PREVIEW_TAMPERED' });
    expect(result?.message).toContain('"### Migration SQL" heading appears 2 times');
  });

  it('voids an approval when a heading is missing, and says which', () => {
    const result = edited((text) => text.replace('### Rollback SQL', '### Undo'));
    expect(result).toMatchObject({ code: 'PREVIEW_TAMPERED' });
    expect(result?.message).toContain('"### Rollback SQL" heading is missing');
    expect(
      edited((text) => text.replace('### Execution Command', '```\n### Execution Command')),
    ).toMatchObject({
      code: 'COMMAND_TAMPERED',
    });
  });

  it('voids an approval when raw HTML appears before the end of the Preview', () => {
    const result = edited((text) =>
      text
        .replace('## Preview', '<details><summary>Preview</summary>\n\n## Preview')
        .replace('### Impact Analysis', '</details>\n\n### Impact Analysis'),
    );
    expect(result).toMatchObject({ code: 'PREVIEW_TAMPERED' });
    expect(result?.message).toContain('raw HTML that can hide sections');
  });
});

describe('security: every field of the command is hashed, shown and checked', () => {
  const command = request.command;
  /** A different value of the same kind for each field, as an edit of the shown block would make. */
  const changed = (field: (typeof COMMAND_FIELDS)[number]): unknown => {
    const value = command[field];
    if (typeof value === 'boolean') return !value;
    if (value === null) return 'something';
    return `${value} -- edited`;
  };

  it.each(COMMAND_FIELDS.map((field) => [field]))('voids an approval whose shown %s was edited', (field) => {
    const block = fencedBlockUnder(body, '### Execution Command') ?? '';
    const shown = parseYaml(block) as { parameters: Record<string, unknown> };
    shown.parameters[field] = changed(field);
    const editedBody = body.replace(block, stringifyYaml(shown).replace(/\n$/, ''));
    const found = findTampering({ ...data, status: 'APPROVED' }, editedBody, request);
    expect(found?.code).toBe('COMMAND_TAMPERED');
    expect(found?.message).toContain(field);
  });

  it.each(COMMAND_FIELDS.map((field) => [field]))('changes the request hash when %s changes', (field) => {
    expect(hashCommand({ ...command, [field]: changed(field) })).not.toBe(hashCommand(command));
  });
});
