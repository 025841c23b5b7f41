import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { PipelineHandle } from '../handle.js';
import type { ApprovalTasks } from '../tasks.js';
import { registerAwaitApprovalTool } from './await-approval.js';
import { registerCancelApprovalTool } from './cancel-approval.js';
import { registerListApprovalsTool } from './list-approvals.js';
import { registerExecuteMigrationTool } from './execute-migration.js';
import { registerGetApprovalStatusTool } from './get-approval-status.js';
import { registerRequestRollbackTool } from './request-rollback.js';

export function registerTools(server: McpServer, gate: PipelineHandle, tasks: ApprovalTasks): void {
  registerExecuteMigrationTool(server, gate, tasks);
  registerAwaitApprovalTool(server, gate, tasks);
  registerGetApprovalStatusTool(server, gate);
  registerRequestRollbackTool(server, gate);
  registerListApprovalsTool(server, gate);
  registerCancelApprovalTool(server, gate);
}
