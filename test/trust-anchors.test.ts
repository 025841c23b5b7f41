import { chmod, chown, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { GateError } from '../src/errors.js';
import {
  assertTrustAnchors,
  trustAnchorProblems,
  type PathFacts,
  type Transport,
} from '../src/trust-anchors.js';

const SERVER_UID = 1000;
const NOBODY = 65534;

function file(filePath: string, mode = 0o644, uid = 0): PathFacts {
  return { path: filePath, mode: 0o100000 | mode, uid, gid: uid, kind: 'file' };
}

function dir(dirPath: string, mode = 0o755, uid = 0): PathFacts {
  return { path: dirPath, mode: 0o040000 | mode, uid, gid: uid, kind: 'directory' };
}

const signers = '/etc/approval-gate/allowed_signers';
const rootDirs = [dir('/etc/approval-gate'), dir('/etc'), dir('/')];

function problemsOf(chain: readonly PathFacts[], transport: Transport, uid: number): string[] {
  const anchor = { role: 'allowed_signers of production', path: chain[0]?.path ?? '', chain };
  return trustAnchorProblems([anchor], { transport, uid }).map((problem) => problem.message);
}

interface Case {
  readonly name: string;
  readonly chain: readonly PathFacts[];
  readonly transport: Transport;
  readonly uid: number;
  /** null: no problem; otherwise every problem's message must contain one of these and each must appear. */
  readonly problems: readonly string[] | null;
}

const cases: readonly Case[] = [
  {
    name: 'accepts a root-owned 644 file in root-owned 755 directories over stdio for an ordinary user',
    chain: [file(signers), ...rootDirs],
    transport: 'stdio',
    uid: SERVER_UID,
    problems: null,
  },
  ...[0, SERVER_UID, NOBODY].map((uid): Case => ({
    name: `accepts a root-owned 644 file in root-owned 755 directories over http for uid ${uid}`,
    chain: [file(signers), ...rootDirs],
    transport: 'http',
    uid,
    problems: null,
  })),
  {
    name: 'refuses a group-writable file, with the chown and chmod that fix it',
    chain: [file(signers, 0o664), ...rootDirs],
    transport: 'http',
    uid: SERVER_UID,
    problems: [
      `${signers} is writable by its group (mode 0664)`,
      `sudo chown root: ${signers} && sudo chmod 644 ${signers}`,
    ],
  },
  {
    name: 'refuses a file in a parent directory others can write, with the fix for the directory',
    chain: [file(signers), dir('/etc/approval-gate', 0o757), dir('/etc'), dir('/')],
    transport: 'http',
    uid: SERVER_UID,
    problems: [
      'directory /etc/approval-gate is writable by others (mode 0757)',
      'sudo chown root: /etc/approval-gate && sudo chmod 755 /etc/approval-gate',
    ],
  },
  {
    name: "refuses the server's own file over stdio, since its owner can chmod it",
    chain: [file(signers, 0o444, SERVER_UID), ...rootDirs],
    transport: 'stdio',
    uid: SERVER_UID,
    problems: [
      `${signers} is owned by uid ${SERVER_UID}`,
      `make it owned by root (or another user) and not writable by you: sudo chown root: ${signers} && sudo chmod 644 ${signers}`,
    ],
  },
  {
    name: "refuses a directory on the path owned by the server's user over stdio",
    chain: [file(signers), dir('/etc/approval-gate', 0o755, SERVER_UID), dir('/etc'), dir('/')],
    transport: 'stdio',
    uid: SERVER_UID,
    problems: ['directory /etc/approval-gate is owned by uid 1000', 'sudo chmod 755 /etc/approval-gate'],
  },
  {
    name: "accepts the server's own owner-writable file over http, where the server runs as its own user",
    chain: [
      file(signers, 0o644, SERVER_UID),
      dir('/etc/approval-gate', 0o755, SERVER_UID),
      dir('/etc'),
      dir('/'),
    ],
    transport: 'http',
    uid: SERVER_UID,
    problems: null,
  },
  {
    name: 'refuses a gate running as root over stdio, even with root-owned read-only files',
    chain: [file(signers), ...rootDirs],
    transport: 'stdio',
    uid: 0,
    problems: ['the gate runs as root over stdio: root can rewrite the anchor'],
  },
  {
    name: 'accepts a gate running as root over http with root-owned files',
    chain: [file(signers), ...rootDirs],
    transport: 'http',
    uid: 0,
    problems: null,
  },
  {
    name: 'accepts a root-owned file in a sticky world-writable directory like /tmp',
    chain: [file('/tmp/allowed_signers'), dir('/tmp', 0o1777), dir('/')],
    transport: 'stdio',
    uid: SERVER_UID,
    problems: null,
  },
  {
    name: 'accepts a root-owned directory in a sticky world-writable directory like /tmp',
    chain: [file('/tmp/gate/allowed_signers'), dir('/tmp/gate'), dir('/tmp', 0o1777), dir('/')],
    transport: 'stdio',
    uid: SERVER_UID,
    problems: null,
  },
  {
    name: "refuses the server's own file in a sticky world-writable directory over stdio",
    chain: [file('/tmp/allowed_signers', 0o644, SERVER_UID), dir('/tmp', 0o1777), dir('/')],
    transport: 'stdio',
    uid: SERVER_UID,
    problems: ['/tmp/allowed_signers is in a world-writable directory', 'is owned by uid 1000'],
  },
  {
    name: 'refuses a group-writable file even inside a sticky directory',
    chain: [file('/tmp/allowed_signers', 0o666), dir('/tmp', 0o1777), dir('/')],
    transport: 'http',
    uid: SERVER_UID,
    problems: ['/tmp/allowed_signers is writable by others (mode 0666)'],
  },
  {
    name: 'refuses a world-writable directory without the sticky bit even when the entry below is root-owned',
    chain: [file('/srv/drop/allowed_signers'), dir('/srv/drop', 0o777), dir('/srv'), dir('/')],
    transport: 'http',
    uid: SERVER_UID,
    problems: ['directory /srv/drop is writable by others (mode 0777)'],
  },
  {
    name: 'refuses an anchor that is a device, socket or FIFO',
    chain: [{ ...file(signers), kind: 'other' }, ...rootDirs],
    transport: 'http',
    uid: SERVER_UID,
    problems: [`${signers} is not a regular file or directory`],
  },
  {
    name: 'refuses a symlink left in a chain that should have been resolved',
    chain: [file(signers), { ...dir('/etc/approval-gate'), kind: 'symlink' }, dir('/etc'), dir('/')],
    transport: 'http',
    uid: SERVER_UID,
    problems: ['/etc/approval-gate is a symlink'],
  },
];

async function refusal(check: Promise<void>): Promise<GateError> {
  try {
    await check;
  } catch (error) {
    if (error instanceof GateError) return error;
    throw error;
  }
  throw new Error('expected the trust anchors to be refused');
}

describe('security: trust anchors the agent cannot edit', () => {
  describe('trustAnchorProblems', () => {
    it.each(cases)('$name', ({ chain, transport, uid, problems }) => {
      const messages = problemsOf(chain, transport, uid);
      if (problems === null) {
        expect(messages).toEqual([]);
        return;
      }
      expect(messages.length).toBeGreaterThan(0);
      for (const expected of problems) {
        expect(messages.some((message) => message.includes(expected))).toBe(true);
      }
    });

    it('reports every anchor with its role and path, and one root-over-stdio problem per anchor', () => {
      const config = { role: 'config file', path: '/etc/approval-gate/config.yaml' };
      const problems = trustAnchorProblems(
        [
          { role: 'allowed_signers of production', path: signers, chain: [file(signers), ...rootDirs] },
          { ...config, chain: [file(config.path), ...rootDirs] },
        ],
        { transport: 'stdio', uid: 0 },
      );
      expect(problems.map(({ role, path: anchorPath }) => [role, anchorPath])).toEqual([
        ['allowed_signers of production', signers],
        ['config file', config.path],
      ]);
    });
  });

  describe('assertTrustAnchors on real files', () => {
    // The checks need files owned by root and by another user, so these tests chown: only root can.
    const canChown = process.getuid?.() === 0;
    const realFile = it.skipIf(!canChown && process.env.CI !== 'true');
    let base = '';
    let counter = 0;

    beforeEach(() => {
      if (!canChown) {
        throw new Error(
          'these tests chown files and so must run as root (CI runs them as root); run them as root or without CI=true',
        );
      }
    });

    beforeAll(async () => {
      // Under /tmp (sticky, world-writable): accepted because the directories below it are root's.
      base = await mkdtemp(path.join(tmpdir(), 'trust-anchors-'));
      await chmod(base, 0o755);
    });

    afterAll(async () => {
      if (base !== '') await rm(base, { recursive: true, force: true });
    });

    /** A fresh root-owned 755 directory under the temp dir holding a root-owned 644 file. */
    async function anchorFile(name = 'allowed_signers'): Promise<{ dir: string; file: string }> {
      counter += 1;
      const anchorDir = path.join(base, `case-${counter}`);
      await mkdir(anchorDir);
      await chmod(anchorDir, 0o755);
      const anchor = path.join(anchorDir, name);
      await writeFile(anchor, 'gate@example.org ssh-ed25519 AAAA\n');
      await chmod(anchor, 0o644);
      await chown(anchor, 0, 0);
      return { dir: anchorDir, file: anchor };
    }

    realFile('passes for root-owned 644 files in 755 directories for uid 65534 over stdio', async () => {
      const signersFile = await anchorFile();
      const configFile = await anchorFile('config.yaml');
      await expect(
        assertTrustAnchors(
          [
            { role: 'allowed_signers of production', path: signersFile.file },
            { role: 'config file', path: configFile.file },
          ],
          { transport: 'stdio', uid: NOBODY },
        ),
      ).resolves.toBeUndefined();
    });

    realFile('refuses a file anyone can write (chmod 666), naming it and the fix', async () => {
      const { file: anchor } = await anchorFile();
      await chmod(anchor, 0o666);
      const error = await refusal(
        assertTrustAnchors([{ role: 'allowed_signers of production', path: anchor }], {
          transport: 'http',
          uid: NOBODY,
        }),
      );
      expect(error.code).toBe('TRUST_ANCHOR_WRITABLE');
      expect(error.message).toContain(`allowed_signers of production (${anchor})`);
      expect(error.message).toContain(`sudo chown root: ${anchor} && sudo chmod 644 ${anchor}`);
    });

    realFile('refuses a file in a 777 parent directory', async () => {
      const { dir: anchorDir, file: anchor } = await anchorFile();
      await chmod(anchorDir, 0o777);
      const error = await refusal(
        assertTrustAnchors([{ role: 'config file', path: anchor }], { transport: 'http', uid: NOBODY }),
      );
      expect(error.code).toBe('TRUST_ANCHOR_WRITABLE');
      expect(error.message).toContain(`directory ${anchorDir} is writable by others (mode 0777)`);
    });

    realFile("refuses a file owned by the server's own user over stdio", async () => {
      const { file: anchor } = await anchorFile();
      await chown(anchor, NOBODY, NOBODY);
      const error = await refusal(
        assertTrustAnchors([{ role: 'config file', path: anchor }], { transport: 'stdio', uid: NOBODY }),
      );
      expect(error.code).toBe('TRUST_ANCHOR_WRITABLE');
      expect(error.message).toContain(`${anchor} is owned by uid ${NOBODY}`);
    });

    realFile(
      'refuses a gate running as root over stdio, and takes the uid of the process by default',
      async () => {
        const { file: anchor } = await anchorFile();
        for (const context of [{ transport: 'stdio', uid: 0 }, { transport: 'stdio' }] as const) {
          const error = await refusal(assertTrustAnchors([{ role: 'config file', path: anchor }], context));
          expect(error.code).toBe('TRUST_ANCHOR_WRITABLE');
          expect(error.message).toContain('the gate runs as root over stdio');
        }
      },
    );

    realFile('passes for a gate running as root over http', async () => {
      const { file: anchor } = await anchorFile();
      await expect(
        assertTrustAnchors([{ role: 'config file', path: anchor }], { transport: 'http', uid: 0 }),
      ).resolves.toBeUndefined();
    });

    realFile(
      'judges a symlink by its target: a link in a safe directory to a writable file is refused',
      async () => {
        const target = await anchorFile();
        await chmod(target.file, 0o666);
        const safe = await anchorFile('unused');
        const link = path.join(safe.dir, 'allowed_signers');
        await symlink(target.file, link);
        const error = await refusal(
          assertTrustAnchors([{ role: 'allowed_signers of production', path: link }], {
            transport: 'stdio',
            uid: NOBODY,
          }),
        );
        expect(error.code).toBe('TRUST_ANCHOR_WRITABLE');
        expect(error.message).toContain(`${target.file} is writable by others (mode 0666)`);
      },
    );

    realFile(
      'passes a symlink to a safe file through a symlinked directory when every part is safe',
      async () => {
        const target = await anchorFile();
        const links = await anchorFile('unused');
        await symlink(target.dir, path.join(links.dir, 'keys'));
        await expect(
          assertTrustAnchors(
            [
              {
                role: 'allowed_signers of production',
                path: path.join(links.dir, 'keys', 'allowed_signers'),
              },
            ],
            {
              transport: 'stdio',
              uid: NOBODY,
            },
          ),
        ).resolves.toBeUndefined();
      },
    );

    realFile('refuses a symlink to a safe file when the directory holding the link is writable', async () => {
      const target = await anchorFile();
      const links = await anchorFile('unused');
      const link = path.join(links.dir, 'allowed_signers');
      await symlink(target.file, link);
      await chmod(links.dir, 0o777);
      const error = await refusal(
        assertTrustAnchors([{ role: 'allowed_signers of production', path: link }], {
          transport: 'stdio',
          uid: NOBODY,
        }),
      );
      expect(error.code).toBe('TRUST_ANCHOR_WRITABLE');
      expect(error.message).toContain(`via symlink ${link}`);
      expect(error.message).toContain(`directory ${links.dir} is writable by others`);
    });

    realFile('refuses a missing anchor with TRUST_ANCHOR_MISSING', async () => {
      const { dir: anchorDir } = await anchorFile();
      const missing = path.join(anchorDir, 'revoked_keys');
      const error = await refusal(
        assertTrustAnchors([{ role: 'revoked keys of production', path: missing }], {
          transport: 'stdio',
          uid: NOBODY,
        }),
      );
      expect(error.code).toBe('TRUST_ANCHOR_MISSING');
      expect(error.message).toContain(`revoked keys of production (${missing}) does not exist`);
    });
  });
});
