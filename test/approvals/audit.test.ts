import { mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/approvals/audit.js';

async function freshLog(): Promise<{ audit: AuditLog; dir: string }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'gate-audit-'));
  return { audit: new AuditLog(dir, () => new Date('2026-02-13T09:00:00Z')), dir };
}

const entry = (n: number) => ({
  approval_id: `APR-20260213-00${n}`,
  event: 'requested' as const,
  actor: 'agent',
  request_hash: null,
});

const lines = async (file: string) =>
  (await readFile(file, 'utf8'))
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as { approval_id: string });

describe('the audit trail', () => {
  it('appends one whole, private JSON line per entry, also when entries are appended at once', async () => {
    const { audit } = await freshLog();
    await Promise.all([1, 2, 3, 4, 5].map((n) => audit.append(entry(n))));
    // Concurrent appends land whole, in whatever order the disk took them.
    expect((await lines(audit.file)).map((l) => l.approval_id).sort()).toEqual(
      [1, 2, 3, 4, 5].map((n) => `APR-20260213-00${n}`),
    );
    expect((await stat(audit.file)).mode & 0o777).toBe(0o600);
    await audit.close();
  });

  it('is always the file the state directory shows: one deleted or moved away is made anew', async () => {
    const { audit } = await freshLog();
    await audit.append(entry(1));
    await rm(audit.file);
    await audit.append(entry(2));
    expect((await lines(audit.file)).map((l) => l.approval_id)).toEqual(['APR-20260213-002']);
    await audit.close();
  });

  it('never writes through a link put in its place', async () => {
    const { audit, dir } = await freshLog();
    await audit.append(entry(1));
    const elsewhere = path.join(dir, 'elsewhere.txt');
    await writeFile(elsewhere, 'untouched\n');
    await rm(audit.file);
    await symlink(elsewhere, audit.file);
    await expect(audit.append(entry(2))).rejects.toMatchObject({ code: 'ELOOP' });
    expect(await readFile(elsewhere, 'utf8')).toBe('untouched\n');
    await audit.close();
  });
});
