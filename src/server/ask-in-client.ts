import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { RequestOptions } from '@modelcontextprotocol/sdk/shared/protocol.js';
import type { ElicitRequestFormParams } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import { codeBlock } from '../approvals/markdown.js';
import { describeError } from '../errors.js';
import type { RiskFinding } from '../migration/risk-codes.js';
import type { ApprovalStatus, Pipeline } from '../pipeline.js';
import { clientAnswerBar, localUser, type ClientAnswer } from '../service/client-answer.js';
import { sendProgress, type ToolExtra } from './wait.js';

/**
 * In-client approval (approve_in_client): `execute_migration` asks the person at the MCP client with
 * a form (elicitation) instead of sending them to a file. The answer is written into the approval
 * file as the edit they would have made and judged there by the gate; declining, cancelling or
 * choosing "Decide in the file" leaves the request PENDING. The question is withdrawn as soon as the
 * request is decided another way (in the file, by expiry, by cancel_approval).
 */

/** Longer than this, the form would hide most of the SQL from view: the file is the place to read it. */
export const MAX_QUESTION_CHARS = 20_000;

/**
 * How many times one call asks: a rejection without a reason is asked again, but a client that keeps
 * sending one (a script, not a person) is not asked for ever; the file decides then.
 */
export const MAX_ASKS = 3;

/** setTimeout's limit (about 24.8 days); no request waits that long, but a timer must not overflow. */
const MAX_TIMER_MS = 2 ** 31 - 1;

const DECISIONS = {
  approve: 'Approve: run it',
  reject: 'Reject (give a reason)',
  decide_in_file: 'Decide in the approval file instead',
} as const;

const REQUESTED_SCHEMA: ElicitRequestFormParams['requestedSchema'] = {
  type: 'object',
  properties: {
    decision: {
      type: 'string',
      title: 'Decision',
      oneOf: Object.entries(DECISIONS).map(([value, title]) => ({ const: value, title })),
    },
    reason: {
      type: 'string',
      title: 'Reason',
      description: 'Required to reject; an optional comment when approving.',
      maxLength: 2000,
    },
  },
  required: ['decision'],
};

const Answer = z.object({
  decision: z.enum(Object.keys(DECISIONS) as [keyof typeof DECISIONS, ...(keyof typeof DECISIONS)[]]),
  reason: z.string().optional(),
});

/** True when the connected client said it can show a form (`elicitation: {}` means form too). */
export function clientCanShowForms(server: McpServer): boolean {
  return server.server.getClientCapabilities()?.elicitation?.form !== undefined;
}

function findingLines(findings: readonly RiskFinding[]): string {
  if (findings.length === 0) return 'No risk findings.';
  return findings
    .map((f) =>
      [
        `${f.severity.toUpperCase()} ${f.code}${f.statement === null ? '' : ` (statement ${f.statement})`}: ${f.message}`,
        ...(f.lock ? [`  lock: ${f.lock}`] : []),
        ...(f.safer ? [`  safer: ${f.safer}`] : []),
      ].join('\n'),
    )
    .join('\n');
}

function severityCount(findings: readonly RiskFinding[]): string {
  const count = (severity: RiskFinding['severity']) => findings.filter((f) => f.severity === severity).length;
  const parts = [
    [count('danger'), 'danger'],
    [count('warning'), 'warning'],
    [count('info'), 'info'],
  ] as const;
  const named = parts.filter(([n]) => n > 0).map(([n, name]) => `${n} ${name}`);
  return named.length === 0 ? 'no risk findings' : named.join(', ');
}

/** Every line of a quoted block starts with this, so no quoted line can pass for the server's own. */
export const GUTTER = '│ ';

/**
 * A block of text the agent wrote or the SQL names, for a reader of Markdown and of plain text alike:
 * a fence no line of the text can close (Markdown), and a gutter before every line (plain text, where
 * a fence is just characters and a quoted "```" line would seem to end the block).
 */
function quoted(language: string, text: string): string {
  return codeBlock(
    language,
    text
      .split(/\r\n|\r|\n/)
      .map((line) => `${GUTTER}${line}`)
      .join('\n'),
  );
}

/**
 * The question: the server's own facts (ids, the configured names, counts) in plain lines, and
 * everything the agent wrote or the SQL names (title, reason, SQL, identifiers quoted in findings) in
 * quoted blocks, so no agent text can pose as the server's words in either view.
 */
export function questionText(status: ApprovalStatus, decidedBy: string): string {
  const { request, findings } = status;
  const { command } = request;
  const mode = command.dry_run ? 'a DRY RUN (executed, then rolled back)' : 'a real run: it commits';
  const second =
    request.approvals_required === 2
      ? [
          'This request needs two approvers: approving here is the first approval; a second person approves in the file.',
        ]
      : [];
  return [
    `Approve ${request.id}? Requested by ${request.requested_by}; a human decides before anything runs.`,
    `Target: environment ${command.environment}, database ${command.database}, ${mode}. Expires ${request.expires_at}.`,
    `Risk analysis by the server: ${severityCount(findings)}.`,
    ...second,
    '',
    'Title and reason, as the agent wrote them:',
    quoted('text', `${request.title}\n\n${request.reason}`),
    '',
    'Findings:',
    quoted('text', findingLines(findings)),
    '',
    `SQL that runs, exactly (each line after the ${GUTTER.trim()}):`,
    quoted('sql', command.sql),
    '',
    command.rollback_sql === null ? 'Rollback SQL: none given.' : 'Rollback SQL:',
    ...(command.rollback_sql === null ? [] : [quoted('sql', command.rollback_sql)]),
    '',
    `Your answer is recorded as decided by ${decidedBy}, in the approval file ${status.file} and the audit ` +
      'trail, and judged by the same rules as an edit of that file. A rejection needs a reason.',
  ].join('\n');
}

/** How a question travels and when it ends, besides a decision made elsewhere. */
export interface QuestionChannel {
  /** Ends the question (the tool call was cancelled, the session closed). */
  readonly signal: AbortSignal;
  /** With the tool call (relatedRequestId) or, for a task, queued for tasks/result (relatedTask). */
  readonly sendOptions: Pick<RequestOptions, 'relatedRequestId' | 'relatedTask'>;
  /** Called every progress interval while the question is open, with the seconds it has been. */
  readonly onTick?: (seconds: number) => void;
  /** Called once the question is over (answered, declined or withdrawn). */
  readonly onEnd?: () => void;
}

/** The channel of a question asked during a tools/call: progress goes to the call. */
export function toolCallChannel(extra: ToolExtra, id: string): QuestionChannel {
  return {
    signal: extra.signal,
    sendOptions: { relatedRequestId: extra.requestId },
    onTick: (seconds) =>
      void sendProgress(extra, seconds, null, `Waiting for the answer in the client to ${id}.`),
  };
}

/**
 * Asks the person at the client for the decision on a pending request and writes their answer into
 * the file; returns once they have answered, declined, or the question was withdrawn. Never throws:
 * anything that goes wrong leaves the request PENDING, to be decided in the file as always.
 */
export async function askInClient(
  server: McpServer,
  pipeline: Pipeline,
  id: string,
  environment: string,
  channel: QuestionChannel,
): Promise<void> {
  const { log, config } = pipeline;
  // Nothing is read for a request no one will be asked about.
  if (!config.environments[environment]?.approve_in_client || !clientCanShowForms(server)) return;
  // Watching before the status is read: a decision in between withdraws the question too.
  const withdraw = new AbortController();
  const stopWatching = pipeline.onChange((changed, change) => {
    if (changed === id && change.kind === 'decided') withdraw.abort(new Error(`${id} was decided`));
  });
  const stopOnCancel = () => withdraw.abort(channel.signal.reason);
  channel.signal.addEventListener('abort', stopOnCancel, { once: true });
  let ticks: NodeJS.Timeout | undefined;
  try {
    const status = await pipeline.status(id);
    const { request } = status;
    // Decided between the submit and now (policy, a fast editor): nothing to ask.
    if (status.decision || channel.signal.aborted) return;
    const bar = clientAnswerBar(config, request);
    if (bar !== null) {
      log.warn({ approval_id: id }, `not asking in the MCP client: ${bar}`);
      return;
    }
    const decidedBy = localUser(config);
    const question = questionText(status, decidedBy);
    if (question.length > MAX_QUESTION_CHARS) {
      log.info(
        { approval_id: id, chars: question.length },
        'not asking in the MCP client: too long to read there',
      );
      return;
    }
    const started = Date.now();
    // Each tick: the channel's progress, and a look at the status in case a change went unheard.
    ticks = setInterval(() => {
      channel.onTick?.((Date.now() - started) / 1000);
      void pipeline.status(id).then(
        (now) => {
          if (now.decision) withdraw.abort(new Error(`${id} was decided`));
        },
        () => undefined,
      );
    }, config.wait.progress_interval_seconds * 1000);
    const client = server.server.getClientVersion();
    const clientName = client ? `${client.name} ${client.version}` : 'unnamed client';
    let note = '';
    for (let asked = 0; asked < MAX_ASKS; asked += 1) {
      const remainingMs = Math.min(Date.parse(request.expires_at) - Date.now(), MAX_TIMER_MS);
      if (remainingMs <= 0 || withdraw.signal.aborted) return;
      const result = await server.server.elicitInput(
        { mode: 'form', message: `${note}${question}`, requestedSchema: REQUESTED_SCHEMA },
        { ...channel.sendOptions, signal: withdraw.signal, timeout: remainingMs },
      );
      if (result.action !== 'accept') {
        log.info(
          { approval_id: id, action: result.action },
          'the MCP client did not answer; the request stays pending',
        );
        return;
      }
      const answer = Answer.safeParse(result.content ?? {});
      if (!answer.success || answer.data.decision === 'decide_in_file') return;
      const reason = answer.data.reason?.trim() || undefined;
      if (answer.data.decision === 'reject' && reason === undefined) {
        note = 'A rejection needs a reason: nothing was recorded. Choose again.\n\n';
        continue;
      }
      const decision: ClientAnswer = {
        status: answer.data.decision === 'approve' ? 'APPROVED' : 'REJECTED',
        ...(reason !== undefined ? { reason } : {}),
      };
      await pipeline.answerInClient(id, decision, clientName);
      return;
    }
    log.info(
      { approval_id: id, asked: MAX_ASKS },
      'no usable answer in the MCP client; the request stays pending',
    );
  } catch (error) {
    if (!withdraw.signal.aborted)
      log.warn(
        { approval_id: id, err: describeError(error) },
        'asking in the MCP client failed; the request stays pending',
      );
  } finally {
    clearInterval(ticks);
    stopWatching();
    channel.signal.removeEventListener('abort', stopOnCancel);
    channel.onEnd?.();
  }
}
