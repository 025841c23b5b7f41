#!/usr/bin/env node
import { Command, Option } from 'commander';
import { loadConfig } from './config.js';
import { isGateError } from './errors.js';
import { createLogger } from './log.js';

const DEFAULT_CONFIG = process.env.APPROVAL_GATE_CONFIG ?? 'approval-gate.yaml';

const program = new Command()
  .name('approval-gate')
  .description(
    'An MCP server whose execute_migration tool runs SQL only after a human approves it in a Markdown file.',
  )
  .showHelpAfterError();

program
  .command('serve')
  .description(
    'Serve MCP over stdio (Claude Desktop and other local clients), or Streamable HTTP with --http.',
  )
  .option('-c, --config <path>', 'config file (YAML or JSON)', DEFAULT_CONFIG)
  .option(
    '--http',
    'serve Streamable HTTP instead of stdio (bearer token from the env variable http.token_env)',
  )
  .option('--host <host>', 'with --http: interface to bind (default from config: 127.0.0.1)')
  .option('--port <port>', 'with --http: port (default from config: 8808)', (value) =>
    Number.parseInt(value, 10),
  )
  .action(async (options: { config: string; http?: boolean; host?: string; port?: number }) => {
    const config = loadConfig(options.config);
    const log = createLogger();
    if (!options.http) {
      const { serveStdio } = await import('./server/stdio.js');
      await serveStdio(config, log);
      return;
    }
    const { serveHttp } = await import('./server/http.js');
    const handle = await serveHttp(config, log, {
      ...(options.host !== undefined ? { host: options.host } : {}),
      ...(options.port !== undefined ? { port: options.port } : {}),
    });
    process.stderr.write(`approval-gate: MCP over Streamable HTTP at ${handle.url}\n`);
    const stop = () => void handle.close().then(() => process.exit(0));
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });

program
  .command('demo')
  .description('Run the whole flow on an embedded database (PGlite) through a real MCP client.')
  .option(
    '-w, --workspace <dir>',
    'directory for the demo config, approvals and database (reset on each run)',
    'demo-workspace',
  )
  .addOption(
    new Option('--decide <decision>', 'decide automatically instead of waiting for you').choices([
      'approve',
      'reject',
    ]),
  )
  .option('--as <name>', 'reviewer name used with --decide', 'Demo Reviewer')
  .action(async (options: { workspace: string; decide?: 'approve' | 'reject'; as: string }) => {
    const { runDemo } = await import('./demo.js');
    process.exitCode = await runDemo(options);
  });

program.parseAsync().catch((error: unknown) => {
  // One place prints errors, once, to stderr; stdout may be the MCP channel.
  if (isGateError(error)) {
    process.stderr.write(`approval-gate: ${error.message} [${error.code}]\n`);
    process.exitCode = 2;
  } else {
    process.stderr.write(
      `approval-gate: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    process.exitCode = 1;
  }
});
