import { spawn } from 'node:child_process';
import { access, chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { GateError, describeError } from '../errors.js';
import {
  describeWindow,
  matchesPatternList,
  parseAllowedSigners,
  withinWindow,
  type AllowedSigner,
} from './allowed-signers.js';
import {
  ARMOR_BEGIN,
  armorSshSignature,
  decodeKey,
  keyFingerprint,
  parseSshSignature,
  signedWithUserPresence,
  type SshSignature,
} from './sshsig.js';

/**
 * Signed decisions. In a protected environment a decision counts only with an SSH signature the agent
 * cannot make: the agent runs as the server's OS user and can write every file the server can, so a
 * name in a file proves nothing. OpenSSH's own `ssh-keygen -Y find-principals` / `-Y verify` judge the
 * signature against an `allowed_signers` file (the format git uses for `gpg.ssh.allowedSignersFile`).
 * No cryptography of its own: it only reads the documented SSHSIG armor and blob (./sshsig.ts) and
 * the allowed_signers file (./allowed-signers.ts), to name precisely what is wrong.
 */

export const SIGNATURE_NAMESPACE = 'approval-gate';

export interface SignedDecision {
  readonly id: string;
  readonly requestHash: string;
  readonly installation: string;
  readonly status: 'APPROVED' | 'REJECTED';
  /** Which decision field the signer fills: the main decision or the second approval. */
  readonly role: 'decided_by' | 'second_approver';
  readonly principal: string;
}

export type SignatureCode =
  | 'SIGNATURE_MISSING'
  | 'SIGNATURE_MALFORMED'
  | 'SIGNATURE_WRONG_NAMESPACE'
  | 'SIGNATURE_UNKNOWN_KEY'
  | 'SIGNATURE_WRONG_PRINCIPAL'
  | 'SIGNATURE_KEY_NOT_VALID'
  | 'SIGNATURE_REVOKED'
  | 'SIGNATURE_MISMATCH'
  | 'SIGNATURE_NO_USER_PRESENCE';

export interface TrustedSigners {
  /** Absolute path of the allowed_signers file. */
  readonly allowedSigners: string;
  /** Absolute path of a revocation file (public keys, one per line, or a KRL), or null. */
  readonly revokedKeys: string | null;
  /** Refuse sk- signatures whose flags lack user presence (0x01). */
  readonly requireUserPresence: boolean;
}

export type SignatureVerdict =
  | { readonly ok: true; readonly principal: string; readonly fingerprint: string; readonly keyType: string }
  | { readonly ok: false; readonly code: SignatureCode; readonly message: string };

/** Where to find ssh-keygen; tests point PATH elsewhere. */
export interface SshKeygenOptions {
  readonly path?: string;
}

// ---------------------------------------------------------------------------------------------------
// The signed message

const MESSAGE_HEADER = 'approval-gate decision v1';
const LINE_BREAK = /[\n\r\v\f\u0085\u2028\u2029]/;

/**
 * The exact text signed: UTF-8, LF line ends, final LF. One `key: value` line per field, the last key
 * being the role, so a signature for the main decision cannot be reused as the second approval.
 */
export function canonicalMessage(decision: SignedDecision): string {
  const fields: [string, string][] = [
    ['id', decision.id],
    ['request_hash', decision.requestHash],
    ['installation', decision.installation],
    ['status', decision.status],
    [decision.role, decision.principal],
  ];
  if (decision.status !== 'APPROVED' && decision.status !== 'REJECTED')
    throw new GateError('SIGNATURE_MESSAGE_INVALID', `The status "${decision.status}" cannot be signed.`);
  if (decision.role !== 'decided_by' && decision.role !== 'second_approver')
    throw new GateError('SIGNATURE_MESSAGE_INVALID', `The role "${decision.role}" cannot be signed.`);
  for (const [key, value] of fields) {
    if (typeof value !== 'string' || LINE_BREAK.test(value))
      throw new GateError(
        'SIGNATURE_MESSAGE_INVALID',
        `The ${key} of a signed decision must be one line of text: remove the line break from it.`,
      );
  }
  return `${MESSAGE_HEADER}\n${fields.map(([key, value]) => `${key}: ${value}\n`).join('')}`;
}

// ---------------------------------------------------------------------------------------------------
// Running ssh-keygen

const VERIFY_TIMEOUT_MS = 10_000;
// Signing may wait for a human: a passphrase, an agent confirmation or a touch of a security key.
const SIGN_TIMEOUT_MS = 120_000;

interface ToolRun {
  readonly exitCode: number | null;
  readonly stdout: string;
  readonly stderr: string;
  /** Why ssh-keygen gave no exit code: not found, too slow, or another spawn error. */
  readonly failure: string | null;
}

function toolEnv(options: SshKeygenOptions & { readonly home?: string } = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { PATH: options.path ?? process.env.PATH ?? '/usr/bin:/bin' };
  const home = options.home ?? process.env.HOME;
  if (home !== undefined) env.HOME = home;
  if (process.env.SSH_AUTH_SOCK !== undefined) env.SSH_AUTH_SOCK = process.env.SSH_AUTH_SOCK;
  return env;
}

function runSshKeygen(
  args: readonly string[],
  input: string,
  env: NodeJS.ProcessEnv,
  timeoutMs = VERIFY_TIMEOUT_MS,
): Promise<ToolRun> {
  return new Promise((resolve) => {
    const child = spawn('ssh-keygen', args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let failure: string | null = null;
    const timer = setTimeout(() => {
      failure = `ssh-keygen did not finish within ${timeoutMs / 1000} s`;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    child.stdin.on('error', () => undefined); // ssh-keygen may exit before reading the message
    child.on('error', (error: NodeJS.ErrnoException) => {
      failure ??=
        error.code === 'ENOENT'
          ? 'ssh-keygen was not found on PATH'
          : `ssh-keygen could not run: ${error.message}`;
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({
        exitCode: failure === null ? code : null,
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderr: Buffer.concat(stderr).toString('utf8'),
        failure,
      });
    });
    child.stdin.end(input);
  });
}

/** ssh-keygen's diagnostics for a message: one line, no progress chatter, nothing that looks like key data. */
function diagnostics(stderr: string): string {
  const text = stderr
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && line !== 'Signing data on standard input')
    .join(' ')
    .replace(/[A-Za-z0-9+/=]{40,}/g, '[redacted]');
  return text.length > 500 ? `${text.slice(0, 500)}…` : text;
}

/** `-Overify-time` in UTC, with the Z that stops ssh-keygen reading it as local time. */
function verifyTime(now: Date): string {
  const iso = now.toISOString();
  return `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z`;
}

async function withScratchDirectory<T>(work: (directory: string) => Promise<T>): Promise<T> {
  const directory = await mkdtemp(join(tmpdir(), 'approval-gate-signature-'));
  try {
    await chmod(directory, 0o700);
    return await work(directory);
  } finally {
    await rm(directory, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------------
// Verification

function refuse(code: SignatureCode, message: string): SignatureVerdict {
  return { ok: false, code, message };
}

const KRL_MAGIC = Buffer.from('SSHKRL\n\0', 'latin1');

/** Null when the key is not revoked; otherwise why it counts as revoked (fails closed). */
async function revocation(
  revokedKeys: string,
  signature: SshSignature,
  directory: string,
  env: NodeJS.ProcessEnv,
): Promise<string | null> {
  const fingerprint = keyFingerprint(signature.publicKey);
  let contents: Buffer;
  try {
    contents = await readFile(revokedKeys);
  } catch (error) {
    return `The revocation file ${revokedKeys} could not be read (${describeError(error)}), so key ${fingerprint} cannot be shown to be unrevoked: fix the file.`;
  }
  const revokedMessage = `The signing key ${fingerprint} is revoked (listed in ${revokedKeys}): sign with a current key.`;
  if (contents.subarray(0, KRL_MAGIC.length).equals(KRL_MAGIC)) {
    const keyPath = join(directory, 'signer.pub');
    await writeFile(keyPath, `${signature.keyType} ${signature.publicKey.toString('base64')}\n`, {
      mode: 0o600,
    });
    const run = await runSshKeygen(['-Q', '-f', revokedKeys, keyPath], '', env);
    if (run.exitCode === 0) return null;
    if (run.exitCode === 1 && run.stdout.includes('REVOKED')) return revokedMessage;
    return `The key revocation list ${revokedKeys} could not be checked (${run.failure ?? diagnostics(run.stderr)}), so key ${fingerprint} cannot be shown to be unrevoked.`;
  }
  // A plain list: one public key per line, as for `ssh-keygen -Y verify -r`.
  for (const line of contents.toString('utf8').split(/\r?\n/)) {
    const words = line.trim().split(/\s+/);
    for (let index = 0; index + 1 < words.length; index++) {
      const keyType = words[index] ?? '';
      const blob = decodeKey(keyType, words[index + 1] ?? '');
      if (blob !== null && blob.equals(signature.publicKey)) return revokedMessage;
    }
  }
  return null;
}

/**
 * Verifies `armored` for `decision` against the trusted signers, judging validity windows at `now`.
 * Never throws for bad input: every refusal is a verdict with a code and an actionable sentence.
 */
export async function verifySignature(
  armored: string | null | undefined,
  decision: SignedDecision,
  signers: TrustedSigners,
  now: Date,
  options: SshKeygenOptions = {},
): Promise<SignatureVerdict> {
  if (armored === null || armored === undefined || armored.trim() === '')
    return refuse(
      'SIGNATURE_MISSING',
      `The decision has no signature: sign the message shown under Human Instructions with \`ssh-keygen -Y sign -n ${SIGNATURE_NAMESPACE}\` and paste the whole block.`,
    );
  let signature: SshSignature;
  try {
    signature = parseSshSignature(armored);
  } catch (error) {
    return refuse(
      'SIGNATURE_MALFORMED',
      `${describeError(error)} Paste the signature block exactly as printed.`,
    );
  }
  if (signature.namespace !== SIGNATURE_NAMESPACE)
    return refuse(
      'SIGNATURE_WRONG_NAMESPACE',
      `The signature was made for the namespace "${signature.namespace}", not "${SIGNATURE_NAMESPACE}": sign again with \`-n ${SIGNATURE_NAMESPACE}\`.`,
    );
  let message: string;
  try {
    message = canonicalMessage(decision);
  } catch (error) {
    return refuse('SIGNATURE_MISMATCH', describeError(error));
  }
  const fingerprint = keyFingerprint(signature.publicKey);
  let allowed: AllowedSigner[];
  try {
    allowed = parseAllowedSigners(await readFile(signers.allowedSigners, 'utf8'));
  } catch (error) {
    return refuse(
      'SIGNATURE_UNKNOWN_KEY',
      `No key can be trusted while the allowed signers file ${signers.allowedSigners} is unusable (${describeError(error)}): fix the file.`,
    );
  }
  const env = toolEnv(options);
  try {
    return await withScratchDirectory(async (directory) => {
      const signaturePath = join(directory, 'decision.sig');
      await writeFile(signaturePath, armorSshSignature(signature.blob), { mode: 0o600 });

      if (signers.revokedKeys !== null) {
        const revoked = await revocation(signers.revokedKeys, signature, directory, env);
        if (revoked !== null) return refuse('SIGNATURE_REVOKED', revoked);
      }

      const sameKey = allowed.filter(
        (signer) =>
          !signer.certAuthority && decodeKey(signer.keyType, signer.publicKey)?.equals(signature.publicKey),
      );
      const time = `-Overify-time=${verifyTime(now)}`;
      const found = await runSshKeygen(
        ['-Y', 'find-principals', '-s', signaturePath, '-f', signers.allowedSigners, time],
        '',
        env,
      );
      if (found.failure !== null)
        return refuse('SIGNATURE_UNKNOWN_KEY', `The signing key could not be looked up: ${found.failure}.`);
      const principals =
        found.exitCode === 0 ? found.stdout.split('\n').filter((line) => line.trim() !== '') : [];
      if (principals.length === 0) {
        const outside = sameKey.filter((signer) => !withinWindow(signer, now));
        if (
          /key has expired|key is not yet valid/.test(found.stderr) ||
          (sameKey.length > 0 && outside.length > 0)
        )
          return refuse(
            'SIGNATURE_KEY_NOT_VALID',
            `The signing key ${fingerprint} is in the allowed signers file but not valid at ${now.toISOString()} ` +
              `(valid ${outside.map(describeWindow).join('; ') || 'only at other times'}): sign with a currently valid key or update its valid-after/valid-before.`,
          );
        return refuse(
          'SIGNATURE_UNKNOWN_KEY',
          `The signing key ${fingerprint} (${signature.keyType}) is not in the allowed signers file ${signers.allowedSigners}: sign with a listed key, or ask an administrator to add this one.`,
        );
      }

      const current = sameKey.filter((signer) => withinWindow(signer, now));
      const forPrincipal =
        current.length > 0
          ? current.filter((signer) => matchesPatternList(decision.principal, signer.principals))
          : principals.includes(decision.principal)
            ? [null]
            : [];
      if (forPrincipal.length === 0)
        return refuse(
          'SIGNATURE_WRONG_PRINCIPAL',
          `The signing key ${fingerprint} belongs to ${principals.join(', ')}, not to ${decision.principal}: write the name the key is listed for in ${decision.role}, or sign with ${decision.principal}'s own key.`,
        );
      const namespaceAllowed = forPrincipal.some(
        (signer) =>
          signer === null ||
          signer.namespaces === null ||
          matchesPatternList(SIGNATURE_NAMESPACE, signer.namespaces),
      );
      if (!namespaceAllowed)
        return refuse(
          'SIGNATURE_KEY_NOT_VALID',
          `The signing key ${fingerprint} is listed for ${decision.principal} only for other namespaces: add "${SIGNATURE_NAMESPACE}" to its namespaces= option in the allowed signers file.`,
        );

      if (signers.requireUserPresence && signedWithUserPresence(signature) === false)
        return refuse(
          'SIGNATURE_NO_USER_PRESENCE',
          `The security key ${fingerprint} signed without a touch (no user-presence flag): sign again with a key that requires touch.`,
        );

      const verifyArgs = [
        '-Y',
        'verify',
        '-f',
        signers.allowedSigners,
        '-I',
        decision.principal,
        '-n',
        SIGNATURE_NAMESPACE,
        '-s',
        signaturePath,
        time,
        ...(signers.revokedKeys === null ? [] : ['-r', signers.revokedKeys]),
      ];
      const verified = await runSshKeygen(verifyArgs, message, env);
      if (verified.failure !== null)
        return refuse('SIGNATURE_MISMATCH', `The signature could not be checked: ${verified.failure}.`);
      if (verified.exitCode !== 0)
        return refuse(
          'SIGNATURE_MISMATCH',
          `The signature was made for another request, status, name or role: sign the exact message shown under Human Instructions (id ${decision.id}, status ${decision.status}, ${decision.role} ${decision.principal}).`,
        );
      const reported = /with \S+ key (SHA256:[A-Za-z0-9+/]+)/.exec(verified.stdout)?.[1];
      return {
        ok: true,
        principal: decision.principal,
        fingerprint: reported ?? fingerprint,
        keyType: signature.keyType,
      };
    });
  } catch (error) {
    return refuse('SIGNATURE_MISMATCH', `The signature could not be checked: ${describeError(error)}.`);
  }
}

// ---------------------------------------------------------------------------------------------------
// Signing

const DEFAULT_KEYS = ['id_ed25519', 'id_ecdsa', 'id_ed25519_sk', 'id_ecdsa_sk', 'id_rsa'];

async function exists(path: string): Promise<boolean> {
  try {
    await access(path, fsConstants.F_OK);
    return true;
  } catch {
    return false;
  }
}

/** The key a human's ssh-keygen would use; the .pub when an agent runs, so the agent signs and can confirm. */
async function defaultSigningKey(home: string): Promise<string> {
  const agent = process.env.SSH_AUTH_SOCK !== undefined && process.env.SSH_AUTH_SOCK !== '';
  for (const name of DEFAULT_KEYS) {
    const privateKey = join(home, '.ssh', name);
    if (agent && (await exists(`${privateKey}.pub`))) return `${privateKey}.pub`;
    if (await exists(privateKey)) return privateKey;
  }
  throw new GateError(
    'SIGNING_FAILED',
    `No SSH key was found in ${join(home, '.ssh')} (looked for ${DEFAULT_KEYS.join(', ')}): create one with \`ssh-keygen -t ed25519\` or pass a key file.`,
  );
}

/**
 * Signs `message` with `ssh-keygen -Y sign -n approval-gate` and returns the armored signature. With
 * `keyFile`, that private key (or a .pub whose private half is in the ssh-agent); otherwise the first
 * default key in `home`/.ssh.
 */
export async function signMessage(
  message: string,
  options: { readonly keyFile?: string; readonly home?: string } & SshKeygenOptions = {},
): Promise<string> {
  const home = options.home ?? process.env.HOME ?? homedir();
  const keyFile = options.keyFile ?? (await defaultSigningKey(home));
  const run = await runSshKeygen(
    ['-Y', 'sign', '-n', SIGNATURE_NAMESPACE, '-f', keyFile],
    message,
    toolEnv({ ...options, home }),
    SIGN_TIMEOUT_MS,
  );
  if (run.exitCode === 0 && run.stdout.includes(ARMOR_BEGIN)) return run.stdout;
  throw new GateError(
    'SIGNING_FAILED',
    `ssh-keygen could not sign with ${keyFile}: ${run.failure ?? (diagnostics(run.stderr) || `exit code ${String(run.exitCode)}`)}.`,
    { context: { keyFile } },
  );
}

// ---------------------------------------------------------------------------------------------------
// Startup checks

/**
 * Checks at startup that signatures can be verified at all: ssh-keygen with `-Y` and `-O verify-time`
 * (OpenSSH 8.9 or newer), a readable and valid allowed signers file, and a readable revocation file.
 */
export async function checkTrustedSigners(
  signers: TrustedSigners,
  options: SshKeygenOptions = {},
): Promise<void> {
  // Without -s, a capable ssh-keygen stops at "Too few arguments for find-principals" after accepting -O.
  const probe = await runSshKeygen(
    ['-Y', 'find-principals', `-Overify-time=${verifyTime(new Date())}`],
    '',
    toolEnv(options),
  );
  if (probe.failure !== null || !/too few arguments/i.test(probe.stderr))
    throw new GateError(
      'SSH_KEYGEN_MISSING',
      `Signed decisions need OpenSSH's ssh-keygen with -Y find-principals/verify and -O verify-time (OpenSSH 8.9 or newer): ${probe.failure ?? (diagnostics(probe.stderr) || 'it did not respond as expected')}. Install OpenSSH or put it on PATH.`,
    );
  let text: string;
  try {
    text = await readFile(signers.allowedSigners, 'utf8');
  } catch (error) {
    throw new GateError(
      'ALLOWED_SIGNERS_MISSING',
      `The allowed signers file ${signers.allowedSigners} cannot be read (${describeError(error)}): create it with one line per signer, e.g. \`dana@example.com ssh-ed25519 AAAA…\`.`,
      { cause: error },
    );
  }
  const parsed = parseAllowedSigners(text);
  if (parsed.length === 0)
    throw new GateError(
      'ALLOWED_SIGNERS_INVALID',
      `The allowed signers file ${signers.allowedSigners} lists no signer, so no decision could ever be signed: add one line per signer.`,
    );
  if (signers.revokedKeys !== null) {
    try {
      await access(signers.revokedKeys, fsConstants.R_OK);
    } catch (error) {
      throw new GateError(
        'REVOKED_KEYS_MISSING',
        `The revoked keys file ${signers.revokedKeys} cannot be read (${describeError(error)}): create it (it may be empty) or remove it from the configuration.`,
        { cause: error },
      );
    }
  }
}
