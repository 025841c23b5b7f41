import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/approvals/audit.js';
import { parseApprovalText } from '../../src/approvals/frontmatter.js';
import { decideInFile } from '../../src/approvals/human-edit.js';
import { renderApprovalFile } from '../../src/approvals/render.js';
import { ApprovalStore } from '../../src/approvals/store.js';
import { parseConfig } from '../../src/config.js';
import { systemClock } from '../../src/time.js';
import { clientAnswerBar } from '../../src/service/client-answer.js';
import { writeClientAnswer } from '../../src/service/write-client-answer.js';
import { silentLogger } from '../helpers/log.js';
import { sampleCommand, sampleContext, sampleRequest } from '../helpers/requests.js';

const config = (environment: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
  parseConfig(
    {
      databases: { main_db: { client: 'pg', connection_env: 'MAIN_DB_URL' } },
      environments: { dev: { databases: ['main_db'], ...environment } },
      local_user: 'Dana Reyes',
      ...extra,
    },
    '/base',
  );

const devRequest = sampleRequest({}, sampleCommand({ environment: 'dev' }));

async function fixture() {
  const dir = await mkdtemp(path.join(tmpdir(), 'client-answer-'));
  const store = await ApprovalStore.open(path.join(dir, 'approvals'), path.join(dir, 'state'));
  const { id: _id, ...draft } = devRequest;
  const request = await store.create(draft, (r) => renderApprovalFile(r, sampleContext));
  const audit = new AuditLog(path.join(dir, 'state'), systemClock);
  const options = { store, audit, config: config({ approve_in_client: true }), log: silentLogger };
  const file = store.filePath(request.id);
  const frontMatter = async () => parseApprovalText(await readFile(file, 'utf8')).data;
  return { request, options, file, frontMatter, audit };
}

describe('an answer given in the MCP client', () => {
  it('is written as the edit a person would make, marked as coming from the client, and audited', async () => {
    const { request, options, frontMatter, audit } = await fixture();
    expect(
      await writeClientAnswer(options, request, { status: 'REJECTED', reason: 'Not now.' }, 'Client 1.0'),
    ).toBe(true);
    expect(await frontMatter()).toMatchObject({
      status: 'REJECTED',
      decided_by: 'Dana Reyes',
      reason: 'Not now.',
      decided_via: 'mcp-client',
    });
    await audit.close();
    const lines = (await readFile(audit.file, 'utf8')).trim().split('\n');
    expect(JSON.parse(lines.at(-1) ?? '{}')).toMatchObject({
      event: 'answered_in_client',
      actor: 'Dana Reyes',
      detail: 'REJECTED in the MCP client "Client 1.0": Not now.',
    });
  });

  it('never overwrites a decision someone made in the file first', async () => {
    const { request, options, file, frontMatter } = await fixture();
    await decideInFile(file, { status: 'APPROVED', decidedBy: 'Lee Park' });
    expect(
      await writeClientAnswer(options, request, { status: 'REJECTED', reason: 'Late.' }, 'Client 1.0'),
    ).toBe(false);
    expect(await frontMatter()).toMatchObject({ status: 'APPROVED', decided_by: 'Lee Park' });
    expect(await frontMatter()).not.toHaveProperty('decided_via');
  });

  it('is not asked for where it could not count', () => {
    expect(clientAnswerBar(config({ approve_in_client: true }), devRequest)).toBeNull();
    expect(clientAnswerBar(config({}), devRequest)).toMatch(/does not take decisions in the MCP client/);
    expect(
      clientAnswerBar(config({ approve_in_client: true }), { ...devRequest, requested_by: 'dana reyes' }),
    ).toMatch(/also the requester/);
    expect(
      clientAnswerBar(
        // The OS user, whom the config cannot check: the server does, before asking.
        config(
          { approve_in_client: true, approvers: ['Lee Park'], require_approval: 'not_for_dry_runs' },
          { local_user: undefined },
        ),
        devRequest,
      ),
    ).toMatch(/not among the approvers/);
  });
});
