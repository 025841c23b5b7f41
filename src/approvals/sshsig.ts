import { createHash } from 'node:crypto';
import { GateError } from '../errors.js';

/**
 * The SSHSIG format (PROTOCOL.sshsig, PROTOCOL.u2f) and SSH public key blobs, read only as far as
 * needed to name precisely what is wrong with a signature: no cryptography here, ssh-keygen verifies.
 */

export const ARMOR_BEGIN = '-----BEGIN SSH SIGNATURE-----';
const ARMOR_END = '-----END SSH SIGNATURE-----';
const MAGIC = 'SSHSIG';
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
const USER_PRESENCE = 0x01;

export interface SshSignature {
  /** The whole decoded blob. */
  readonly blob: Buffer;
  /** The signer's public key blob (SSH wire format), its type the blob's first string. */
  readonly publicKey: Buffer;
  readonly keyType: string;
  readonly namespace: string;
  readonly hashAlgorithm: string;
  /** The signature's own algorithm, e.g. `ssh-ed25519`, `rsa-sha2-512`, `sk-ssh-ed25519@openssh.com`. */
  readonly signatureType: string;
  /** For sk- signatures (PROTOCOL.u2f) the authenticator flags byte and counter; null otherwise. */
  readonly sk: { readonly flags: number; readonly counter: number } | null;
}

class WireReader {
  private offset = 0;
  constructor(
    private readonly bytes: Buffer,
    private readonly what: string,
  ) {}

  get done(): boolean {
    return this.offset === this.bytes.length;
  }

  take(length: number): Buffer {
    if (this.offset + length > this.bytes.length)
      throw new GateError('SIGNATURE_MALFORMED', `The ${this.what} ends too early.`);
    const slice = this.bytes.subarray(this.offset, this.offset + length);
    this.offset += length;
    return slice;
  }

  byte(): number {
    return this.take(1).readUInt8(0);
  }

  uint32(): number {
    return this.take(4).readUInt32BE(0);
  }

  string(): Buffer {
    return this.take(this.uint32());
  }

  text(): string {
    return this.string().toString('utf8');
  }
}

function malformed(message: string): GateError {
  return new GateError('SIGNATURE_MALFORMED', message);
}

function isBase64(text: string): boolean {
  return BASE64.test(text) && text.length % 4 === 0;
}

/** The blob inside an armored signature; tolerates surrounding whitespace, indentation and CRLF. */
function dearmor(armored: string): Buffer {
  const lines = armored
    .replace(/\r\n?/g, '\n')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '');
  if (lines[0] !== ARMOR_BEGIN || lines[lines.length - 1] !== ARMOR_END || lines.length < 3)
    throw malformed(
      `The signature is not an SSH signature block: it must start with "${ARMOR_BEGIN}" and end with "${ARMOR_END}".`,
    );
  const body = lines.slice(1, -1).join('');
  if (!isBase64(body))
    throw malformed('The signature block is not valid base64: paste the whole block exactly as printed.');
  return Buffer.from(body, 'base64');
}

/** Re-armors a blob the way ssh-keygen prints it (70-column base64 lines). */
export function armorSshSignature(blob: Buffer): string {
  const base64 = blob.toString('base64');
  const lines = base64.match(/.{1,70}/g) ?? [];
  return `${ARMOR_BEGIN}\n${lines.join('\n')}\n${ARMOR_END}\n`;
}

function parseSignatureField(signature: Buffer): Pick<SshSignature, 'signatureType' | 'sk'> {
  const reader = new WireReader(signature, 'signature field');
  const signatureType = reader.text();
  reader.string();
  // PROTOCOL.u2f: an sk signature string continues with `byte flags, uint32 counter`.
  const sk = signatureType.startsWith('sk-') ? { flags: reader.byte(), counter: reader.uint32() } : null;
  if (!reader.done) throw malformed('The signature field has trailing bytes.');
  return { signatureType, sk };
}

/** Parses an SSHSIG blob (already decoded from base64). Throws GateError('SIGNATURE_MALFORMED'). */
export function parseSshSignatureBlob(blob: Buffer): SshSignature {
  const reader = new WireReader(blob, 'signature blob');
  if (reader.take(MAGIC.length).toString('latin1') !== MAGIC)
    throw malformed('The signature block does not contain an SSHSIG signature (wrong magic).');
  const version = reader.uint32();
  if (version !== 1) throw malformed(`The signature has SSHSIG version ${version}; only version 1 is known.`);
  const publicKey = reader.string();
  const namespace = reader.text();
  reader.string(); // reserved
  const hashAlgorithm = reader.text();
  const signature = reader.string();
  if (!reader.done) throw malformed('The signature blob has trailing bytes.');
  if (hashAlgorithm !== 'sha256' && hashAlgorithm !== 'sha512')
    throw malformed(`The signature uses the unknown hash algorithm "${hashAlgorithm}".`);
  const keyType = new WireReader(publicKey, 'public key').text();
  if (keyType === '') throw malformed('The signature carries an empty public key.');
  return { blob, publicKey, keyType, namespace, hashAlgorithm, ...parseSignatureField(signature) };
}

/** Parses the text of an `-----BEGIN SSH SIGNATURE-----` block. Throws GateError('SIGNATURE_MALFORMED'). */
export function parseSshSignature(armored: string): SshSignature {
  return parseSshSignatureBlob(dearmor(armored));
}

/**
 * Whether an SSHSIG blob's authenticator asserted user presence (a touch): true or false for sk- key
 * signatures, null for other key types, which have no such flag.
 */
export function userPresence(blob: Buffer): boolean | null {
  return signedWithUserPresence(parseSshSignatureBlob(blob));
}

/** The user-presence flag of a parsed signature: null when its key type has no such flag. */
export function signedWithUserPresence({ sk }: Pick<SshSignature, 'sk'>): boolean | null {
  return sk === null ? null : (sk.flags & USER_PRESENCE) !== 0;
}

/** OpenSSH's fingerprint: `SHA256:` and the unpadded base64 SHA-256 of the public key blob. */
export function keyFingerprint(publicKey: Buffer): string {
  return `SHA256:${createHash('sha256').update(publicKey).digest('base64').replace(/=+$/, '')}`;
}

// ---------------------------------------------------------------------------------------------------
// Public keys

const KEY_TYPES = new Set([
  'ssh-ed25519',
  'ssh-rsa',
  'ssh-dss',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'sk-ssh-ed25519@openssh.com',
  'sk-ecdsa-sha2-nistp256@openssh.com',
]);
const CERT_SUFFIX = '-cert-v01@openssh.com';

export function isKeyType(word: string): boolean {
  if (KEY_TYPES.has(word)) return true;
  if (!word.endsWith(CERT_SUFFIX)) return false;
  const base = word.slice(0, -CERT_SUFFIX.length);
  return KEY_TYPES.has(base) || KEY_TYPES.has(`${base}@openssh.com`);
}

/** The decoded key blob when `base64` is a well-formed key of the known type `keyType`; null otherwise. */
export function decodeKey(keyType: string, base64: string): Buffer | null {
  if (!isKeyType(keyType) || !isBase64(base64) || base64 === '') return null;
  const blob = Buffer.from(base64, 'base64');
  try {
    return new WireReader(blob, 'public key').text() === keyType ? blob : null;
  } catch {
    return null;
  }
}
