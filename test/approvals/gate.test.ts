import { appendFile, mkdtemp, readFile, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { AuditLog } from '../../src/approvals/audit.js';
import { RACY_STAMP_MS, unchangedSinceRead, type FileStamp } from '../../src/approvals/file-stamp.js';
import { Gate, type GateOptions } from '../../src/approvals/gate.js';
import { decideInFile } from '../../src/approvals/human-edit.js';
import { renderApprovalFile } from '../../src/approvals/render.js';
import type { ApprovalRequest, Decision } from '../../src/approvals/request.js';
import { ApprovalStore } from '../../src/approvals/store.js';
import { silentLogger } from '../helpers/log.js';
import { formatTimestamp } from '../../src/time.js';
import { sampleContext, sampleRequest } from '../helpers/requests.js';

/* The gate in-process, with an injected clock; the file-system events are real. */

interface Harness {
  store: ApprovalStore;
  gate: Gate;
  request: ApprovalRequest;
  file: string;
  decisions: Decision[];
  decided: Promise<Decision>;
  setNow: (date: Date) => void;
}

interface HarnessOptions {
  readonly watchFiles?: boolean;
  readonly recheckIntervalMs?: number;
  readonly fullReadEveryMs?: number;
  /** Backdate the file before the gate first reads it, so its stamp is trusted at once. */
  readonly aged?: boolean;
}

/** A second server's gate over the same store: no file events, its own clock, a recheck far off. */
function anotherInstance(
  store: ApprovalStore,
  callbacks: Pick<GateOptions, 'onDecision' | 'onChanged'>,
): Gate {
  return new Gate({
    store,
    audit: new AuditLog(path.join(path.dirname(store.approvalsDir), 'state'), () => new Date()),
    timeZone: null,
    approversFor: () => null,
    signersFor: () => null,
    autoApproval: () => null,
    clock: () => new Date(),
    log: silentLogger,
    recheckIntervalMs: 60_000,
    watchFiles: false,
    ...callbacks,
  });
}

async function harness(options: HarnessOptions = {}): Promise<Harness> {
  const dir = await mkdtemp(path.join(tmpdir(), 'gate-'));
  const store = await ApprovalStore.open(path.join(dir, 'approvals'), path.join(dir, 'state'));
  let now = new Date();
  const { id: _id, ...draft } = sampleRequest({
    created_at: formatTimestamp(now),
    expires_at: formatTimestamp(new Date(now.getTime() + 60 * 60_000)),
  });
  const request = await store.create(draft, (r) => renderApprovalFile(r, sampleContext));
  if (options.aged) {
    const hourAgo = new Date(Date.now() - 60 * 60_000);
    await utimes(store.filePath(request.id), hourAgo, hourAgo);
  }
  const decisions: Decision[] = [];
  let resolveDecided: (d: Decision) => void = () => undefined;
  const decided = new Promise<Decision>((resolve) => (resolveDecided = resolve));
  const gate = new Gate({
    store,
    audit: new AuditLog(path.join(dir, 'state'), () => now),
    timeZone: null,
    approversFor: () => null,
    signersFor: () => null,
    autoApproval: () => null,
    clock: () => now,
    log: silentLogger,
    recheckIntervalMs: options.recheckIntervalMs ?? 60_000,
    watchFiles: options.watchFiles ?? true,
    ...(options.fullReadEveryMs !== undefined ? { fullReadEveryMs: options.fullReadEveryMs } : {}),
    onDecision: async (_request, decision) => {
      decisions.push(decision);
      resolveDecided(decision);
    },
  });
  gate.start();
  gate.track(request);
  return {
    store,
    gate,
    request,
    file: store.filePath(request.id),
    decisions,
    decided,
    setNow: (d) => (now = d),
  };
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 300));

/** Every approval file text the gate has read through `store`, as it read it. */
function textsTheGateRead(store: ApprovalStore): string[] {
  const texts: string[] = [];
  const read = store.readApprovalFile.bind(store);
  vi.spyOn(store, 'readApprovalFile').mockImplementation(async (id) => {
    const file = await read(id);
    if (file.kind === 'ok') texts.push(file.text);
    return file;
  });
  return texts;
}

describe('gate', () => {
  it('sees a save through file-system events, not the periodic re-check', async () => {
    const h = await harness();
    const started = Date.now();
    await decideInFile(h.file, { status: 'APPROVED', decidedBy: 'Dana' }, 'rename');
    const decision = await h.decided;
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(decision).toMatchObject({ status: 'APPROVED', decided_by: 'Dana' });
    h.gate.stop();
  });

  it('never takes a half-written file for a decision, and reads it again once complete', async () => {
    const h = await harness();
    const full = (await readFile(h.file, 'utf8'))
      .replace('status: "PENDING"', 'status: "APPROVED"')
      .replace('decided_by: ""', 'decided_by: "Dana"');
    const cut = full.indexOf('decided_by');
    await writeFile(h.file, full.slice(0, cut + 10)); // front matter not closed yet
    await settle();
    expect(h.decisions).toEqual([]);
    expect(h.gate.problem(h.request.id)?.code).toBe('FRONT_MATTER_UNTERMINATED');
    await writeFile(h.file, full);
    expect(await h.decided).toMatchObject({ status: 'APPROVED' });
    h.gate.stop();
  });

  it('judges the whole file, not the first pages a read caught while an in-place save was writing', async () => {
    const h = await harness();
    const seen = textsTheGateRead(h.store);
    const full = (await readFile(h.file, 'utf8'))
      .replace('status: "PENDING"', 'status: "APPROVED"')
      .replace('decided_by: ""', 'decided_by: "Dana"');
    // What a read sees of a save still writing: the front matter whole, the headings after it missing.
    const firstPages = full.slice(0, full.indexOf('## Preview'));
    await writeFile(h.file, firstPages);
    await vi.waitFor(() => expect(seen).toContain(firstPages));
    // The same save writes on.
    await appendFile(h.file, full.slice(firstPages.length));
    expect(await h.decided).toMatchObject({ status: 'APPROVED', decided_by: 'Dana' });
    h.gate.stop();
  });

  it('an approval saved over an edited Preview stays VOID when the edit is put back at once', async () => {
    const h = await harness();
    const seen = textsTheGateRead(h.store);
    const original = await readFile(h.file, 'utf8');
    const approve = (text: string) =>
      text.replace('status: "PENDING"', 'status: "APPROVED"').replace('decided_by: ""', 'decided_by: "Dana"');
    const sql = h.request.command.sql.trim();
    const edited = original.split(sql).join('SELECT 1;');
    expect(edited).not.toBe(original);
    // The human approves what the agent made the file show; the agent restores it right away.
    await writeFile(h.file, approve(edited));
    await vi.waitFor(() => expect(seen).toContain(approve(edited)));
    await writeFile(h.file, approve(original));
    expect(await h.decided).toMatchObject({ status: 'VOID' });
    h.gate.stop();
  });

  it('a truncated file that lost its id is refused, not approved', async () => {
    const h = await harness();
    await writeFile(h.file, '---\nstatus: "APPROVED"\ndecided_by: "Dana"\n---\n');
    await settle();
    expect(h.decisions).toEqual([]);
    expect(h.gate.problem(h.request.id)?.code).toBe('ID_MISMATCH');
    h.gate.stop();
  });

  it('expires by its own clock and never executes a decision that arrives later', async () => {
    const h = await harness();
    h.setNow(new Date(Date.parse(h.request.expires_at) + 1));
    await decideInFile(h.file, {
      status: 'APPROVED',
      decidedBy: 'Dana',
      decidedAt: formatTimestamp(new Date()),
    });
    expect(await h.decided).toMatchObject({ status: 'EXPIRED', decided_by: null });
    expect(await h.store.readDecision(h.request.id)).toMatchObject({ status: 'EXPIRED' });
    h.gate.stop();
  });

  it('tells of a decision another instance recorded, as of one it recorded itself', async () => {
    const h = await harness();
    await decideInFile(h.file, { status: 'APPROVED', decidedBy: 'Dana' });
    await h.decided;
    h.gate.stop();
    const changed: string[] = [];
    const second = anotherInstance(h.store, {
      onDecision: async () => undefined,
      onChanged: (id) => changed.push(id),
    });
    second.track(h.request);
    await vi.waitFor(() => expect(changed).toContain(h.request.id));
    second.stop();
  });

  it('tells of the decision when another instance recorded it a moment before this one could', async () => {
    const h = await harness();
    h.gate.stop();
    await decideInFile(h.file, { status: 'APPROVED', decidedBy: 'Dana' });
    // The other instance records first, after this one read "no decision yet".
    const theirs = await h.store.recordDecision(h.request.id, {
      approval_id: h.request.id,
      request_hash: h.request.request_hash,
      status: 'APPROVED',
      decided_by: 'Dana',
      decided_at: formatTimestamp(new Date()),
      claimed_decided_at: null,
      second_approver: null,
      reason: null,
      signatures: [],
    });
    vi.spyOn(h.store, 'readDecision').mockResolvedValueOnce(null);
    const changed: string[] = [];
    const handed: unknown[] = [];
    const second = anotherInstance(h.store, {
      onDecision: (_request, decision) => {
        handed.push(decision);
        return Promise.resolve();
      },
      onChanged: (id) => changed.push(id),
    });
    second.track(h.request);
    await vi.waitFor(() => expect(handed).toEqual([theirs]));
    expect(changed).toContain(h.request.id);
    second.stop();
  });

  it('ignores edits after the decision: the first decision stands', async () => {
    const h = await harness();
    await decideInFile(h.file, { status: 'REJECTED', decidedBy: 'Dana', reason: 'No' });
    await h.decided;
    await decideInFile(h.file, { status: 'APPROVED', decidedBy: 'Eve' });
    await settle();
    expect(h.decisions).toHaveLength(1);
    expect(await h.store.readDecision(h.request.id)).toMatchObject({
      status: 'REJECTED',
      decided_by: 'Dana',
    });
    h.gate.stop();
  });

  it('reads a decided file again when a human edits it, not when the server rewrote it itself', async () => {
    const h = await harness();
    await decideInFile(h.file, { status: 'REJECTED', decidedBy: 'Dana', reason: 'No' });
    await h.decided;
    await settle();
    const reads = vi.spyOn(h.store, 'readApprovalFile');
    // The server shows the outcome: the echo of that write is nobody's decision.
    await h.store.updateApprovalFile(h.request.id, (text) => `${text}\n## Outcome\n\nRejected.\n`);
    await settle();
    expect(reads).not.toHaveBeenCalled();
    // A human's edit afterwards is read (and, contradicting the decision, ignored).
    await decideInFile(h.file, { status: 'APPROVED', decidedBy: 'Eve' });
    await settle();
    expect(reads).toHaveBeenCalled();
    expect(h.decisions).toHaveLength(1);
    h.gate.stop();
  });

  describe('the periodic re-check', () => {
    const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

    it('notices a save that no file-system event reported', async () => {
      // No watcher at all, and no full reads within the test: only the stamp can reveal the save.
      const h = await harness({
        watchFiles: false,
        recheckIntervalMs: 50,
        fullReadEveryMs: 3_600_000,
        aged: true,
      });
      await sleep(200);
      await decideInFile(h.file, { status: 'APPROVED', decidedBy: 'Dana' }, 'in-place');
      expect(await h.decided).toMatchObject({ status: 'APPROVED', decided_by: 'Dana' });
      h.gate.stop();
    }, 10_000);

    it('does not read again a file untouched since the last check', async () => {
      const h = await harness({ recheckIntervalMs: 50, aged: true });
      const reads = vi.spyOn(h.store, 'readApprovalFile');
      await sleep(100);
      const afterFirstCheck = reads.mock.calls.length;
      await sleep(600); // about 12 re-checks
      expect(reads.mock.calls.length).toBe(afterFirstCheck);
      expect(afterFirstCheck).toBeLessThanOrEqual(1);
      await decideInFile(h.file, { status: 'APPROVED', decidedBy: 'Dana' }, 'rename');
      expect(await h.decided).toMatchObject({ status: 'APPROVED' });
      h.gate.stop();
    });

    it('without file-system events, still reads every file in full now and then', async () => {
      // A network file system may answer a stat from its attribute cache.
      const h = await harness({ watchFiles: false, recheckIntervalMs: 50, fullReadEveryMs: 200, aged: true });
      const reads = vi.spyOn(h.store, 'readApprovalFile');
      await sleep(1000); // 20 re-checks, one full read in four
      expect(reads.mock.calls.length).toBeGreaterThanOrEqual(3);
      expect(reads.mock.calls.length).toBeLessThanOrEqual(7);
      h.gate.stop();
    });
  });

  describe('a file stamp', () => {
    const readAtMs = Date.parse('2026-02-13T09:00:00Z');
    const ns = (ms: number) => BigInt(ms) * 1_000_000n;
    const stamp = (changes: Partial<Extract<FileStamp, { kind: 'file' }>> = {}): FileStamp => ({
      kind: 'file',
      ino: 42n,
      size: 4096n,
      mtimeNs: ns(readAtMs - 60_000),
      ctimeNs: ns(readAtMs - 60_000),
      ...changes,
    });

    it.each([
      { what: 'the same file', now: stamp(), unchanged: true },
      { what: 'a rename-save (new inode)', now: stamp({ ino: 43n }), unchanged: false },
      { what: 'a save of another size', now: stamp({ size: 4097n }), unchanged: false },
      { what: 'a same-size save (new mtime)', now: stamp({ mtimeNs: ns(readAtMs + 5) }), unchanged: false },
      {
        what: 'a change of metadata (new ctime)',
        now: stamp({ ctimeNs: ns(readAtMs + 5) }),
        unchanged: false,
      },
      { what: 'a missing file', now: { kind: 'none' } as const, unchanged: false },
    ])('tells $what (unchanged: $unchanged)', ({ now, unchanged }) => {
      expect(unchangedSinceRead({ stamp: stamp(), readAtMs }, now)).toBe(unchanged);
    });

    it('proves nothing when the file had changed just before it was read', () => {
      const fresh = stamp({ mtimeNs: ns(readAtMs - RACY_STAMP_MS + 1) });
      expect(unchangedSinceRead({ stamp: fresh, readAtMs }, fresh)).toBe(false);
      expect(unchangedSinceRead({ stamp: fresh, readAtMs: readAtMs + RACY_STAMP_MS }, fresh)).toBe(true);
    });
  });
});
