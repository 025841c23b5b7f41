import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { parseApprovalText } from '../../src/approvals/frontmatter.js';
import { renderApprovalFile } from '../../src/approvals/render.js';
import { ApprovalStore } from '../../src/approvals/store.js';
import { silentLogger } from '../helpers/log.js';
import { ChangeFeed } from '../../src/service/changes.js';
import { FileView } from '../../src/service/file-view.js';
import { sampleContext, sampleRequest } from '../helpers/requests.js';

describe('the approval file as a view', () => {
  it('lands writes to one file in the order they were asked for, whoever waits for them', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'file-view-'));
    const store = await ApprovalStore.open(path.join(dir, 'approvals'), path.join(dir, 'state'));
    const { id: _id, ...draft } = sampleRequest();
    const request = await store.create(draft, (r) => renderApprovalFile(r, sampleContext));
    // The first write is slow (a busy disk): the second must still land after it.
    const update = store.updateApprovalFile.bind(store);
    let calls = 0;
    vi.spyOn(store, 'updateApprovalFile').mockImplementation(async (id, change) => {
      calls += 1;
      if (calls === 1) await new Promise((resolve) => setTimeout(resolve, 200));
      return update(id, change);
    });
    const changes = new ChangeFeed();
    const shown: string[] = [];
    changes.subscribe((change) => shown.push(`${change.id} ${change.kind}`));
    const view = new FileView(store, silentLogger, changes);
    const running = view.write(request.id, { execution: 'running' });
    await view.write(request.id, { execution: 'succeeded', execution_duration_ms: 7 });
    await running;
    const data = parseApprovalText(await readFile(store.filePath(request.id), 'utf8')).data;
    expect(data).toMatchObject({ execution: 'succeeded', execution_duration_ms: 7 });
    expect(shown).toEqual([`${request.id} shown`, `${request.id} shown`]);
  });
});
