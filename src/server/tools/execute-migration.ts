import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { Pipeline } from '../../pipeline.js';
import { MigrationRequestInput } from '../../pipeline.js';
import { outcomeOfRefusal, outcomeOfStatus, toToolResult, ToolOutcome } from '../outcome.js';
import { waitBounded } from '../wait.js';

const config = {
  title: 'Execute a database migration (after human approval)',
  description:
    'Requests a migration on a configured database. It does NOT run at once: the server writes an approval ' +
    'file that a human reviews and approves or rejects. This call waits up to ~50 s for that decision. If the ' +
    'human has not decided yet, it returns status PENDING with an approval_id; then call await_approval with ' +
    'that id (repeatedly, as long as it returns PENDING) until the result is final. Never resubmit the same ' +
    'migration while one is pending. Statuses: APPROVED (see execution: succeeded, failed, rolled_back for ' +
    'a dry run, unknown), REJECTED (with the reason), EXPIRED, REFUSED (your request was invalid).',
  inputSchema: MigrationRequestInput.shape,
  outputSchema: ToolOutcome.shape,
  annotations: {
    title: 'Execute migration (human-approved)',
    readOnlyHint: false,
    destructiveHint: true,
    idempotentHint: false,
    openWorldHint: false,
  },
};

export function registerExecuteMigrationTool(server: McpServer, pipeline: Pipeline): void {
  server.registerTool('execute_migration', config, async (input, extra) => {
    let id: string;
    try {
      id = (await pipeline.submit(input)).request.id;
    } catch (error) {
      return toToolResult(outcomeOfRefusal(error));
    }
    return toToolResult(outcomeOfStatus(await waitBounded(pipeline, id, extra)));
  });
}
