import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { decodeUtf8, parseApprovalText, updateFrontMatter } from '../../src/approvals/frontmatter.js';
import { GateError } from '../../src/errors.js';

const reference = readFileSync(path.join(import.meta.dirname, '../fixtures/APR-20260213-003.md'), 'utf8');

function refusal(text: string): string {
  try {
    parseApprovalText(text);
  } catch (error) {
    if (error instanceof GateError) return error.code;
    throw error;
  }
  throw new Error('expected the text to be refused');
}

describe('reading approval files', () => {
  it('parses the reference approval file our users already know', () => {
    const { data, body } = parseApprovalText(reference);
    expect(data).toEqual({
      id: 'APR-20260213-003',
      created_at: '2026-02-13T09:00:00',
      status: 'PENDING',
      action_type: 'api_call',
      priority: 'critical',
      expires_at: '2026-02-13T09:15:00',
      requested_by: 'agent',
    });
    expect(body).toContain('## Approval Decision');
  });

  it('keeps unquoted timestamps and leading-zero numbers as written (no Date, no octal)', () => {
    const { data } = parseApprovalText('---\nexpires_at: 2026-02-13T09:15:00\ncount: 010\n---\n');
    expect(data.expires_at).toBe('2026-02-13T09:15:00');
    expect(data.count).toBe(10);
  });

  it('accepts a BOM and CRLF line endings', () => {
    const crlf = `\uFEFF${reference.replace(/\n/g, '\r\n')}`;
    expect(parseApprovalText(crlf).data.id).toBe('APR-20260213-003');
  });
});

describe('security: front matter is data, never code', () => {
  for (const language of ['js', 'javascript', 'coffee', 'coffeescript', 'json', 'toml', 'custom']) {
    it(`refuses ---${language} front matter without evaluating it`, () => {
      const flag = `__gate_pwned_${language}`;
      const text = `---${language}\n{ status: (globalThis.${flag} = 'APPROVED') }\n---\nbody\n`;
      expect(refusal(text)).toBe('FRONT_MATTER_LANGUAGE');
      expect((globalThis as Record<string, unknown>)[flag]).toBeUndefined();
    });
  }

  it('refuses duplicate keys, so a second status line cannot override the first', () => {
    expect(refusal('---\nstatus: "PENDING"\nstatus: "APPROVED"\n---\n')).toBe('FRONT_MATTER_YAML');
  });

  it('refuses an alias bomb (billion laughs) instead of expanding it', () => {
    const lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]'];
    for (let i = 1; i < 10; i += 1) {
      const prev = String.fromCharCode(96 + i);
      const next = String.fromCharCode(97 + i);
      lines.push(`${next}: &${next} [${Array(9).fill(`*${prev}`).join(',')}]`);
    }
    expect(refusal(`---\n${lines.join('\n')}\n---\n`)).toBe('FRONT_MATTER_YAML');
  });

  it('refuses custom YAML tags', () => {
    expect(refusal('---\nstatus: !!js/function "function () { return 1 }"\n---\n')).toBe('FRONT_MATTER_YAML');
  });

  it('refuses front matter that is not a mapping, or is missing or unterminated', () => {
    expect(refusal('---\n- APPROVED\n---\n')).toBe('FRONT_MATTER_SHAPE');
    expect(refusal('# no front matter\n')).toBe('FRONT_MATTER_MISSING');
    expect(refusal('---\nid: "APR-20260213-003"\nstatus: "APPR')).toBe('FRONT_MATTER_UNTERMINATED');
  });

  it('refuses invalid UTF-8 instead of replacing bytes', () => {
    expect(() => decodeUtf8(Buffer.from([0x2d, 0x2d, 0x2d, 0x0a, 0xff, 0xfe]))).toThrow(/not valid UTF-8/);
  });
});

describe('updating the server fields', () => {
  it('keeps the human comments, order and other keys when setting a field', () => {
    const text =
      '---\n# reviewed with the DBA\nid: "APR-1"\nstatus: "APPROVED" # ok\ndecided_by: "Dana"\n---\nbody stays\n';
    const updated = updateFrontMatter(text, { execution: 'succeeded', execution_duration_ms: 12 });
    expect(updated).toBe(
      '---\n# reviewed with the DBA\nid: "APR-1"\nstatus: "APPROVED" # ok\ndecided_by: "Dana"\nexecution: "succeeded"\nexecution_duration_ms: 12\n---\nbody stays\n',
    );
  });

  it('leaves the file byte for byte unchanged when no field changes', () => {
    const text = '---\nid:   "APR-1"   # spaced\nexecution: "running"\n---\n';
    expect(updateFrontMatter(text, { execution: 'running', gate_error: undefined })).toBe(text);
  });

  it('removes a field set to undefined', () => {
    expect(updateFrontMatter('---\nid: "A"\ngate_error: "x"\n---\n', { gate_error: undefined })).toBe(
      '---\nid: "A"\n---\n',
    );
  });
});

describe('security: what the server writes into the front matter', () => {
  it('shows bidirectional overrides and other invisible characters visibly, keeping the rest', () => {
    const updated = updateFrontMatter('---\nid: "APR-20260213-003"\n---\nbody\n', {
      execution_error: 'relation "x\u202Eevil" does not exist\nsecond line',
    });
    expect(updated).toContain('<U+202E>');
    expect(updated).not.toContain('\u202E');
    expect(parseApprovalText(updated).data.execution_error).toBe(
      'relation "x<U+202E>evil" does not exist\nsecond line',
    );
  });
});
