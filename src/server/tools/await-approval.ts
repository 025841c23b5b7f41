import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { z } from 'zod';
import { ApprovalId } from '../../approvals/request.js';
import type { PipelineHandle } from '../handle.js';
import { outcomeOfStatus, toToolResult, ToolOutcome } from '../outcome.js';
import { approvalTaskHandler, type ApprovalTasks } from '../tasks.js';
import { waitBounded } from '../wait.js';

/** The wait bound is the server's configured one, so the descriptions state it rather than a default. */
function toolConfig(boundSeconds: number) {
  const AwaitApprovalInput = z.object({
    id: ApprovalId.describe(
      'The approval_id returned by execute_migration or request_rollback, e.g. APR-20260213-003.',
    ),
    max_wait_seconds: z
      .number()
      .positive()
      .optional()
      .describe(
        `Wait at most this long (capped by the server's bound, ${boundSeconds} s). Omit to use the bound.`,
      ),
  });
  return {
    title: 'Wait for an approval decision and its execution',
    description:
      `Waits (up to ${boundSeconds} s) for the human decision on a request made with execute_migration or ` +
      'request_rollback, and for its execution if approved. Returns PENDING again if the human has not decided ' +
      'yet, or APPROVED with execution running: while final is false, call it again. ' +
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
}

/** As execute_migration: the approval's task for clients that ask for one, the bounded wait for others. */
export function registerAwaitApprovalTool(
  server: McpServer,
  gate: PipelineHandle,
  tasks: ApprovalTasks,
): void {
  server.experimental.tasks.registerToolTask(
    'await_approval',
    { ...toolConfig(gate.config.wait.max_wait_seconds), execution: { taskSupport: 'optional' } },
    approvalTaskHandler(gate, tasks, {
      // Unknown ids are refused (APPROVAL_NOT_FOUND) before any task exists.
      start: async ({ id }: { id: string; max_wait_seconds?: number | undefined }, pipeline) =>
        (await pipeline.status(id)).request.id,
      inline: async (id, { max_wait_seconds }, pipeline, extra) =>
        toToolResult(outcomeOfStatus(await waitBounded(pipeline, id, extra, max_wait_seconds))),
      followed: (id) => tasks.follow(id, server),
    }),
  );
}
