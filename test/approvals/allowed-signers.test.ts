import { describe, expect, it } from 'vitest';
import { parseAllowedSigners } from '../../src/approvals/allowed-signers.js';

describe('allowed_signers parsing', () => {
  const key = 'AAAAC3NzaC1lZDI1NTE5AAAAIBsRKIAVmNfZj+TJGtEt3d/JAag1zFBTd777y4y1d6bg';

  it('accepts the lines git users write, with comments and blank lines', () => {
    const parsed = parseAllowedSigners(
      [
        '# team',
        '',
        `dana@example.com ssh-ed25519 ${key}`,
        `a@x,b@y namespaces="git,approval-gate" ssh-ed25519 ${key} laptop key`,
        `  c@z valid-after="20260101",valid-before="202701010000Z" ssh-ed25519 ${key}`,
        `*@example.com cert-authority ssh-ed25519 ${key}`,
        `"quoted name" NAMESPACES="approval-gate" ssh-ed25519 ${key}`,
      ].join('\r\n'),
    );
    expect(parsed.map((signer) => signer.line)).toEqual([3, 4, 5, 6, 7]);
    expect(parsed[0]).toMatchObject({
      principals: ['dana@example.com'],
      keyType: 'ssh-ed25519',
      namespaces: null,
    });
    expect(parsed[1]).toMatchObject({ principals: ['a@x', 'b@y'], namespaces: ['git', 'approval-gate'] });
    expect(parsed[1]?.comment).toBe('laptop key');
    expect(parsed[2]?.validAfter).toEqual(new Date(2026, 0, 1));
    expect(parsed[2]?.validBefore).toEqual(new Date('2027-01-01T00:00:00Z'));
    expect(parsed[3]?.certAuthority).toBe(true);
    expect(parsed[4]?.principals).toEqual(['quoted name']);
  });

  const refused: [string, string, RegExp][] = [
    ['garbage', 'this is not a signer', /unknown option "is"/],
    ['a missing key', 'dana@example.com', /public key is missing/],
    ['an empty principal', `dana@example.com, ssh-ed25519 ${key}`, /principal is empty/],
    ['an unquoted option value', `p namespaces=approval-gate ssh-ed25519 ${key}`, /double quotes/],
    ['an unknown option', `p foo="x" ssh-ed25519 ${key}`, /unknown option "foo"/],
    ['a bad time', `p valid-after="2026" ssh-ed25519 ${key}`, /not a time/],
    ['an impossible date', `p valid-after="20261340" ssh-ed25519 ${key}`, /not a time/],
    [
      'valid-before before valid-after',
      `p valid-after="20260101Z",valid-before="20250101" ssh-ed25519 ${key}`,
      /not after "valid-after"/,
    ],
    ['a repeated namespaces option', `p namespaces="git",namespaces="x" ssh-ed25519 ${key}`, /given twice/],
    ['a key of another type', `p ssh-rsa ${key}`, /not a valid "keytype base64" pair/],
    ['broken base64', 'p ssh-ed25519 AAAA!!', /not a valid "keytype base64" pair/],
  ];
  for (const [what, line, reason] of refused) {
    it(`refuses ${what} with the line number`, () => {
      const text = `# header\n\ndana@example.com ssh-ed25519 ${key}\n${line}\n`;
      let thrown: unknown = null;
      try {
        parseAllowedSigners(text);
      } catch (error) {
        thrown = error;
      }
      expect(thrown).toMatchObject({ code: 'ALLOWED_SIGNERS_INVALID', context: { line: 4 } });
      expect(String(thrown)).toMatch(/Line 4 of the allowed signers file/);
      expect(String(thrown)).toMatch(reason);
    });
  }
});
