import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import type { Config } from '../config.js';
import { routeConsoleToStderr, type Logger } from '../log.js';
import { Pipeline } from '../pipeline.js';
import { createServer, SERVER_NAME } from './index.js';

/** Serves MCP on stdin/stdout until the client closes the stream or a signal arrives. */
export async function serveStdio(config: Config, log: Logger): Promise<void> {
  // Before anything can print: only the MCP transport may write to stdout, the protocol channel.
  // Our own logs use pino on stderr; this catches libraries that print with console.log.
  routeConsoleToStderr();
  const pipeline = await Pipeline.open(config, { log, serverName: SERVER_NAME, transport: 'stdio' });
  const server = createServer(pipeline);
  const transport = new StdioServerTransport();
  let closing = false;
  const shutdown = async (why: string) => {
    if (closing) return;
    closing = true;
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
  log.info({ approvals_dir: config.approvalsDir }, 'approval gate listening on stdio');
}
