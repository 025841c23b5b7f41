import { GateError, describeError } from '../errors.js';
import { decodeKey, isKeyType } from './sshsig.js';

/**
 * The allowed_signers file (ssh-keygen(1), ALLOWED SIGNERS), the format git uses for
 * `gpg.ssh.allowedSignersFile`: its entries, OpenSSH's pattern lists and the validity windows.
 */

export interface AllowedSigner {
  /** 1-based line number in the file. */
  readonly line: number;
  /** The principals pattern-list, split on commas (patterns may use `*`, `?` and `!`). */
  readonly principals: readonly string[];
  readonly certAuthority: boolean;
  /** The namespaces pattern-list, or null when the line does not restrict namespaces. */
  readonly namespaces: readonly string[] | null;
  readonly validAfter: Date | null;
  readonly validBefore: Date | null;
  readonly keyType: string;
  /** The public key blob, base64 as written. */
  readonly publicKey: string;
  readonly comment: string | null;
}

const TIMESTAMP = /^(\d{4})(\d{2})(\d{2})(?:(\d{2})(\d{2})(\d{2})?)?(Z?)$/;

/**
 * OpenSSH's absolute time (YYYYMMDD[Z] or YYYYMMDDHHMM[SS][Z]): without Z it is the system's local
 * time, as ssh-keygen reads it. Null when the text is not such a time.
 */
function parseOpenSshTime(text: string): Date | null {
  const match = TIMESTAMP.exec(text);
  if (match === null) return null;
  const [, y, mo, d, h = '0', mi = '0', s = '0', zulu] = match;
  const parts = [Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s)] as const;
  const date = zulu === 'Z' ? new Date(Date.UTC(...parts)) : new Date(...parts);
  const back =
    zulu === 'Z'
      ? [
          date.getUTCFullYear(),
          date.getUTCMonth(),
          date.getUTCDate(),
          date.getUTCHours(),
          date.getUTCMinutes(),
        ]
      : [date.getFullYear(), date.getMonth(), date.getDate(), date.getHours(), date.getMinutes()];
  return back.every((value, index) => value === parts[index]) && parts[5] < 60 ? date : null;
}

/** Reads one whitespace-delimited field that may contain double-quoted parts (principals, options). */
function quotedField(text: string): { field: string; rest: string } {
  let inQuotes = false;
  let index = 0;
  for (; index < text.length; index++) {
    const char = text[index];
    if (char === '"') inQuotes = !inQuotes;
    else if (!inQuotes && (char === ' ' || char === '\t')) break;
  }
  if (inQuotes) throw new Error('unterminated quote');
  return { field: text.slice(0, index), rest: text.slice(index).trimStart() };
}

function splitOptions(options: string): string[] {
  const parts: string[] = [];
  let current = '';
  let inQuotes = false;
  for (const char of options) {
    if (char === '"') inQuotes = !inQuotes;
    if (char === ',' && !inQuotes) {
      parts.push(current);
      current = '';
    } else current += char;
  }
  parts.push(current);
  return parts;
}

interface SignerOptions {
  certAuthority: boolean;
  namespaces: string[] | null;
  validAfter: Date | null;
  validBefore: Date | null;
}

/** What a line without options means: a plain key, any namespace, no time limit. */
function noOptions(): SignerOptions {
  return { certAuthority: false, namespaces: null, validAfter: null, validBefore: null };
}

function parseOptions(text: string): SignerOptions {
  const options = noOptions();
  for (const option of splitOptions(text)) {
    const equals = option.indexOf('=');
    const name = (equals === -1 ? option : option.slice(0, equals)).toLowerCase();
    if (name === 'cert-authority' && equals === -1) {
      options.certAuthority = true;
      continue;
    }
    if (
      name !== 'namespaces' &&
      name !== 'valid-after' &&
      name !== 'valid-before' &&
      name !== 'cert-authority'
    )
      throw new Error(`unknown option "${name}"`);
    if (equals === -1 || name === 'cert-authority') throw new Error(`option "${name}" is malformed`);
    const raw = option.slice(equals + 1);
    if (raw.length < 2 || !raw.startsWith('"') || !raw.endsWith('"') || raw.slice(1, -1).includes('"'))
      throw new Error(`the value of "${name}" must be in double quotes`);
    const value = raw.slice(1, -1);
    if (name === 'namespaces') {
      if (options.namespaces !== null) throw new Error('"namespaces" is given twice');
      options.namespaces = value.split(',');
      continue;
    }
    const time = parseOpenSshTime(value);
    if (time === null) throw new Error(`"${name}" is not a time in the form YYYYMMDD[HHMM[SS]][Z]`);
    const key = name === 'valid-after' ? 'validAfter' : 'validBefore';
    if (options[key] !== null) throw new Error(`"${name}" is given twice`);
    options[key] = time;
  }
  if (
    options.validAfter !== null &&
    options.validBefore !== null &&
    options.validBefore <= options.validAfter
  )
    throw new Error('"valid-before" is not after "valid-after"');
  return options;
}

/** `keytype base64 [comment]` at the start of `text`, or null. */
function readKey(text: string): { keyType: string; publicKey: string; comment: string | null } | null {
  const match = /^(\S+)[ \t]+(\S+)(?:[ \t]+(.*))?$/.exec(text);
  if (match === null) return null;
  const [, keyType = '', publicKey = '', comment] = match;
  if (decodeKey(keyType, publicKey) === null) return null;
  return { keyType, publicKey, comment: comment?.trim() || null };
}

/**
 * Parses allowed_signers text: `principals [options] keytype base64 [comment]`, `#` comments and blank
 * lines. Stricter than ssh-keygen, which skips a line it cannot read with only a warning: a typo that
 * silently drops a signer (or a validity limit) must stop the server instead.
 */
export function parseAllowedSigners(text: string): AllowedSigner[] {
  const signers: AllowedSigner[] = [];
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = index + 1;
    const content = raw.trim();
    if (content === '' || content.startsWith('#')) return;
    try {
      const { field, rest } = quotedField(content);
      const principals = field.replace(/^"(.*)"$/, '$1').split(',');
      if (principals.some((principal) => principal === '')) throw new Error('a principal is empty');
      let key = readKey(rest);
      let options = noOptions();
      if (key === null) {
        const parts = quotedField(rest);
        // A key type in the options position means the key itself is broken, not the options.
        if (isKeyType(parts.field))
          throw new Error(`the ${parts.field} public key is not a valid "keytype base64" pair`);
        if (parts.field === '') throw new Error('the public key is missing');
        options = parseOptions(parts.field);
        key = readKey(parts.rest);
        if (key === null) throw new Error('the public key is missing or not a valid "keytype base64" pair');
      }
      signers.push({ line, principals, ...options, ...key });
    } catch (error) {
      throw new GateError(
        'ALLOWED_SIGNERS_INVALID',
        `Line ${line} of the allowed signers file is not a valid entry (${describeError(error)}): ` +
          'write it as `principals [options] keytype base64 [comment]`, e.g. `dana@example.com ssh-ed25519 AAAA…`.',
        { context: { line } },
      );
    }
  });
  return signers;
}

/** OpenSSH's match_pattern: `*` any run, `?` one character, case-sensitive. */
function matchPattern(text: string, pattern: string): boolean {
  const regex = pattern
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '.*')
    .replace(/\?/g, '.');
  return new RegExp(`^${regex}$`, 's').test(text);
}

/** OpenSSH's match_pattern_list: a matching `!pattern` denies, otherwise any matching pattern allows. */
export function matchesPatternList(text: string, patterns: readonly string[]): boolean {
  let allowed = false;
  for (const pattern of patterns) {
    const negated = pattern.startsWith('!');
    if (matchPattern(text, negated ? pattern.slice(1) : pattern)) {
      if (negated) return false;
      allowed = true;
    }
  }
  return allowed;
}

export function withinWindow(signer: AllowedSigner, now: Date): boolean {
  // ssh-keygen judges whole seconds: valid when valid-after <= t <= valid-before.
  const seconds = Math.floor(now.getTime() / 1000);
  if (signer.validAfter !== null && seconds < signer.validAfter.getTime() / 1000) return false;
  if (signer.validBefore !== null && seconds > signer.validBefore.getTime() / 1000) return false;
  return true;
}

/** The validity window in words, for a refusal: `from … until …`. */
export function describeWindow(signer: AllowedSigner): string {
  const parts: string[] = [];
  if (signer.validAfter !== null) parts.push(`from ${signer.validAfter.toISOString()}`);
  if (signer.validBefore !== null) parts.push(`until ${signer.validBefore.toISOString()}`);
  return parts.length === 0 ? 'without a time limit' : parts.join(' ');
}
