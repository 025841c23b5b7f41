import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { z } from 'zod';
import { ApprovalId } from '../../approvals/request.js';
import type { Pipeline } from '../../pipeline.js';
import { outcomeOfRefusal, outcomeOfStatus, toToolResult, ToolOutcome } from '../outcome.js';
import { waitBounded } from '../wait.js';

const AwaitApprovalInput = z.object({
  id: ApprovalId.describe('The approval_id returned by execute_migration, e.g. APR-20260213-003.'),
  max_wait_seconds: z
    .number()
    .positive()
    .optional()
    .describe("Wait at most this long (capped by the server's bound, ~50 s). Omit to use the bound."),
});

const config = {
  title: 'Wait for an approval decision and its execution',
  description:
    'Waits (up to ~50 s) for the human decision on a request made with execute_migration, and for its ' +
    'execution if approved. Returns PENDING again if the human has not decided yet: then call it again. ' +
    'Works across reconnects: requests live on disk, not in this session.',
  inputSchema: AwaitApprovalInput.shape,
  outputSchema: ToolOutcome.shape,
  annotations: {
    title: 'Await approval',
    readOnlyHint: true,
    destructiveHint: false,
    idempotentHint: true,
    openWorldHint: false,
  },
};

export function registerAwaitApprovalTool(server: McpServer, pipeline: Pipeline): void {
  server.registerTool('await_approval', config, async ({ id, max_wait_seconds }, extra) => {
    try {
      return toToolResult(outcomeOfStatus(await waitBounded(pipeline, id, extra, max_wait_seconds)));
    } catch (error) {
      return toToolResult(outcomeOfRefusal(error));
    }
  });
}
