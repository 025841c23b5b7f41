import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import type { Config } from '../config.js';
import { routeConsoleToStderr, type Logger } from '../log.js';
import type { PipelineHandle } from './handle.js';
import { createServer, SERVER_NAME } from './index.js';

/**
 * Serves MCP on stdin/stdout until the client closes the stream or a signal arrives. `initialize` is
 * answered while the pipeline opens (it loads the store, the gate and what they need, and resumes
 * pending requests): clients give a server seconds to start, and tool calls wait for the pipeline.
 * A pipeline that cannot open (a trust anchor the agent could edit, say) ends the server with its error.
 */
export async function serveStdio(config: Config, log: Logger): Promise<void> {
  // Before anything can print: only the MCP transport may write to stdout, the protocol channel.
  // Our own logs use pino on stderr; this catches libraries that print with console.log.
  routeConsoleToStderr();
  const opening = import('../pipeline.js').then(({ Pipeline }) =>
    Pipeline.open(config, { log, serverName: SERVER_NAME, transport: 'stdio' }),
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
    // A pipeline that failed to open ends the process through serveStdio's own rejection.
    const pipeline = await opening.catch(() => null);
    if (pipeline === null) return;
    log.info({ why }, 'shutting down');
    await server.close().catch(() => undefined);
    await pipeline.close();
    process.exit(0);
  };
  transport.onclose = () => void shutdown('client closed the connection');
  process.stdin.on('end', () => void shutdown('stdin ended'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  await server.connect(transport);
  try {
    await opening;
  } catch (error) {
    await server.close().catch(() => undefined);
    throw error;
  }
  log.info({ approvals_dir: config.approvalsDir }, 'approval gate listening on stdio');
}
