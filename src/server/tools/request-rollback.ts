import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { z } from 'zod';
import { ApprovalId } from '../../approvals/request.js';
import type { Pipeline } from '../../pipeline.js';
import { outcomeOfRefusal, outcomeOfStatus, toToolResult, ToolOutcome } from '../outcome.js';

const RequestRollbackInput = z.object({
  id: ApprovalId.describe('The executed request whose recorded rollback SQL should run.'),
  reason: z.string().min(10).max(10_000).describe('Why the change must be undone; shown to the reviewer.'),
});

const config = {
  title: 'Request a rollback (after human approval)',
  description:
    'Asks to run the rollback SQL recorded with an executed request. This creates a NEW approval request: ' +
    'nothing runs until a human approves it. Returns PENDING with the new approval_id; use await_approval.',
  inputSchema: RequestRollbackInput.shape,
  outputSchema: ToolOutcome.shape,
  annotations: {
    title: 'Request rollback (human-approved)',
    readOnlyHint: false,
    destructiveHint: true,
    idempotentHint: false,
    openWorldHint: false,
  },
};

export function registerRequestRollbackTool(server: McpServer, pipeline: Pipeline): void {
  server.registerTool('request_rollback', config, async ({ id, reason }) => {
    try {
      const { request } = await pipeline.requestRollback(id, {
        requestedBy: pipeline.config.requested_by,
        reason,
      });
      return toToolResult(outcomeOfStatus(await pipeline.status(request.id)));
    } catch (error) {
      return toToolResult(outcomeOfRefusal(error));
    }
  });
}
