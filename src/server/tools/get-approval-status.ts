import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { z } from 'zod';
import { ApprovalId } from '../../approvals/request.js';
import type { PipelineHandle } from '../handle.js';
import { outcomeOfRefusal, outcomeOfStatus, toToolResult, ToolOutcome } from '../outcome.js';

const GetApprovalStatusInput = z.object({
  id: ApprovalId.describe('The approval_id returned by execute_migration.'),
});

const config = {
  title: 'Get the status of an approval request',
  description: 'Answers at once with the current decision and execution state of a request; does not wait.',
  inputSchema: GetApprovalStatusInput.shape,
  outputSchema: ToolOutcome.shape,
  annotations: {
    title: 'Approval status',
    readOnlyHint: true,
    destructiveHint: false,
    idempotentHint: true,
    openWorldHint: false,
  },
};

export function registerGetApprovalStatusTool(server: McpServer, gate: PipelineHandle): void {
  server.registerTool('get_approval_status', config, async ({ id }) => {
    try {
      return toToolResult(outcomeOfStatus(await (await gate.pipeline()).status(id)));
    } catch (error) {
      return toToolResult(outcomeOfRefusal(error));
    }
  });
}
