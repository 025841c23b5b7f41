import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { sampleCommand, sampleRequest } from '../helpers/requests.js';
import { clientAnswerBar } from '../../src/service/client-answer.js';

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

describe('who may answer in the MCP client', () => {
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
