/**
 * Trust anchors: the files that decide whose SSH signature a protected environment accepts (its
 * `allowed_signers` file, a revoked-keys file) and the config file that names them. A signature check
 * is worthless if the agent the gate protects against can edit one of them, or replace it by writing a
 * directory on its path. With a signed environment configured the server refuses to start unless every
 * anchor passes these rules (`trustAnchorProblems`, pure; `assertTrustAnchors` reads the file system):
 *
 * - Each chain is the anchor itself first, then every parent directory up to `/`, after symlinks are
 *   resolved. A symlink in a chain, or an entry that is neither a file nor a directory, is a problem.
 *   A symlink on the way is followed to its target, and the directory holding the link is checked too
 *   (whoever can write it can repoint the link).
 * - No component may be writable by group or others (0o020, 0o002). The one exception is a directory
 *   with the sticky bit (0o1000, like /tmp): there only an entry's owner (and root) can rename or
 *   delete it, so it is accepted when the entry below it is owned by root or by a uid other than the
 *   server's. Otherwise the anchor is "in a world-writable directory".
 * - Over stdio the MCP client spawns the server as the user the agent runs as. So a component owned by
 *   the server's uid is a problem (an owner can always chmod), and a server running as root (uid 0) is
 *   refused outright, since root can rewrite anything.
 * - Over HTTP the server is expected to run as its own service user, which the agent is not: a
 *   component owned by the server's uid, writable by that owner only, is fine.
 *
 * Every problem's message names the component and gives the command that fixes it.
 */
import { lstat, readlink } from 'node:fs/promises';
import path from 'node:path';
import { GateError } from './errors.js';

export type Transport = 'stdio' | 'http';

/** What the check needs of one path component (from lstat): mode bits, owner, kind. */
export interface PathFacts {
  readonly path: string;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly kind: 'file' | 'directory' | 'symlink' | 'other';
}

export interface TrustAnchor {
  /** What the file is for, e.g. 'allowed_signers of production', 'config file'. */
  readonly role: string;
  readonly path: string;
  /** The file itself first, then each parent directory up to '/'. */
  readonly chain: readonly PathFacts[];
}

export interface AnchorProblem {
  readonly role: string;
  readonly path: string;
  /** What is wrong and the fix. */
  readonly message: string;
}

const GROUP_OR_OTHER_WRITE = 0o022;
const OTHER_WRITE = 0o002;
const STICKY = 0o1000;
const ROOT_UID = 0;
/** As Linux's MAXSYMLINKS: more hops than this is a loop. */
const MAX_SYMLINK_HOPS = 40;

function octal(mode: number): string {
  return `0${(mode & 0o7777).toString(8).padStart(3, '0')}`;
}

function fixFor(component: PathFacts): string {
  const mode = component.kind === 'directory' ? '755' : '644';
  return `sudo chown root: ${component.path} && sudo chmod ${mode} ${component.path}`;
}

function nameOf(component: PathFacts): string {
  return component.kind === 'directory' ? `directory ${component.path}` : component.path;
}

function kindProblem(component: PathFacts, index: number): string | null {
  if (component.kind === 'symlink') {
    return `${component.path} is a symlink where its resolved target was expected; point the configuration at the real path`;
  }
  if (component.kind === 'other') {
    return `${component.path} is not a regular file or directory (a device, socket or FIFO); point the configuration at a regular file`;
  }
  if (index > 0 && component.kind !== 'directory') {
    return `${component.path} is on the path of the anchor but is not a directory; point the configuration at the real path`;
  }
  return null;
}

function writableProblem(
  chain: readonly PathFacts[],
  index: number,
  component: PathFacts,
  uid: number,
): string | null {
  if ((component.mode & GROUP_OR_OTHER_WRITE) === 0) return null;
  const below = index > 0 ? chain[index - 1] : undefined;
  if (component.kind === 'directory' && (component.mode & STICKY) !== 0) {
    const who = (component.mode & OTHER_WRITE) !== 0 ? 'world-writable' : 'group-writable';
    if (below === undefined) {
      // Only the chain of a symlink's own directory starts at a directory: the link sits in it.
      return (
        `${component.path} is a ${who} directory (sticky, like /tmp) on the way to the anchor: ` +
        `keep trust anchors and symlinks to them out of it and point the configuration at a directory only root can write`
      );
    }
    if (below.uid === ROOT_UID || below.uid !== uid) return null;
    return (
      `${below.path} is in a ${who} directory (${component.path}, sticky like /tmp) and is owned by uid ${below.uid}, ` +
      `the user the gate runs as, who can replace it there: ${fixFor(below)}, ` +
      `or better move the anchor to a directory only root can write, such as /etc/approval-gate`
    );
  }
  const who = (component.mode & OTHER_WRITE) !== 0 ? 'others' : 'its group';
  return (
    `${nameOf(component)} is writable by ${who} (mode ${octal(component.mode)}), ` +
    `${index === 0 ? 'so they can rewrite it' : 'so they can replace what is in it'}: ${fixFor(component)}`
  );
}

/** Pure: every problem with these anchors for a server running as `uid` over `transport`. */
export function trustAnchorProblems(
  anchors: readonly TrustAnchor[],
  context: { readonly transport: Transport; readonly uid: number },
): AnchorProblem[] {
  const { transport, uid } = context;
  const problems: AnchorProblem[] = [];
  for (const anchor of anchors) {
    const report = (message: string): void => {
      problems.push({ role: anchor.role, path: anchor.path, message });
    };
    const rootOverStdio = transport === 'stdio' && uid === ROOT_UID;
    if (rootOverStdio) {
      report(
        'the gate runs as root over stdio: root can rewrite the anchor; run the gate as its own user over HTTP, ' +
          'or start the MCP client as a user that is not root',
      );
    }
    anchor.chain.forEach((component, index) => {
      const kind = kindProblem(component, index);
      if (kind !== null) report(kind);
      const writable = writableProblem(anchor.chain, index, component, uid);
      if (writable !== null) report(writable);
      // Root over stdio owns everything already reported above; one line per anchor says it.
      if (transport === 'stdio' && !rootOverStdio && component.uid === uid) {
        report(
          `${nameOf(component)} is owned by uid ${uid}, the user the gate (and so the agent) runs as over stdio, ` +
            `and an owner can always chmod it; make it owned by root (or another user) and not writable by you: ` +
            fixFor(component),
        );
      }
    });
  }
  return problems;
}

function kindOf(stats: {
  isFile(): boolean;
  isDirectory(): boolean;
  isSymbolicLink(): boolean;
}): PathFacts['kind'] {
  if (stats.isSymbolicLink()) return 'symlink';
  if (stats.isFile()) return 'file';
  if (stats.isDirectory()) return 'directory';
  return 'other';
}

async function factsOf(target: string): Promise<PathFacts> {
  const stats = await lstat(target);
  return { path: target, mode: stats.mode, uid: stats.uid, gid: stats.gid, kind: kindOf(stats) };
}

/** lstat of `start` and of every parent directory up to the root. */
async function chainOf(start: string): Promise<PathFacts[]> {
  const chain: PathFacts[] = [];
  let current = start;
  for (;;) {
    chain.push(await factsOf(current));
    const parent = path.dirname(current);
    if (parent === current) return chain;
    current = parent;
  }
}

/**
 * Resolves `start` one component at a time, like realpath, and also returns every symlink met on the
 * way with the real directory that holds it, since whoever can write that directory can repoint it.
 */
async function resolveWithLinks(
  start: string,
): Promise<{ real: string; links: { link: string; dir: string }[] }> {
  const root = path.parse(path.resolve(start)).root;
  let pending = path.resolve(start).split(path.sep).filter(Boolean);
  let resolved = root;
  const links: { link: string; dir: string }[] = [];
  for (let name = pending.shift(); name !== undefined; name = pending.shift()) {
    if (name === '.') continue;
    if (name === '..') {
      resolved = path.dirname(resolved);
      continue;
    }
    const candidate = path.join(resolved, name);
    const stats = await lstat(candidate);
    if (!stats.isSymbolicLink()) {
      resolved = candidate;
      continue;
    }
    if (links.length >= MAX_SYMLINK_HOPS) {
      throw Object.assign(new Error(`too many levels of symbolic links at ${candidate}`), { code: 'ELOOP' });
    }
    links.push({ link: candidate, dir: resolved });
    const target = await readlink(candidate);
    if (path.isAbsolute(target)) resolved = root;
    pending = [...target.split(path.sep).filter(Boolean), ...pending];
  }
  return { real: resolved, links };
}

function errorCode(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error && typeof error.code === 'string') {
    return error.code;
  }
  return undefined;
}

/**
 * Reads the facts (lstat of each anchor and every parent; a symlink anywhere on the way is resolved and
 * the real chain is checked, and the link's own directory too) and throws
 * GateError('TRUST_ANCHOR_WRITABLE') listing every problem with its fix when there is any. A missing
 * anchor is GateError('TRUST_ANCHOR_MISSING'). `uid` defaults to the process's own.
 */
export async function assertTrustAnchors(
  anchors: readonly { readonly role: string; readonly path: string }[],
  context: { readonly transport: Transport; readonly uid?: number },
): Promise<void> {
  const uid = context.uid ?? process.getuid?.();
  if (uid === undefined) {
    throw new GateError(
      'TRUST_ANCHOR_UNCHECKABLE',
      'cannot tell which user the gate runs as on this platform, so its trust anchors cannot be checked; ' +
        'run a gate with signed environments on Linux or macOS',
    );
  }
  const checked: TrustAnchor[] = [];
  const missing: string[] = [];
  for (const anchor of anchors) {
    try {
      const { real, links } = await resolveWithLinks(anchor.path);
      checked.push({ role: anchor.role, path: anchor.path, chain: await chainOf(real) });
      for (const { link, dir } of links) {
        const role = `${anchor.role} (via symlink ${link})`;
        checked.push({ role, path: anchor.path, chain: await chainOf(dir) });
      }
    } catch (error) {
      const code = errorCode(error);
      if (code === 'ENOENT' || code === 'ENOTDIR') {
        missing.push(
          `- ${anchor.role} (${anchor.path}) does not exist; create it, owned by root and mode 644`,
        );
        continue;
      }
      throw new GateError(
        'TRUST_ANCHOR_UNREADABLE',
        `cannot check ${anchor.role} (${anchor.path}): ${error instanceof Error ? error.message : String(error)}`,
        { cause: error, context: { role: anchor.role, path: anchor.path } },
      );
    }
  }
  const seen = new Set<string>();
  const lines: string[] = [];
  for (const problem of trustAnchorProblems(checked, { transport: context.transport, uid })) {
    const key = `${problem.path}\0${problem.message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    lines.push(`- ${problem.role} (${problem.path}): ${problem.message}`);
  }
  if (missing.length > 0) {
    throw new GateError(
      'TRUST_ANCHOR_MISSING',
      `The gate refuses to start: a trust anchor of a signed environment is missing.\n${[...missing, ...lines].join('\n')}`,
    );
  }
  if (lines.length > 0) {
    throw new GateError(
      'TRUST_ANCHOR_WRITABLE',
      'The gate refuses to start: a signature check is worthless while the agent could edit the keys it trusts. ' +
        `Over ${context.transport}, as uid ${uid}:\n${lines.join('\n')}`,
    );
  }
}
