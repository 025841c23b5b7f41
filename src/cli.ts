#!/usr/bin/env node
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import type { SaveStyle } from './approvals/human-edit.js';
import type { Output } from './commands.js';
import type { Pipeline } from './pipeline.js';
import { loadConfig } from './config.js';
import { isGateError } from './errors.js';
import { createLogger } from './log.js';
import { PROJECT_ROOT } from './server/launch.js';

/**
 * The config: --config, else $APPROVAL_GATE_CONFIG, else ./approval-gate.yaml if it exists, else the
 * per-user file (MCP clients such as Claude Desktop start servers in an unpredictable directory).
 */
const DEFAULT_CONFIG =
  process.env.APPROVAL_GATE_CONFIG ??
  (existsSync('approval-gate.yaml')
    ? 'approval-gate.yaml'
    : path.join(homedir(), '.config', 'approval-gate', 'approval-gate.yaml'));

/** The version in package.json at the project root (from src/ through tsx, or from dist/src/ when built). */
function packageVersion(): string {
  const manifest: unknown = JSON.parse(readFileSync(path.join(PROJECT_ROOT, 'package.json'), 'utf8'));
  return typeof manifest === 'object' && manifest !== null && 'version' in manifest
    ? String(manifest.version)
    : 'unknown';
}

/** Approval ids are upper case on disk; people type them as they like. */
const approvalId = (value: string): string => value.toUpperCase();

const program = new Command()
  .name('approval-gate')
  .description(
    'An MCP server whose execute_migration tool runs SQL only after a human approves it in a Markdown file.',
  )
  .version(packageVersion())
  .showHelpAfterError()
  // Usage errors throw instead of exiting 1, so they exit 2 (invalid input); set before the
  // subcommands are added, which inherit it.
  .exitOverride();

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
    if (!options.http) {
      const { serveStdio } = await import('./server/stdio.js');
      await serveStdio(config, () => createLogger());
      return;
    }
    const log = createLogger();
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

interface ClientOptions {
  config: string;
  json?: boolean;
}

/** The approvers' commands, loaded only when one runs: `serve` never needs them. */
type Commands = typeof import('./commands.js');

/** Runs an approvers' command on a client pipeline (never decides or executes) and sets the exit code. */
async function withClient(
  options: ClientOptions,
  run: (commands: Commands, pipeline: Pipeline, output: Output) => Promise<number>,
): Promise<void> {
  const config = loadConfig(options.config);
  const commands = await import('./commands.js');
  const pipeline = await commands.openClientPipeline(
    config,
    createLogger(process.env.APPROVAL_GATE_LOG_LEVEL ?? 'warn'),
  );
  const output: Output = {
    json: options.json === true,
    color: process.stdout.isTTY === true && options.json !== true && !process.env.NO_COLOR,
    write: (text) => process.stdout.write(`${text}\n`),
  };
  try {
    process.exitCode = await run(commands, pipeline, output);
  } finally {
    await pipeline.close();
  }
}

const STATUSES = ['PENDING', 'APPROVED', 'REJECTED', 'EXPIRED', 'VOID', 'CANCELLED'] as const;

const approvals = program
  .command('approvals')
  .description(
    'For approvers: list, show, approve, reject and watch requests. Exit codes: 0 ok, 1 error, 2 invalid input, ' +
      '3 the gate refused the decision, 4 no running server acted on it.',
  );

function clientCommand(name: string, description: string): Command {
  return approvals
    .command(name)
    .description(description)
    .option('-c, --config <path>', 'config file (YAML or JSON)', DEFAULT_CONFIG)
    .option('--json', 'machine-readable output');
}

clientCommand('list', 'List requests: id, status, priority, target, age, time left.')
  .addOption(new Option('--status <status>', 'only this status').choices([...STATUSES]))
  .action((options: ClientOptions & { status?: (typeof STATUSES)[number] }) =>
    withClient(options, ({ listCommand }, pipeline, output) => listCommand(pipeline, options.status, output)),
  );

clientCommand(
  'show',
  'Show a request: the SQL that runs, the computed findings, the result, and a diff if the file was tampered with.',
)
  .argument('<id>', 'approval id, e.g. APR-20260213-003 (any case)', approvalId)
  .action((id: string, options: ClientOptions) =>
    withClient(options, ({ showCommand }, pipeline, output) => showCommand(pipeline, id, output)),
  );

const decideOptions = (command: Command) =>
  command
    .requiredOption(
      '--as <name>',
      'your name, as decided_by; an empty name is refused before any edit (in a signed environment: your principal in allowed_signers)',
    )
    .option(
      '--key <file>',
      'signed environments: your SSH private key (or its .pub when ssh-agent holds it); default: as ssh-keygen, ~/.ssh/id_*',
    )
    .option(
      '--wait <seconds>',
      'wait this long in all for the running server: for its answer to this edit (the decision recorded, ' +
        'or why it was refused) and, with --wait-result, for the result too (0: do not wait)',
      (v) => Number(v),
      10,
    )
    .addOption(
      new Option('--save-style <style>', 'how to save the file')
        .choices(['rename', 'in-place'])
        .default('rename'),
    );

decideOptions(
  clientCommand(
    'approve',
    'Approve a request: makes exactly the file edit a human would make. Returns once the server has ' +
      'recorded the decision (the migration then runs; follow it with `approvals show`), or with ' +
      '--wait-result once it has finished.',
  ),
)
  .argument('<id>', 'approval id (any case)', approvalId)
  .option('--comment <text>', 'a comment for the record')
  .option('--second <name>', 'second approver, when the policy requires two')
  .option(
    '--wait-result',
    'also wait (within --wait) for the execution to finish and print its result: succeeded, failed, ' +
      'rolled_back (a dry run) or unknown; exit 1 unless it succeeded or rolled back',
  )
  .action(
    (
      id: string,
      options: ClientOptions & {
        as: string;
        comment?: string;
        second?: string;
        key?: string;
        wait: number;
        waitResult?: boolean;
        saveStyle: SaveStyle;
      },
    ) =>
      withClient(options, ({ decideCommand }, pipeline, output) =>
        decideCommand(
          pipeline,
          id,
          {
            status: 'APPROVED',
            as: options.as,
            ...(options.comment !== undefined ? { comment: options.comment } : {}),
            ...(options.second !== undefined ? { second: options.second } : {}),
            ...(options.key !== undefined ? { key: options.key } : {}),
          },
          { waitSeconds: options.wait, waitResult: options.waitResult === true, style: options.saveStyle },
          output,
        ),
      ),
  );

decideOptions(clientCommand('reject', 'Reject a request, with the reason the agent will be told.'))
  .argument('<id>', 'approval id (any case)', approvalId)
  .requiredOption('--reason <text>', 'why (required)')
  .action(
    (
      id: string,
      options: ClientOptions & {
        as: string;
        reason: string;
        key?: string;
        wait: number;
        saveStyle: SaveStyle;
      },
    ) =>
      withClient(options, ({ decideCommand }, pipeline, output) =>
        decideCommand(
          pipeline,
          id,
          {
            status: 'REJECTED',
            as: options.as,
            reason: options.reason,
            ...(options.key !== undefined ? { key: options.key } : {}),
          },
          { waitSeconds: options.wait, style: options.saveStyle },
          output,
        ),
      ),
  );

clientCommand(
  'rollback',
  'Request the rollback of an executed request (a new request; someone else approves it).',
)
  .argument('<id>', 'the executed approval id (any case)', approvalId)
  .requiredOption('--as <name>', 'your name, as requested_by')
  .requiredOption('--reason <text>', 'why it must be undone')
  .action((id: string, options: ClientOptions & { as: string; reason: string }) =>
    withClient(options, ({ rollbackCommand }, pipeline, output) =>
      rollbackCommand(pipeline, id, { as: options.as, reason: options.reason }, output),
    ),
  );

clientCommand('watch', 'Live view of requests and their countdowns (Ctrl-C to stop).').action(
  (options: ClientOptions) =>
    withClient(options, ({ watchCommand }, pipeline, output) => {
      const stop = new AbortController();
      process.once('SIGINT', () => stop.abort());
      return watchCommand(pipeline, output, stop.signal);
    }),
);

program.parseAsync().catch((error: unknown) => {
  // One place prints errors, once, to stderr; stdout may be the MCP channel.
  if (error instanceof CommanderError) {
    // Commander has already printed its message (or the help or version it was asked for).
    process.exitCode = error.exitCode === 0 ? 0 : 2;
  } else if (isGateError(error)) {
    process.stderr.write(`approval-gate: ${error.message} [${error.code}]\n`);
    process.exitCode = 2;
  } else {
    process.stderr.write(
      `approval-gate: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    process.exitCode = 1;
  }
});
