import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { describe, expect, it } from 'vitest';
import { evaluateDecision } from '../../src/approvals/decision.js';
import { parseApprovalText } from '../../src/approvals/frontmatter.js';
import { renderApprovalFile } from '../../src/approvals/render.js';
import { sampleCommand, sampleContext, sampleRequest } from '../helpers/requests.js';
import { SERVER_HEADINGS } from '../helpers/views.js';

const reference = readFileSync(path.join(import.meta.dirname, '../fixtures/APR-20260213-003.md'), 'utf8');

function headings(markdown: string): string[] {
  return [...markdown.matchAll(/^#{2,3} (.+)$/gm)].map((m) => (m[1] ?? '').replace(/:$/, ''));
}

function executionCommandBlock(markdown: string): unknown {
  const block = /### Execution Command[\s\S]*?```yaml\n([\s\S]*?)\n```/.exec(markdown);
  return parseYaml(block?.[1] ?? '');
}

describe('rendering an approval file', () => {
  it('round-trips: render → parse gives back the request data', () => {
    const request = sampleRequest();
    const { data } = parseApprovalText(renderApprovalFile(request, sampleContext));
    expect(data).toMatchObject({
      id: request.id,
      created_at: request.created_at,
      status: 'PENDING',
      action_type: 'api_call',
      priority: 'critical',
      expires_at: request.expires_at,
      requested_by: 'agent',
      environment: 'production',
      database: 'main_db',
      request_hash: request.request_hash,
      decided_by: '',
    });
  });

  it('writes the exact SQL and rollback into the Execution Command block', () => {
    for (const sql of [
      'select 1',
      "ALTER TABLE t ADD c text DEFAULT '--;';\n",
      '  indented first line;\n\n\ntrailing blank lines\n\n',
      'CREATE FUNCTION f() RETURNS int AS $$ select 1; $$ LANGUAGE sql;\n```\nnot a fence end\n',
    ]) {
      const request = sampleRequest({}, sampleCommand({ sql, rollback_sql: null, migration_file: null }));
      const block = executionCommandBlock(renderApprovalFile(request, sampleContext)) as {
        parameters: Record<string, unknown>;
      };
      expect(block.parameters.sql).toBe(sql);
      expect(block.parameters).not.toHaveProperty('rollback_sql');
    }
  });

  it('has every section of the reference request, in the same order', () => {
    const ours = headings(renderApprovalFile(sampleRequest(), sampleContext));
    const theirs = headings(reference).filter((h) =>
      SERVER_HEADINGS.map((heading) => heading.replace(/:$/, '')).includes(h),
    );
    expect(theirs).toHaveLength(21);
    expect(ours.filter((h) => theirs.includes(h))).toEqual(theirs);
  });

  it('ships as PENDING, and the placeholders it ships with are not a decision', () => {
    const request = sampleRequest();
    const { data, body } = parseApprovalText(renderApprovalFile(request, sampleContext));
    const now = new Date(Date.parse(request.created_at) + 1000);
    expect(evaluateDecision({ data, body, request, now })).toEqual({ kind: 'pending' });
    const approvedWithPlaceholder = { ...data, status: 'APPROVED' };
    expect(evaluateDecision({ data: approvedWithPlaceholder, body, request, now })).toMatchObject({
      kind: 'invalid',
      code: 'DECIDED_BY_MISSING',
    });
    const rejectedWithPlaceholderComment = { ...data, status: 'REJECTED', decided_by: 'Dana' };
    expect(evaluateDecision({ data: rejectedWithPlaceholderComment, body, request, now })).toMatchObject({
      kind: 'invalid',
      code: 'REJECTION_REASON_MISSING',
    });
  });

  it('tells the human exactly what the gate accepts', () => {
    const text = renderApprovalFile(sampleRequest(), sampleContext);
    expect(text).toContain('Change `status: "PENDING"` to `status: "APPROVED"`');
    expect(text).toContain('**REQUIRED:** give a reason in `reason: "…"` or on the **Comments:** line');
    expect(text).toContain('(not `agent`)');
  });
});
