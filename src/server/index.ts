import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { PipelineHandle } from './handle.js';
import { registerClientLog } from './client-log.js';
import { registerApprovalResources } from './resources.js';
import { registerTools } from './tools/index.js';
import { ApprovalTasks } from './tasks.js';

export const SERVER_NAME = 'approval-gate';
export const SERVER_VERSION = '0.1.0';

/** An MCP server over a pipeline (open, or opening). Transports are separate, thin entries. */
export function createServer(gate: PipelineHandle): McpServer {
  // Tasks are views of approval requests on disk (tasks.ts); questions asked within a task wait in
  // the queue until the client fetches them with tasks/result.
  const tasks = new ApprovalTasks(gate);
  const server = new McpServer(
    { name: SERVER_NAME, version: SERVER_VERSION },
    {
      // MCP logging: the gate's events as notifications/message, for clients that ask (client-log.ts).
      capabilities: {
        logging: {},
        tasks: { list: {}, cancel: {}, requests: { tools: { call: {} } } },
      },
      taskStore: tasks,
      taskMessageQueue: tasks.messageQueue,
      instructions:
        'Database changes go through execute_migration, which asks a human first unless the environment is ' +
        'configured otherwise. While a result is not final (PENDING, or APPROVED while running), call ' +
        'await_approval with the approval_id until it is.',
    },
  );
  registerTools(server, gate, tasks);
  const stopResources = registerApprovalResources(server, gate);
  const stopLog = registerClientLog(server, gate);
  // Whichever side closes the session, stop announcing changes to it.
  server.server.onclose = () => {
    stopResources();
    stopLog();
    tasks.close();
  };
  return server;
}
