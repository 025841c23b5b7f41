import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import type { Config } from '../config.js';
import { routeConsoleToStderr, type Logger } from '../log.js';
import type { PipelineHandle } from './handle.js';
import { createServer, SERVER_NAME } from './index.js';
import { compactWhenQuiet } from './quiet-compaction.js';

/**
 * Serves MCP on stdin/stdout until the client closes the stream or a signal arrives. `initialize` is
 * answered first; then the logger and the pipeline open (the store, the gate and what they need, and
 * pending requests resumed): tool calls wait for the pipeline. A pipeline that cannot open (a trust
 * anchor the agent could edit, say) ends the server with its error.
 */
export async function serveStdio(config: Config, createLog: () => Logger): Promise<void> {
  // Before anything can print: only the MCP transport may write to stdout, the protocol channel.
  // Our own logs use pino on stderr; this catches libraries that print with console.log.
  routeConsoleToStderr();
  let open: () => void = () => undefined;
  const connected = new Promise<void>((resolve) => (open = resolve));
  let log: Logger | null = null;
  const logger = () => (log ??= createLog());
  const opening = connected
    .then(() => import('../pipeline.js'))
    .then(({ Pipeline }) =>
      Pipeline.open(config, { log: logger(), serverName: SERVER_NAME, transport: 'stdio' }),
    );
  // Handled here so that a failure before serveStdio awaits it is not an unhandled rejection.
  opening.catch(() => undefined);
  const gate: PipelineHandle = { config, pipeline: () => opening };
  const server = createServer(gate);
  const transport = new StdioServerTransport();
  let closing = false;
  const shutdown = async (why: string) => {
    if (closing) return;
    closing = true;
    open();
    // A pipeline that failed to open ends the process through serveStdio's own rejection.
    const pipeline = await opening.catch(() => null);
    if (pipeline === null) return;
    logger().info({ why }, 'shutting down');
    await server.close().catch(() => undefined);
    await pipeline.close();
    process.exit(0);
  };
  transport.onclose = () => void shutdown('client closed the connection');
  process.stdin.on('end', () => void shutdown('stdin ended'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  await server.connect(transport);
  // After the turn in which the client's first request (initialize) is read and answered.
  setImmediate(open);
  const pipeline = await opening.catch(async (error: unknown) => {
    await server.close().catch(() => undefined);
    throw error;
  });
  compactWhenQuiet((listener) => pipeline.onChange(listener));
  logger().info({ approvals_dir: config.approvalsDir }, 'approval gate listening on stdio');
}
