import { mkdtemp, readFile, rename, symlink, writeFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseApprovalText } from '../../src/approvals/frontmatter.js';
import { renderApprovalFile } from '../../src/approvals/render.js';
import { ApprovalStore } from '../../src/approvals/store.js';
import { sampleContext, sampleRequest } from '../helpers/requests.js';

async function freshStore(): Promise<{ store: ApprovalStore; approvalsDir: string; stateDir: string }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'gate-store-'));
  const approvalsDir = path.join(dir, 'approvals');
  const stateDir = path.join(dir, 'state');
  return { store: await ApprovalStore.open(approvalsDir, stateDir), approvalsDir, stateDir };
}

const { id: _id, ...draft } = sampleRequest({ created_at: '2026-02-13T09:00:00+00:00' });
const render = (request: Parameters<typeof renderApprovalFile>[0]) =>
  renderApprovalFile(request, sampleContext);

describe('approval store', () => {
  it('allocates unique ids under concurrency, across two store instances on one directory', async () => {
    const { store, approvalsDir, stateDir } = await freshStore();
    const twin = await ApprovalStore.open(approvalsDir, stateDir);
    const created = await Promise.all(
      Array.from({ length: 40 }, (_, i) => (i % 2 ? store : twin).create(draft, render)),
    );
    const ids = created.map((r) => r.id);
    expect(new Set(ids).size).toBe(40);
    expect([...ids].sort()[0]).toBe('APR-20260213-001');
    expect([...ids].sort()[39]).toBe('APR-20260213-040');
    for (const id of ids) {
      const text = await readFile(store.filePath(id), 'utf8');
      expect(parseApprovalText(text).data.id).toBe(id);
    }
  });

  it('keeps its records private (0700 directory, 0600 files)', async () => {
    const { store, stateDir } = await freshStore();
    const request = await store.create(draft, render);
    expect((await stat(stateDir)).mode & 0o777).toBe(0o700);
    expect((await stat(path.join(stateDir, 'records', `${request.id}.json`))).mode & 0o777).toBe(0o600);
    expect(await store.readRequest(request.id)).toEqual(request);
  });

  it('lets the first recorded decision stand', async () => {
    const { store } = await freshStore();
    const request = await store.create(draft, render);
    const approve = {
      approval_id: request.id,
      request_hash: request.request_hash,
      status: 'APPROVED',
      decided_by: 'Dana',
      decided_at: 'x',
      claimed_decided_at: null,
      second_approver: null,
      reason: null,
    } as const;
    const reject = { ...approve, status: 'REJECTED', reason: 'late' } as const;
    const [a, b] = await Promise.all([
      store.recordDecision(request.id, { ...approve, signatures: [] }),
      store.recordDecision(request.id, { ...reject, signatures: [] }),
    ]);
    expect(a).toEqual(b);
    expect(await store.readDecision(request.id)).toEqual(a);
  });

  it('refuses ids that could name a path outside the approvals directory', async () => {
    const { store } = await freshStore();
    expect(() => store.filePath('../APR-20260213-001')).toThrow(/not an approval id/);
    expect(() => store.filePath('APR-20260213-001/../../x')).toThrow(/not an approval id/);
  });
});

describe('security: state files someone else wrote', () => {
  // The agent runs as the server's user: anything in the state directory may be garbage.
  it('refuses a record, a decision or an outcome that is not what the server wrote, by name', async () => {
    const { store, stateDir } = await freshStore();
    const request = await store.create(draft, render);
    const file = (dir: string) => path.join(stateDir, dir, `${request.id}.json`);
    await writeFile(file('decisions'), '{"status": "APPROVED"');
    await expect(store.readDecision(request.id)).rejects.toMatchObject({ code: 'DECISION_CORRUPT' });
    await store.recordOutcome(request.id, { execution: 'failed', in_ledger: false, error: 'x', at: 'now' });
    await writeFile(file('outcomes'), JSON.stringify({ execution: 'succeeded', in_ledger: false }));
    await expect(store.readOutcome(request.id)).rejects.toMatchObject({ code: 'OUTCOME_CORRUPT' });
    await writeFile(file('records'), 'not json');
    await expect(store.readRequest(request.id)).rejects.toMatchObject({
      code: 'RECORD_CORRUPT',
      message: expect.stringContaining(request.id) as unknown,
    });
  });

  it('refuses to open a state directory whose installation id is not one', async () => {
    const { approvalsDir, stateDir } = await freshStore();
    await writeFile(path.join(stateDir, 'installation'), 'copied-from-elsewhere\n');
    await expect(ApprovalStore.open(approvalsDir, stateDir)).rejects.toMatchObject({
      code: 'STATE_CORRUPT',
      message: expect.stringContaining('does not hold an installation id') as unknown,
    });
  });
});

describe('security: reading approval files', () => {
  it('refuses a symlink in place of an approval file, even one pointing at an approved file', async () => {
    const { store, approvalsDir } = await freshStore();
    const request = await store.create(draft, render);
    const elsewhere = path.join(approvalsDir, '..', 'approved.md');
    await writeFile(
      elsewhere,
      (await readFile(store.filePath(request.id), 'utf8')).replace('status: "PENDING"', 'status: "APPROVED"'),
    );
    const { rm } = await import('node:fs/promises');
    await rm(store.filePath(request.id));
    await symlink(elsewhere, store.filePath(request.id));
    expect(await store.readApprovalFile(request.id)).toMatchObject({
      kind: 'unreadable',
      error: { code: 'FILE_SYMLINK' },
    });
  });

  it('refuses a file over the size limit without parsing it', async () => {
    const { store } = await freshStore();
    const request = await store.create(draft, render);
    await writeFile(store.filePath(request.id), `---\nid: "${request.id}"\n---\n${'x'.repeat(300 * 1024)}`);
    expect(await store.readApprovalFile(request.id)).toMatchObject({
      kind: 'unreadable',
      error: { code: 'FILE_TOO_LARGE' },
    });
  });

  it('refuses invalid UTF-8', async () => {
    const { store } = await freshStore();
    const request = await store.create(draft, render);
    await writeFile(
      store.filePath(request.id),
      Buffer.concat([Buffer.from('---\nstatus: "'), Buffer.from([0xc3, 0x28]), Buffer.from('"\n---\n')]),
    );
    expect(await store.readApprovalFile(request.id)).toMatchObject({
      kind: 'unreadable',
      error: { code: 'FILE_ENCODING' },
    });
  });
});

describe('own writes', () => {
  it('knows the approval file it last wrote itself, and no longer once anyone else saves it', async () => {
    const { store } = await freshStore();
    const request = await store.create(draft, render);
    const file = store.filePath(request.id);
    // A file the store never rewrote is never its own write: the gate must read it.
    expect(store.isOwnWrite(request.id)).toBe(false);
    await store.updateApprovalFile(request.id, (text) =>
      text.replace('status: "PENDING"', 'status: "EXPIRED"'),
    );
    expect(store.isOwnWrite(request.id)).toBe(true);
    // A human's in-place save (same inode, new content and times).
    await writeFile(file, `${await readFile(file, 'utf8')}\nA note from a reviewer.\n`);
    expect(store.isOwnWrite(request.id)).toBe(false);
    await store.updateApprovalFile(request.id, (text) => text.replace('A note from a reviewer.', 'A note.'));
    expect(store.isOwnWrite(request.id)).toBe(true);
    // A rename-save of identical bytes: a new inode.
    const text = await readFile(file, 'utf8');
    await writeFile(`${file}.tmp`, text);
    await rename(`${file}.tmp`, file);
    expect(store.isOwnWrite(request.id)).toBe(false);
  });
});
