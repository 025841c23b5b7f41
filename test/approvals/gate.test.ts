import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/approvals/audit.js';
import { Gate } from '../../src/approvals/gate.js';
import { decideInFile } from '../../src/approvals/human-edit.js';
import { renderApprovalFile } from '../../src/approvals/render.js';
import type { ApprovalRequest, Decision } from '../../src/approvals/request.js';
import { ApprovalStore } from '../../src/approvals/store.js';
import { silentLogger } from '../../src/log.js';
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

async function harness(): Promise<Harness> {
  const dir = await mkdtemp(path.join(tmpdir(), 'gate-'));
  const store = await ApprovalStore.open(path.join(dir, 'approvals'), path.join(dir, 'state'));
  let now = new Date();
  const { id: _id, ...draft } = sampleRequest({
    created_at: formatTimestamp(now),
    expires_at: formatTimestamp(new Date(now.getTime() + 60 * 60_000)),
  });
  const request = await store.create(draft, (r) => renderApprovalFile(r, sampleContext));
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
    recheckIntervalMs: 60_000,
    watchFiles: true,
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
});
