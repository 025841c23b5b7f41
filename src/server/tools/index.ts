import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { Pipeline } from '../../pipeline.js';
import { registerAwaitApprovalTool } from './await-approval.js';
import { registerCancelApprovalTool } from './cancel-approval.js';
import { registerListApprovalsTool } from './list-approvals.js';
import { registerExecuteMigrationTool } from './execute-migration.js';
import { registerGetApprovalStatusTool } from './get-approval-status.js';
import { registerRequestRollbackTool } from './request-rollback.js';

export function registerTools(server: McpServer, pipeline: Pipeline): void {
  registerExecuteMigrationTool(server, pipeline);
  registerAwaitApprovalTool(server, pipeline);
  registerGetApprovalStatusTool(server, pipeline);
  registerRequestRollbackTool(server, pipeline);
  registerListApprovalsTool(server, pipeline);
  registerCancelApprovalTool(server, pipeline);
}
