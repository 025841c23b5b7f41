import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseApprovalText } from '../src/approvals/frontmatter.js';
import { decideInFile, secondApprovalInFile } from '../src/approvals/human-edit.js';
import { formatList, lineDiff } from '../src/commands.js';
import type { ApprovalSummary } from '../src/pipeline.js';

describe('approvers CLI formatting', () => {
  it('diffs the record against the tampered block line by line', () => {
    expect(lineDiff('a\nb\nc', 'a\nB\nc')).toBe('  a\n- b\n+ B\n  c');
  });

  it('lists id, status, target, age and time left', () => {
    const now = Date.parse('2026-02-13T09:05:00Z');
    const approval: ApprovalSummary = {
      approval_id: 'APR-20260213-003',
      status: 'PENDING',
      execution: 'not_started',
      title: 'Update Production Database Schema',
      environment: 'production',
      database: 'main_db',
      priority: 'critical',
      requested_by: 'agent',
      created_at: '2026-02-13T09:00:00Z',
      expires_at: '2026-02-13T09:15:00Z',
      decided_by: null,
      problem: 'STATUS_INVALID: status "APROVED" is not one of …',
      file: '/x',
    };
    const text = formatList([approval], { json: false, color: false, write: () => undefined }, now);
    expect(text.split('\n')[1]).toMatch(
      /^APR-20260213-003\s+PENDING\s+critical\s+production\/main_db\s+5m00s\s+10m00s\s+Update .* ⚠ STATUS_INVALID$/,
    );
  });
});

describe("the CLI's file edit", () => {
  const refused = [
    '---',
    'approval_id: "APR-20260213-003"',
    'status: "APPROVED"',
    'decided_by: "agent"',
    'gate_error: "SELF_APPROVAL: decided_by \\"agent\\" is the identity that requested this change."',
    '---',
    '# Body',
    '',
  ].join('\n');

  async function fileWith(text: string): Promise<string> {
    const file = path.join(await mkdtemp(path.join(tmpdir(), 'approval-gate-edit-')), 'APR-20260213-003.md');
    await writeFile(file, text);
    return file;
  }

  it("removes the gate's answer to an earlier edit, so a refusal in the file can only answer this one", async () => {
    const file = await fileWith(refused);
    await decideInFile(file, { status: 'APPROVED', decidedBy: 'Dana Reyes' });
    const { data, body } = parseApprovalText(await readFile(file, 'utf8'));
    expect(data).toMatchObject({ status: 'APPROVED', decided_by: 'Dana Reyes' });
    expect(data).not.toHaveProperty('gate_error');
    expect(body).toBe('# Body\n');
  });

  it('removes an earlier gate_error when a second approver signs on too', async () => {
    const file = await fileWith(refused);
    await secondApprovalInFile(file, { name: 'Sam Okafor' }, 'in-place');
    const { data } = parseApprovalText(await readFile(file, 'utf8'));
    expect(data).toMatchObject({ decided_by: 'agent', second_approver: 'Sam Okafor' });
    expect(data).not.toHaveProperty('gate_error');
  });
});
