import { describe, expect, it } from 'vitest';
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
