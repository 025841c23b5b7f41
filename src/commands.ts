import { styleText } from 'node:util';
import { diffLines } from 'diff';
import { decideInFile, secondApprovalInFile, type SaveStyle } from './approvals/human-edit.js';
import { canonicalMessage, signMessage } from './approvals/signature.js';
import { fencedBlockUnder, findTampering } from './approvals/tamper.js';
import { renderExecutionCommand } from './approvals/render.js';
import type { Config } from './config.js';
import { GateError } from './errors.js';
import type { Logger } from './log.js';
import { Pipeline, type ApprovalStatus, type ApprovalSummary } from './pipeline.js';
import { signersOf } from './service/startup.js';
import { SERVER_NAME } from './server/index.js';
import { parseApprovalText } from './approvals/frontmatter.js';

/**
 * The approvers' commands. Each is a thin shell over the pipeline (in 'client' role: it never decides
 * or executes) or over the exact file edit a human makes, so the CLI and a hand edit go through one
 * gate. Results are written to stdout (this is not the MCP process); --json gives scripts the data.
 */

/** Exit codes, stable for scripts. */
export const EXIT = { ok: 0, failed: 1, invalid: 2, refusedByGate: 3, noServer: 4 } as const;

export interface Output {
  readonly json: boolean;
  readonly write: (text: string) => void;
  readonly color: boolean;
}

function paint(output: Output, style: Parameters<typeof styleText>[0], text: string): string {
  return output.color ? styleText(style, text) : text;
}

function duration(ms: number): string {
  const abs = Math.abs(ms);
  const minutes = Math.floor(abs / 60_000);
  if (minutes < 60) return `${minutes}m${String(Math.floor((abs % 60_000) / 1000)).padStart(2, '0')}s`;
  const hours = Math.floor(minutes / 60);
  return hours < 48 ? `${hours}h${String(minutes % 60).padStart(2, '0')}m` : `${Math.floor(hours / 24)}d`;
}

const STATUS_STYLE = {
  PENDING: 'yellow',
  APPROVED: 'green',
  REJECTED: 'red',
  EXPIRED: 'gray',
  VOID: 'magenta',
  CANCELLED: 'gray',
} as const;

export function formatList(approvals: readonly ApprovalSummary[], output: Output, now = Date.now()): string {
  if (approvals.length === 0) return 'No approval requests.';
  const rows = approvals.map((a) => [
    a.approval_id,
    a.status,
    a.priority,
    `${a.environment}/${a.database}`,
    duration(now - Date.parse(a.created_at)),
    a.status === 'PENDING' ? duration(Date.parse(a.expires_at) - now) : a.execution,
    a.title + (a.problem ? `  ⚠ ${a.problem.split(':')[0]}` : ''),
  ]);
  const header = ['ID', 'STATUS', 'PRIORITY', 'TARGET', 'AGE', 'LEFT/RESULT', 'TITLE'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[], styled = false) =>
    cells
      .map((cell, i) => {
        const padded = i === cells.length - 1 ? cell : cell.padEnd(widths[i] ?? 0);
        return styled && i === 1
          ? paint(output, STATUS_STYLE[cell as keyof typeof STATUS_STYLE] ?? 'white', padded)
          : padded;
      })
      .join('  ');
  return [paint(output, 'bold', line(header)), ...rows.map((r) => line(r, true))].join('\n');
}

export async function listCommand(
  pipeline: Pipeline,
  status: ApprovalSummary['status'] | undefined,
  output: Output,
): Promise<number> {
  const approvals = await pipeline.list(status === undefined ? {} : { status });
  output.write(output.json ? JSON.stringify({ approvals }, null, 2) : formatList(approvals, output));
  return EXIT.ok;
}

/** A line diff (`- ` removed, `+ ` added, `  ` kept), removed lines before added ones, by jsdiff. */
export function lineDiff(before: string, after: string): string {
  const out: string[] = [];
  for (const part of diffLines(`${before}\n`, `${after}\n`)) {
    const prefix = part.added ? '+ ' : part.removed ? '- ' : '  ';
    for (const line of part.value.replace(/\n$/, '').split('\n')) out.push(`${prefix}${line}`);
  }
  return out.join('\n');
}

/**
 * The execution state as this terminal knows it. Without the ledger (no database URL here) a finished
 * request must not look "running": say so, and what the approval file (the server's view) says.
 */
export function executionHere(status: ApprovalStatus, fileExecution: unknown): string {
  if (status.ledger !== 'unreachable') return status.execution;
  const shown = typeof fileExecution === 'string' ? `; the approval file says "${fileExecution}"` : '';
  return `unknown here: the ledger is not reachable from this terminal${shown}`;
}

export async function showCommand(pipeline: Pipeline, id: string, output: Output): Promise<number> {
  const status = await pipeline.status(id);
  // The store's safe read: no symlink followed, size-capped, strict UTF-8, as the gate reads it.
  const text = await pipeline.fileText(id).catch(() => null);
  const parsed =
    text === null
      ? null
      : (() => {
          try {
            return parseApprovalText(text);
          } catch {
            return null;
          }
        })();
  const tampering = parsed ? findTampering(parsed.data, parsed.body, status.request) : null;
  const shownBlock = parsed ? fencedBlockUnder(parsed.body, '### Execution Command') : null;
  const recordBlock = renderExecutionCommand(status.request, SERVER_NAME).replace(/\n$/, '');
  const diff = tampering && shownBlock !== null ? lineDiff(recordBlock, shownBlock) : null;
  if (output.json) {
    output.write(JSON.stringify({ ...status, tampering, diff }, null, 2));
    return EXIT.ok;
  }
  const { request, decision } = status;
  const lines = [
    paint(output, 'bold', `${request.id}  ${request.title}`),
    `Status:      ${decision?.status ?? 'PENDING'}${decision?.decided_by ? ` by ${decision.decided_by}` : ''}   execution: ${executionHere(status, parsed?.data.execution)}`,
    `Target:      ${request.command.environment}/${request.command.database}   priority ${request.priority}   requested by ${request.requested_by}`,
    `Created:     ${request.created_at}   expires ${request.expires_at}`,
    `File:        ${status.file}`,
    ...(status.problem
      ? [paint(output, 'yellow', `Not accepted: ${status.problem.code}: ${status.problem.message}`)]
      : []),
    '',
    paint(output, 'bold', "SQL (the server's record; this is what runs):"),
    request.command.sql.replace(/\n$/, ''),
    '',
    paint(output, 'bold', 'Findings:'),
    ...(status.findings.length === 0
      ? ['  none']
      : status.findings.map(
          (f) =>
            `  [${f.severity}] statement ${f.statement ?? '-'}: ${f.message}${f.safer ? `\n      safer: ${f.safer}` : ''}`,
        )),
    ...(status.result
      ? [
          '',
          paint(output, 'bold', 'Result:'),
          `  ${status.result.state} in ${status.result.duration_ms} ms${status.result.error ? `: ${status.result.error.message}` : ''}`,
        ]
      : []),
    ...(tampering
      ? [
          '',
          paint(output, 'red', `TAMPERED: ${tampering.code}: ${tampering.message}`),
          ...(diff ? ['Execution Command, server record (-) vs file (+):', diff] : []),
        ]
      : []),
  ];
  output.write(lines.join('\n'));
  return EXIT.ok;
}

/** What the running server said about the edit the CLI just saved. */
type GateAnswer =
  | { readonly kind: 'recorded'; readonly status: ApprovalStatus }
  | { readonly kind: 'refused'; readonly gateError: string }
  | { readonly kind: 'silent'; readonly file: string };

/** The file's gate_error as the YAML says it (no escapes), or null; a half-saved file has none yet. */
async function gateErrorIn(pipeline: Pipeline, id: string): Promise<string | null> {
  const text = await pipeline.fileText(id).catch(() => null);
  if (text === null) return null;
  try {
    const value = parseApprovalText(text).data.gate_error;
    return typeof value === 'string' && value.trim() !== '' ? value : null;
  } catch {
    return null;
  }
}

/**
 * Waits until `deadline` for a recorded decision or a gate_error. The edit removed any earlier
 * gate_error, so one that is present now is the server's answer to this edit, not to a previous one.
 */
async function gateAnswer(pipeline: Pipeline, id: string, deadline: number): Promise<GateAnswer> {
  for (;;) {
    const status = await pipeline.status(id);
    if (status.decision) return { kind: 'recorded', status };
    const gateError = await gateErrorIn(pipeline, id);
    if (gateError !== null) {
      // The decision may have been recorded between the two reads; a recorded decision is the answer.
      const again = await pipeline.status(id);
      return again.decision ? { kind: 'recorded', status: again } : { kind: 'refused', gateError };
    }
    if (Date.now() >= deadline) return { kind: 'silent', file: status.file };
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const FINISHED_WELL: readonly ApprovalStatus['execution'][] = ['succeeded', 'rolled_back'];

function followWith(id: string): string {
  return `Follow it with \`approval-gate approvals show ${id}\``;
}

/**
 * Where the execution stands: running (`waitedSeconds` when --wait-result ran out first), or how it
 * ended.
 */
function executionSentence(status: ApprovalStatus, waitedSeconds: number | null): string {
  if (!status.final) {
    const unfinished =
      waitedSeconds === null
        ? 'the migration runs now'
        : `the migration had not finished within ${waitedSeconds}s`;
    return `${unfinished} (execution: ${status.execution}). ${followWith(status.request.id)}.`;
  }
  const { result } = status;
  const detail = result
    ? ` in ${result.duration_ms} ms${result.error ? `: ${result.error.message}` : ''}`
    : status.executionError
      ? `: ${status.executionError}`
      : '';
  return `the migration has finished: ${status.execution}${detail}.`;
}

/**
 * approve / reject: the same file edit a human makes, then (optionally) wait for the running
 * server's gate to accept or refuse it. The CLI never decides anything itself, and reports only
 * what the server said about this edit: approve returns once the decision is recorded, or with
 * `waitResult` once the execution has a final result.
 */
export async function decideCommand(
  pipeline: Pipeline,
  id: string,
  decision: {
    status: 'APPROVED' | 'REJECTED';
    as: string;
    reason?: string;
    comment?: string;
    second?: string;
    /** Signed environments: the private key (or a .pub whose key the ssh-agent holds); default as ssh-keygen. */
    key?: string;
  },
  options: { waitSeconds: number; waitResult?: boolean; style: SaveStyle },
  output: Output,
): Promise<number> {
  if (decision.as.trim() === '') {
    throw new GateError(
      'DECIDED_BY_MISSING',
      `--as needs your name (it becomes decided_by); an empty name decides nothing. ${id} was not changed.`,
    );
  }
  const before = await pipeline.status(id);
  if (before.decision) {
    throw new GateError('ALREADY_DECIDED', `${id} was already decided: ${before.decision.status}.`);
  }
  const { request } = before;
  const signed = signersOf(pipeline.config, request.command.environment) !== null;
  const shown = parseApprovalText(await pipeline.fileText(id)).data;
  // Two approvers: whoever approves after another person's approval is the second one.
  const asSecond =
    decision.status === 'APPROVED' &&
    request.approvals_required === 2 &&
    shown.status === 'APPROVED' &&
    typeof shown.decided_by === 'string' &&
    shown.decided_by.trim() !== '' &&
    shown.decided_by !== decision.as;
  const signature = signed
    ? await signMessage(
        canonicalMessage({
          id,
          requestHash: request.request_hash,
          installation: pipeline.installation,
          status: decision.status,
          role: asSecond ? 'second_approver' : 'decided_by',
          principal: decision.as,
        }),
        decision.key !== undefined ? { keyFile: decision.key } : {},
      )
    : undefined;
  if (asSecond) {
    await secondApprovalInFile(
      before.file,
      { name: decision.as, ...(signature !== undefined ? { signature } : {}) },
      options.style,
    );
  } else {
    await decideInFile(
      before.file,
      {
        status: decision.status,
        decidedBy: decision.as,
        ...(decision.reason !== undefined ? { reason: decision.reason } : {}),
        ...(decision.comment !== undefined ? { comments: decision.comment } : {}),
        ...(decision.second !== undefined ? { secondApprover: decision.second } : {}),
        ...(signature !== undefined ? { signature } : {}),
      },
      options.style,
    );
  }
  const deadline = Date.now() + options.waitSeconds * 1000;
  const answer = await gateAnswer(pipeline, id, deadline);
  if (answer.kind === 'refused') {
    output.write(
      output.json
        ? JSON.stringify({ id, refused: answer.gateError }, null, 2)
        : `${id}: the gate did not accept the edit: ${answer.gateError}`,
    );
    return EXIT.refusedByGate;
  }
  if (answer.kind === 'silent') {
    output.write(
      output.json
        ? JSON.stringify({ id, written: answer.file, answered: false }, null, 2)
        : options.waitSeconds === 0
          ? `${id}: decision written to ${answer.file}.`
          : `${id}: decision written to ${answer.file}, but no running server has acted on it yet (is approval-gate serve running?).`,
    );
    return options.waitSeconds === 0 ? EXIT.ok : EXIT.noServer;
  }
  let status = answer.status;
  const recorded = status.decision?.status ?? 'PENDING';
  const waitsForResult = options.waitResult === true && recorded === 'APPROVED';
  if (waitsForResult && !status.final) {
    status = await pipeline.waitForFinal(id, { timeoutMs: Math.max(0, deadline - Date.now()), tickMs: 100 });
  }
  const report = {
    id,
    decision: recorded,
    execution: status.execution,
    final: status.final,
    result: status.result,
    execution_error: status.executionError,
  };
  const sentence =
    recorded !== decision.status
      ? `${id}: the server recorded ${recorded}, not ${decision.status}${status.decision?.reason ? `: ${status.decision.reason}` : '.'}`
      : recorded === 'APPROVED'
        ? `${id}: APPROVED recorded; ${executionSentence(status, waitsForResult ? options.waitSeconds : null)}`
        : `${id}: ${recorded} recorded; nothing runs.`;
  output.write(output.json ? JSON.stringify(report, null, 2) : sentence);
  if (recorded !== decision.status) return EXIT.refusedByGate;
  if (!waitsForResult) return EXIT.ok;
  return status.final && FINISHED_WELL.includes(status.execution) ? EXIT.ok : EXIT.failed;
}

export async function rollbackCommand(
  pipeline: Pipeline,
  id: string,
  who: { as: string; reason: string },
  output: Output,
): Promise<number> {
  const { request } = await pipeline.requestRollback(id, { requestedBy: who.as, reason: who.reason });
  const file = pipeline.filePath(request.id);
  output.write(
    output.json
      ? JSON.stringify({ id: request.id, rollback_of: id, file }, null, 2)
      : `${request.id} requests the rollback of ${id}; another person must approve it in ${file}.`,
  );
  return EXIT.ok;
}

/** A live view of the requests with countdowns, redrawn every second until interrupted. */
export async function watchCommand(pipeline: Pipeline, output: Output, signal: AbortSignal): Promise<number> {
  let previous = '';
  while (!signal.aborted) {
    const approvals = await pipeline.list();
    const view = formatList(approvals, output);
    if (output.color) {
      output.write(
        `\u001b[2J\u001b[H${paint(output, 'bold', `approval-gate watch — ${new Date().toLocaleTimeString()}`)}\n${view}`,
      );
    } else if (view !== previous) {
      output.write(view);
    }
    previous = view;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  return EXIT.ok;
}

export async function openClientPipeline(config: Config, log: Logger): Promise<Pipeline> {
  return Pipeline.open(config, { log, role: 'client', serverName: SERVER_NAME });
}
