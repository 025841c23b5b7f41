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
  .description('Serve MCP over stdio (for Claude Desktop and other local clients).')
  .option('-c, --config <path>', 'config file (YAML or JSON)', DEFAULT_CONFIG)
  .action(async (options: { config: string }) => {
    const { serveStdio } = await import('./server/stdio.js');
    await serveStdio(loadConfig(options.config), createLogger());
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
