import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport, getDefaultEnvironment } from '@modelcontextprotocol/sdk/client/stdio.js';
import type { CallToolResult, ClientCapabilities } from '@modelcontextprotocol/sdk/types.js';
import { stdioServerCommand } from '../../src/server/launch.js';
import type { ToolOutcome } from '../../src/server/outcome.js';

export interface StdioSession {
  readonly client: Client;
  /** Everything the server wrote to stderr (its logs). */
  readonly stderr: () => string;
  call(
    name: string,
    args: Record<string, unknown>,
    timeoutMs?: number,
  ): Promise<{ outcome: ToolOutcome; result: CallToolResult; progress: number }>;
  close(): Promise<void>;
}

export interface StdioOptions {
  /** Run the server as another OS user (through setpriv; the tests run as root in CI), as an MCP client started by that user would. */
  readonly asUser?: { readonly uid: number; readonly gid: number };
  /** What the client declares (elicitation, tasks); none by default, as the plainest client. */
  readonly capabilities?: ClientCapabilities;
}

/** Spawns the real server over stdio and connects the SDK's client to it. */
export async function startStdioServer(
  configPath: string,
  env: Record<string, string> = {},
  { asUser, capabilities }: StdioOptions = {},
): Promise<StdioSession> {
  const server = stdioServerCommand(configPath);
  const { command, args } = asUser
    ? {
        command: 'setpriv',
        args: [
          `--reuid=${asUser.uid}`,
          `--regid=${asUser.gid}`,
          '--clear-groups',
          '--',
          server.command,
          ...server.args,
        ],
      }
    : server;
  const { cwd } = server;
  const transport = new StdioClientTransport({
    command,
    args,
    cwd,
    env: { ...getDefaultEnvironment(), ...env },
    stderr: 'pipe',
  });
  let stderr = '';
  transport.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8');
  });
  const client = new Client(
    { name: 'approval-gate-test', version: '0.0.0' },
    capabilities ? { capabilities } : undefined,
  );
  await client.connect(transport);
  return {
    client,
    stderr: () => stderr,
    async call(name, callArgs, timeoutMs = 60_000) {
      let progress = 0;
      const result = (await client.callTool({ name, arguments: callArgs }, undefined, {
        timeout: timeoutMs,
        resetTimeoutOnProgress: true,
        onprogress: () => {
          progress += 1;
        },
      })) as CallToolResult;
      return { outcome: result.structuredContent as ToolOutcome, result, progress };
    },
    async close() {
      await client.close();
    },
  };
}
