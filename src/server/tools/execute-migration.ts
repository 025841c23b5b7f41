import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { Config } from '../../config.js';
import type { PipelineHandle } from '../handle.js';
import { MigrationRequestInput } from '../../service/request-input.js';
import { outcomeOfStatus, toToolResult, ToolOutcome } from '../outcome.js';
import { approvalTaskHandler, type ApprovalTasks } from '../tasks.js';
import { waitBounded } from '../wait.js';
import { askInClient, toolCallChannel } from '../ask-in-client.js';

/**
 * The request shape with `environment` and `database` offered as the configured names, so an agent
 * picks instead of guessing. The names are an `enum` in the JSON Schema only: the string is still
 * accepted, so a client that ignores the schema gets the pipeline's own refusal (ENVIRONMENT_UNKNOWN,
 * DATABASE_NOT_ALLOWED) naming the allowed values, not a bare validation error.
 */
export function executeMigrationInput(config: Config) {
  const { environment, database } = MigrationRequestInput.shape;
  const targets = Object.entries(config.environments);
  const pairs = targets.map(([name, settings]) => `${name}: ${settings.databases.join(', ')}`).join('; ');
  const databases = [...new Set(targets.flatMap(([, settings]) => settings.databases))];
  return {
    ...MigrationRequestInput.shape,
    environment: environment.meta({
      enum: targets.map(([name]) => name),
      description: `Target environment as named in the server config. Each with its databases: ${pairs}.`,
    }),
    database: database.meta({
      enum: databases,
      description: `Logical database name, one the environment lists (${pairs}). Never a connection string.`,
    }),
  };
}

/** What the configured environments change about "a human decides first", one sentence each. */
function environmentNotes(config: Config): string[] {
  return Object.entries(config.environments).flatMap(([name, settings]) => [
    ...(settings.require_approval === 'never'
      ? [`In ${name}, requests run without a human decision (require_approval: never).`]
      : settings.require_approval === 'not_for_dry_runs'
        ? [`In ${name}, dry runs run without a human decision (require_approval: not_for_dry_runs).`]
        : []),
    ...(settings.allowed_signers !== undefined
      ? [`In ${name}, only a decision SSH-signed by a key in its allowed_signers counts.`]
      : []),
    ...(settings.approve_in_client
      ? [
          `In ${name}, if your client can show forms (elicitation), the call first asks the user there and ` +
            'waits for that answer (until the request expires), sending progress meanwhile.',
        ]
      : []),
  ]);
}

function toolConfig(config: Config) {
  return {
    title: 'Execute a database migration (after human approval)',
    description: [
      'Requests a migration on a configured database. It does NOT run at once: the server writes an approval ' +
        'file that a human reviews and approves or rejects, unless the environment says otherwise (below). ' +
        `This call waits up to ${config.wait.max_wait_seconds} s for the decision and the execution. If the ` +
        'result is not final yet (PENDING, or APPROVED while running), it returns the approval_id; then call ' +
        'await_approval with that id (repeatedly, as long as final is false). Never resubmit the same ' +
        'migration while one is pending. Statuses: APPROVED (see execution: succeeded, failed, rolled_back ' +
        'for a dry run, unknown), REJECTED (with the reason), EXPIRED, VOID (the file was edited, it never ' +
        'runs), CANCELLED (withdrawn, or its file deleted), REFUSED (nothing was written: the request was ' +
        "invalid, the environment's policy refuses it, or the database could not be reached; see error.code).",
      ...environmentNotes(config),
    ].join(' '),
    inputSchema: executeMigrationInput(config),
    outputSchema: ToolOutcome.shape,
    annotations: {
      title: 'Execute migration (human-approved)',
      readOnlyHint: false,
      destructiveHint: true,
      idempotentHint: false,
      openWorldHint: false,
    },
  };
}

/**
 * Runs as a task for clients that ask for one (the approval's task: see tasks.ts); for others it waits
 * within the bound, as it always has. Either way, where the environment allows it, the person at a
 * client that can show forms is asked for the decision first (ask-in-client.ts).
 */
export function registerExecuteMigrationTool(
  server: McpServer,
  gate: PipelineHandle,
  tasks: ApprovalTasks,
): void {
  server.experimental.tasks.registerToolTask(
    'execute_migration',
    { ...toolConfig(gate.config), execution: { taskSupport: 'optional' } },
    approvalTaskHandler(gate, tasks, {
      start: async (input: MigrationRequestInput, pipeline) => (await pipeline.submit(input)).request.id,
      inline: async (id, input, pipeline, extra) => {
        await askInClient(server, pipeline, id, input.environment, toolCallChannel(extra, id));
        return toToolResult(outcomeOfStatus(await waitBounded(pipeline, id, extra)));
      },
      followed: (id, input, pipeline) => {
        tasks.follow(id, server);
        // The question goes with the task: the client fetches it with tasks/result (input_required).
        void askInClient(server, pipeline, id, input.environment, tasks.questionChannel(id));
      },
    }),
  );
}
