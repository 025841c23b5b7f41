import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  SIGNATURE_NAMESPACE,
  canonicalMessage,
  checkTrustedSigners,
  signMessage,
  verifySignature,
  type SignatureVerdict,
  type SignedDecision,
  type TrustedSigners,
} from '../../src/approvals/signature.js';
import { parseSshSignature, userPresence } from '../../src/approvals/sshsig.js';

type KeyName = 'ed25519' | 'ecdsa' | 'rsa' | 'stranger' | 'other' | 'expired' | 'future' | 'revoked';
const KEY_TYPES: Record<KeyName, string> = {
  ed25519: 'ed25519',
  ecdsa: 'ecdsa',
  rsa: 'rsa',
  stranger: 'ed25519',
  other: 'ed25519',
  expired: 'ed25519',
  future: 'ed25519',
  revoked: 'ed25519',
};

const now = new Date('2026-11-25T12:00:00Z');
const decision: SignedDecision = {
  id: 'APR-20261125-001',
  requestHash: 'sha256:3f1c0d9a',
  installation: 'inst-7f3a',
  status: 'APPROVED',
  role: 'decided_by',
  principal: 'dana@example.com',
};

let dir: string;
const keyPath = (name: KeyName) => join(dir, `key_${name}`);
const publicKey = async (name: KeyName) =>
  (await readFile(`${keyPath(name)}.pub`, 'utf8')).split(' ').slice(0, 2).join(' ');
let signers: TrustedSigners;

/** A signature by `key` over the canonical message of `decision` with `fields` changed. */
async function signedBy(key: KeyName, fields: Partial<SignedDecision> = {}): Promise<string> {
  return signMessage(canonicalMessage({ ...decision, ...fields }), { keyFile: keyPath(key) });
}

function refusal(verdict: SignatureVerdict): string {
  return verdict.ok ? 'ok' : verdict.code;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'signature-test-'));
  for (const [name, type] of Object.entries(KEY_TYPES)) {
    execFileSync('ssh-keygen', [
      '-q',
      '-t',
      type,
      '-N',
      '',
      '-C',
      `test-${name}`,
      '-f',
      keyPath(name as KeyName),
    ]);
  }
  const allowed = [
    '# signers of approval-gate decisions',
    `dana@example.com ${await publicKey('ed25519')}`,
    `dana@example.com namespaces="git,approval-gate" ${await publicKey('ecdsa')}`,
    `ops@example.com,dana@example.com ${await publicKey('rsa')} dana's laptop`,
    `bob@example.com ${await publicKey('other')}`,
    `dana@example.com valid-before="20250101Z" ${await publicKey('expired')}`,
    `dana@example.com valid-after="20300101Z" ${await publicKey('future')}`,
    `dana@example.com ${await publicKey('revoked')}`,
    '',
  ].join('\n');
  await writeFile(join(dir, 'allowed_signers'), allowed);
  await writeFile(join(dir, 'revoked_keys'), `${await publicKey('revoked')}\n`);
  signers = {
    allowedSigners: join(dir, 'allowed_signers'),
    revokedKeys: join(dir, 'revoked_keys'),
    requireUserPresence: true,
  };
}, 60_000);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('canonical message', () => {
  it('is the documented text with LF line ends and the role as the last key', () => {
    expect(canonicalMessage(decision)).toBe(
      'approval-gate decision v1\n' +
        'id: APR-20261125-001\n' +
        'request_hash: sha256:3f1c0d9a\n' +
        'installation: inst-7f3a\n' +
        'status: APPROVED\n' +
        'decided_by: dana@example.com\n',
    );
    expect(canonicalMessage({ ...decision, role: 'second_approver' })).toMatch(
      /\nsecond_approver: dana@example.com\n$/,
    );
  });

  it('refuses values containing a line break', () => {
    for (const value of ['dana\n', 'dana\r', 'dana\u2028x']) {
      expect(() => canonicalMessage({ ...decision, principal: value })).toThrow(/line break/);
    }
    expect(() => canonicalMessage({ ...decision, id: 'APR-1\nstatus: APPROVED' })).toThrow(/line break/);
  });
});

describe('signing and verifying', () => {
  for (const key of ['ed25519', 'ecdsa', 'rsa'] as const) {
    it(`accepts a ${key} signature and reports the principal and the fingerprint ssh-keygen -l shows`, async () => {
      const verdict = await verifySignature(await signedBy(key), decision, signers, now);
      const listed = execFileSync('ssh-keygen', ['-lf', `${keyPath(key)}.pub`], { encoding: 'utf8' });
      expect(verdict).toEqual({
        ok: true,
        principal: 'dana@example.com',
        fingerprint: listed.split(' ')[1],
        keyType: (await publicKey(key)).split(' ')[0],
      });
    });
  }

  it('accepts a pasted signature with indentation, CRLF and surrounding blank lines', async () => {
    const armored = await signedBy('ed25519');
    const pasted = `\r\n  ${armored.trim().split('\n').join('\r\n  ')}\r\n\r\n`;
    expect(refusal(await verifySignature(pasted, decision, signers, now))).toBe('ok');
  });

  it('reports a signing failure with ssh-keygen’s reason and no key material', async () => {
    const failure = signMessage('x\n', { keyFile: join(dir, 'no_such_key') });
    await expect(failure).rejects.toMatchObject({ code: 'SIGNING_FAILED' });
    await expect(failure).rejects.toThrow(/no_such_key.*No such file or directory/);
  });

  it('signs with the first default key in ~/.ssh when no key file is given', async () => {
    const home = join(dir, 'home');
    execFileSync('mkdir', ['-p', join(home, '.ssh')]);
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(home, '.ssh', 'id_ecdsa')]);
    const armored = await signMessage('hello\n', { home });
    const signer = (await readFile(join(home, '.ssh', 'id_ecdsa.pub'), 'utf8')).split(' ')[1];
    expect(parseSshSignature(armored).publicKey.toString('base64')).toBe(signer);
  });
});

describe('refusals, each with its own code', () => {
  it('refuses a missing or empty signature', async () => {
    for (const armored of [null, undefined, '', '  \n ']) {
      expect(refusal(await verifySignature(armored, decision, signers, now))).toBe('SIGNATURE_MISSING');
    }
  });

  it('refuses garbage as malformed', async () => {
    const verdict = await verifySignature('looks good to me', decision, signers, now);
    expect(verdict).toMatchObject({ ok: false, code: 'SIGNATURE_MALFORMED' });
  });

  it('refuses valid armor around a broken blob as malformed, naming what is broken', async () => {
    const lines = (await signedBy('ed25519')).trim().split('\n');
    const blob = Buffer.from(lines.slice(1, -1).join(''), 'base64');
    const wrapped = (base64: string, begin = lines[0]) => [begin, base64, lines.at(-1)].join('\n');
    const notSshSig = Buffer.concat([Buffer.from('NOTSIG'), blob.subarray(6)]);
    const version2 = Buffer.concat([blob.subarray(0, 9), Buffer.from([2]), blob.subarray(10)]);
    const cases: [string, RegExp][] = [
      [wrapped(blob.subarray(0, 40).toString('base64')), /ends too early/],
      [wrapped(notSshSig.toString('base64')), /wrong magic/],
      [wrapped(version2.toString('base64')), /version 2/],
      [wrapped(Buffer.concat([blob, Buffer.from([0])]).toString('base64')), /trailing bytes/],
      [wrapped('not*base64+'), /not valid base64/],
      [wrapped(blob.toString('base64'), '-----BEGIN PGP SIGNATURE-----'), /must start with/],
    ];
    for (const [armored, reason] of cases) {
      const verdict = await verifySignature(armored, decision, signers, now);
      expect(verdict).toMatchObject({ ok: false, code: 'SIGNATURE_MALFORMED' });
      expect(verdict.ok || verdict.message).toMatch(reason);
    }
  });

  it('refuses a signature made for another namespace', async () => {
    const message = canonicalMessage(decision);
    const armored = execFileSync('ssh-keygen', ['-Y', 'sign', '-n', 'other', '-f', keyPath('ed25519')], {
      input: message,
      encoding: 'utf8',
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    const verdict = await verifySignature(armored, decision, signers, now);
    expect(verdict).toMatchObject({ ok: false, code: 'SIGNATURE_WRONG_NAMESPACE' });
    expect(verdict.ok || verdict.message).toMatch(/"other"/);
  });

  it('refuses a key that is not in allowed_signers', async () => {
    const verdict = await verifySignature(await signedBy('stranger'), decision, signers, now);
    expect(refusal(verdict)).toBe('SIGNATURE_UNKNOWN_KEY');
  });

  it('refuses a key allowed only for another principal, naming that principal', async () => {
    const verdict = await verifySignature(await signedBy('other'), decision, signers, now);
    expect(verdict).toMatchObject({ ok: false, code: 'SIGNATURE_WRONG_PRINCIPAL' });
    expect(verdict.ok || verdict.message).toMatch(/belongs to bob@example.com/);
  });

  it('matches principals case-sensitively, as OpenSSH does', async () => {
    const verdict = await verifySignature(
      await signedBy('ed25519', { principal: 'Dana@example.com' }),
      { ...decision, principal: 'Dana@example.com' },
      signers,
      now,
    );
    expect(refusal(verdict)).toBe('SIGNATURE_WRONG_PRINCIPAL');
  });

  it('refuses a key whose valid-before is in the past at the injected time', async () => {
    expect(refusal(await verifySignature(await signedBy('expired'), decision, signers, now))).toBe(
      'SIGNATURE_KEY_NOT_VALID',
    );
  });

  it('refuses a key whose valid-after is in the future at the injected time, and accepts it later', async () => {
    const armored = await signedBy('future');
    expect(refusal(await verifySignature(armored, decision, signers, now))).toBe('SIGNATURE_KEY_NOT_VALID');
    const later = new Date('2030-06-01T00:00:00Z');
    expect(refusal(await verifySignature(armored, decision, signers, later))).toBe('ok');
  });

  it('refuses a key listed for the principal only in other namespaces', async () => {
    const restricted = join(dir, 'allowed_signers_git_only');
    await writeFile(restricted, `dana@example.com namespaces="git" ${await publicKey('ed25519')}\n`);
    const verdict = await verifySignature(
      await signedBy('ed25519'),
      decision,
      { ...signers, allowedSigners: restricted },
      now,
    );
    expect(verdict).toMatchObject({ ok: false, code: 'SIGNATURE_KEY_NOT_VALID' });
    expect(verdict.ok || verdict.message).toMatch(/namespaces=/);
  });

  it('refuses a key listed in the revoked keys file', async () => {
    const armored = await signedBy('revoked');
    expect(refusal(await verifySignature(armored, decision, signers, now))).toBe('SIGNATURE_REVOKED');
    expect(refusal(await verifySignature(armored, decision, { ...signers, revokedKeys: null }, now))).toBe(
      'ok',
    );
  });

  it('refuses a key revoked by a KRL', async () => {
    const krl = join(dir, 'revoked.krl');
    execFileSync('ssh-keygen', ['-q', '-k', '-f', krl, `${keyPath('revoked')}.pub`], { stdio: 'ignore' });
    const revokedKeys = { ...signers, revokedKeys: krl };
    expect(refusal(await verifySignature(await signedBy('revoked'), decision, revokedKeys, now))).toBe(
      'SIGNATURE_REVOKED',
    );
    expect(refusal(await verifySignature(await signedBy('ed25519'), decision, revokedKeys, now))).toBe('ok');
  });

  it('refuses every key when the revoked keys file cannot be read', async () => {
    const unreadable = { ...signers, revokedKeys: join(dir, 'no_such_revocations') };
    expect(refusal(await verifySignature(await signedBy('ed25519'), decision, unreadable, now))).toBe(
      'SIGNATURE_REVOKED',
    );
  });

  const otherDecisions: [string, Partial<SignedDecision>][] = [
    ['id', { id: 'APR-20261125-002' }],
    ['request hash', { requestHash: 'sha256:0000' }],
    ['status', { status: 'REJECTED' }],
    ['principal', { principal: 'ops@example.com' }],
    ['role', { role: 'second_approver' }],
    ['installation', { installation: 'inst-other' }],
  ];
  for (const [what, fields] of otherDecisions) {
    it(`refuses a signature made for another ${what} as a mismatch`, async () => {
      // The rsa key is listed for both dana and ops, so only the signed text differs.
      const verdict = await verifySignature(await signedBy('rsa', fields), decision, signers, now);
      expect(verdict).toMatchObject({ ok: false, code: 'SIGNATURE_MISMATCH' });
      expect(verdict.ok || verdict.message).toMatch(/Human Instructions/);
    });
  }
});

describe('security keys and user presence', () => {
  const wire = {
    string: (value: Buffer | string) => {
      const bytes = Buffer.from(value);
      const length = Buffer.alloc(4);
      length.writeUInt32BE(bytes.length);
      return Buffer.concat([length, bytes]);
    },
    uint32: (value: number) => {
      const bytes = Buffer.alloc(4);
      bytes.writeUInt32BE(value);
      return bytes;
    },
  };
  const skType = 'sk-ssh-ed25519@openssh.com';
  const skPublicKey = Buffer.concat([
    wire.string(skType),
    wire.string(Buffer.alloc(32, 7)),
    wire.string('ssh:'),
  ]);

  /** An SSHSIG blob by a synthetic sk-ed25519 key (PROTOCOL.sshsig, PROTOCOL.u2f); its signature is fake. */
  function skBlob(flags: number): Buffer {
    const signature = Buffer.concat([
      wire.string(skType),
      wire.string(Buffer.alloc(64, 1)),
      Buffer.from([flags]),
      wire.uint32(42),
    ]);
    return Buffer.concat([
      Buffer.from('SSHSIG'),
      wire.uint32(1),
      wire.string(skPublicKey),
      wire.string(SIGNATURE_NAMESPACE),
      wire.string(''),
      wire.string('sha512'),
      wire.string(signature),
    ]);
  }
  const armor = (blob: Buffer) =>
    `-----BEGIN SSH SIGNATURE-----\n${blob.toString('base64')}\n-----END SSH SIGNATURE-----\n`;

  it('reads the user-presence flag of an sk signature', () => {
    expect(userPresence(skBlob(0x00))).toBe(false);
    expect(userPresence(skBlob(0x01))).toBe(true);
    expect(userPresence(skBlob(0x05))).toBe(true);
    expect(userPresence(skBlob(0x04))).toBe(false);
  });

  it('has no user-presence flag for ordinary keys', async () => {
    expect(userPresence(parseSshSignature(await signedBy('ed25519')).blob)).toBeNull();
  });

  it('refuses an sk signature without user presence when presence is required', async () => {
    const allowed = join(dir, 'allowed_signers_sk');
    await writeFile(allowed, `dana@example.com ${skType} ${skPublicKey.toString('base64')}\n`);
    const skSigners = { allowedSigners: allowed, revokedKeys: null, requireUserPresence: true };
    expect(refusal(await verifySignature(armor(skBlob(0x00)), decision, skSigners, now))).toBe(
      'SIGNATURE_NO_USER_PRESENCE',
    );
    // With the flag set (or presence not required) the fake signature reaches ssh-keygen, which refuses it.
    expect(refusal(await verifySignature(armor(skBlob(0x01)), decision, skSigners, now))).toBe(
      'SIGNATURE_MISMATCH',
    );
    const lenient = { ...skSigners, requireUserPresence: false };
    expect(refusal(await verifySignature(armor(skBlob(0x00)), decision, lenient, now))).toBe(
      'SIGNATURE_MISMATCH',
    );
  });
});

describe('startup checks', () => {
  it('accepts a usable configuration', async () => {
    await expect(checkTrustedSigners(signers)).resolves.toBeUndefined();
  });

  it('refuses a missing allowed signers file', async () => {
    await expect(
      checkTrustedSigners({ ...signers, allowedSigners: join(dir, 'no_such_file') }),
    ).rejects.toMatchObject({ code: 'ALLOWED_SIGNERS_MISSING' });
  });

  it('refuses a garbage allowed signers file', async () => {
    const garbage = join(dir, 'garbage_signers');
    await writeFile(garbage, 'dana@example.com ssh-ed25519 AAAA\n');
    await expect(checkTrustedSigners({ ...signers, allowedSigners: garbage })).rejects.toMatchObject({
      code: 'ALLOWED_SIGNERS_INVALID',
    });
  });

  it('refuses an unreadable revoked keys file', async () => {
    await expect(
      checkTrustedSigners({ ...signers, revokedKeys: join(dir, 'no_such_revocations') }),
    ).rejects.toMatchObject({ code: 'REVOKED_KEYS_MISSING' });
  });

  it('refuses when ssh-keygen is not on PATH', async () => {
    await expect(checkTrustedSigners(signers, { path: join(dir, 'empty-bin') })).rejects.toMatchObject({
      code: 'SSH_KEYGEN_MISSING',
    });
  });
});
