import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { z } from 'zod';
import { ApprovalId } from '../../approvals/request.js';
import type { PipelineHandle } from '../handle.js';
import { outcomeOfRefusal, outcomeOfStatus, toToolResult, ToolOutcome } from '../outcome.js';

const CancelApprovalInput = z.object({
  id: ApprovalId.describe('The pending request to withdraw.'),
  reason: z
    .string()
    .min(3)
    .max(2000)
    .describe('Why it is withdrawn; written into the file for the reviewer.'),
});

const config = {
  title: 'Withdraw a pending approval request',
  description:
    'Withdraws a request you made that no one has decided yet, e.g. to resubmit a safer version after reading ' +
    'the findings. It becomes CANCELLED and can never run. A decided request cannot be cancelled.',
  inputSchema: CancelApprovalInput.shape,
  outputSchema: ToolOutcome.shape,
  annotations: {
    title: 'Cancel approval',
    readOnlyHint: false,
    destructiveHint: false,
    idempotentHint: false,
    openWorldHint: false,
  },
};

export function registerCancelApprovalTool(server: McpServer, gate: PipelineHandle): void {
  server.registerTool('cancel_approval', config, async ({ id, reason }) => {
    try {
      const pipeline = await gate.pipeline();
      return toToolResult(
        outcomeOfStatus(await pipeline.cancel(id, { by: gate.config.requested_by, reason })),
      );
    } catch (error) {
      return toToolResult(outcomeOfRefusal(error));
    }
  });
}
