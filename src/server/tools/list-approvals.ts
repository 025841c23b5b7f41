import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { z } from 'zod';
import type { PipelineHandle } from '../handle.js';

const Status = z.enum(['PENDING', 'APPROVED', 'REJECTED', 'EXPIRED', 'VOID', 'CANCELLED']);

const ListApprovalsInput = z.object({
  status: Status.optional().describe('Only requests with this decision status, e.g. PENDING.'),
});

const ApprovalSummary = z.object({
  approval_id: z.string(),
  status: Status,
  execution: z.string(),
  title: z.string(),
  environment: z.string(),
  database: z.string(),
  priority: z.string(),
  requested_by: z.string(),
  created_at: z.string(),
  expires_at: z.string(),
  decided_by: z.string().nullable(),
  problem: z.string().nullable().describe("Why the file's current edit is not accepted, if it is not."),
  file: z.string(),
});

const ListApprovalsOutput = z.object({ approvals: z.array(ApprovalSummary) });

const config = {
  title: 'List approval requests',
  description:
    'Lists the approval requests this server knows, newest last, optionally only those with one status.',
  inputSchema: ListApprovalsInput.shape,
  outputSchema: ListApprovalsOutput.shape,
  annotations: {
    title: 'List approvals',
    readOnlyHint: true,
    destructiveHint: false,
    idempotentHint: true,
    openWorldHint: false,
  },
};

export function registerListApprovalsTool(server: McpServer, gate: PipelineHandle): void {
  server.registerTool('list_approvals', config, async ({ status }) => {
    const approvals = await (await gate.pipeline()).list(status === undefined ? {} : { status });
    const structured = { approvals };
    const lines = approvals.map(
      (a) => `${a.approval_id} ${a.status} ${a.execution} ${a.environment}/${a.database}: ${a.title}`,
    );
    return {
      content: [
        {
          type: 'text',
          text: `${approvals.length} request(s)\n${lines.join('\n')}\n\n${JSON.stringify(structured, null, 2)}`,
        },
      ],
      structuredContent: structured,
    };
  });
}
