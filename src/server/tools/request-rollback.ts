import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { z } from 'zod';
import { ApprovalId } from '../../approvals/request.js';
import type { PipelineHandle } from '../handle.js';
import { outcomeOfRefusal, outcomeOfStatus, toToolResult, ToolOutcome } from '../outcome.js';

const RequestRollbackInput = z.object({
  id: ApprovalId.describe('The executed request whose recorded rollback SQL should run.'),
  reason: z.string().min(10).max(10_000).describe('Why the change must be undone; shown to the reviewer.'),
});

const config = {
  title: 'Request a rollback (after human approval)',
  description:
    'Asks to run the rollback SQL recorded with a request that executed successfully (not a dry run). This ' +
    'creates a NEW approval request (one per execution, unless an earlier one ended unapproved): nothing ' +
    "runs until a human approves it, unless the environment's require_approval is never. Returns at once, " +
    'normally PENDING with the new approval_id; then use await_approval.',
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

export function registerRequestRollbackTool(server: McpServer, gate: PipelineHandle): void {
  server.registerTool('request_rollback', config, async ({ id, reason }) => {
    try {
      const pipeline = await gate.pipeline();
      const { request } = await pipeline.requestRollback(id, {
        requestedBy: gate.config.requested_by,
        reason,
      });
      return toToolResult(outcomeOfStatus(await pipeline.status(request.id)));
    } catch (error) {
      return toToolResult(outcomeOfRefusal(error));
    }
  });
}
