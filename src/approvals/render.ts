import { Document, Scalar, YAMLMap } from 'yaml';
import { stringifyFrontMatter } from './frontmatter.js';
import { codeBlock, codeText, inlineCode, plainText, replaceInvisible, tableCell } from './markdown.js';
import { relationsOf } from '../migration/analyse.js';
import { formatBytes, type RelationFacts } from '../migration/catalog.js';
import { RISK_TITLES, type RiskFinding } from '../migration/risk-codes.js';
import type { LockSpan } from '../migration/risks.js';
import { COMMAND_FIELDS, type ApprovalRequest, type Decision } from './request.js';
import { canonicalMessage, SIGNATURE_NAMESPACE, type SignedDecision } from './signature.js';

/** What the server computed about the SQL, shown beside the agent's own words. */
export interface StatementSummary {
  readonly kind: string;
  readonly relations: readonly string[];
  readonly transactional: boolean;
}

export interface RenderContext {
  readonly statements: readonly StatementSummary[];
  /** Risk findings computed by the server from the parse tree and the live catalog. */
  readonly findings: readonly RiskFinding[];
  /** The locks the migration holds, per table, across its transaction. */
  readonly locks: readonly LockSpan[];
  /** Facts about each relation from the live catalog, at request time. */
  readonly impact: readonly RelationFacts[];
  readonly lockTimeoutMs: number;
  readonly statementTimeoutMs: number;
  /** Name of this MCP server as written in the Execution Command block. */
  readonly serverName: string;
  /** Set when the environment takes signed decisions only (allowed_signers): this installation's id. */
  readonly signing?: { readonly installation: string } | null;
}

/** Placeholders the file ships with; the gate never takes them for a human's words. */
export const PLACEHOLDERS = {
  decidedBy: '(awaiting human decision)',
  comments: '(add comments here)',
} as const;

export const RESULT_MARKER = '<!-- approval-gate: outcome -->';

/**
 * A block literal shows SQL as it is. YAML escapes C0 controls itself (falling back to a
 * double-quoted string), but not C1 controls, bidirectional overrides or line separators: text
 * holding those stays double-quoted and they are written as `\uXXXX` escapes (see below).
 */
function blockScalar(value: string): Scalar {
  const node = new Scalar(value);
  if (codeText(value) === value) node.type = Scalar.BLOCK_LITERAL;
  return node;
}

const hasInvisible = (value: string | null) => value !== null && codeText(value) !== value;

/** Fields shown as YAML blocks, the way SQL is written. */
const SQL_FIELDS: ReadonlySet<string> = new Set(['sql', 'rollback_sql']);

/**
 * The Execution Command block: the exact parameters the server will run, as YAML. The tamper check
 * compares this block with the canonical record; the Preview sections are display only.
 */
export function renderExecutionCommand(request: ApprovalRequest, serverName: string): string {
  const { command } = request;
  const parameters = new YAMLMap();
  for (const field of COMMAND_FIELDS) {
    const value = command[field];
    // An absent optional field is not shown (the tamper check reads a missing key as null).
    if (value === null) continue;
    parameters.set(field, typeof value === 'string' && SQL_FIELDS.has(field) ? blockScalar(value) : value);
  }
  const document = new Document({ mcp_server: serverName, method: 'execute_migration' });
  (document.contents as YAMLMap).set('parameters', parameters);
  const yaml = document.toString({
    defaultStringType: 'QUOTE_DOUBLE',
    defaultKeyType: 'PLAIN',
    lineWidth: 0,
  });
  const values = COMMAND_FIELDS.map((field) => command[field]).filter(
    (value): value is string => typeof value === 'string',
  );
  if (!values.some(hasInvisible)) return yaml;
  // Every string value is double-quoted here (keys are constants), where `\uXXXX` is a valid escape.
  return replaceInvisible(yaml, (hex) => `\\u${hex}`);
}

function minutesBetween(from: string, to: string): number {
  return Math.round((Date.parse(to) - Date.parse(from)) / 60_000);
}

const SEVERITY_LABEL = { danger: '🔴 DANGER', warning: '🟠 WARNING', info: '🔵 INFO' } as const;

function findingsList(findings: readonly RiskFinding[]): string {
  if (findings.length === 0)
    return '_The server found no lock, rewrite or data-loss risk in these statements._';
  const order = { danger: 0, warning: 1, info: 2 } as const;
  return [...findings]
    .sort((a, b) => order[a.severity] - order[b.severity])
    .map((f, i) =>
      [
        `${i + 1}. **${SEVERITY_LABEL[f.severity]}: ${plainText(RISK_TITLES[f.code])}** (${f.statement === null ? 'whole migration' : `statement ${f.statement}`}${f.lock ? `; lock: ${plainText(f.lock)}` : ''})`,
        `   - ${plainText(f.message)}`,
        ...(f.safer ? [`   - Safer: ${plainText(f.safer)}`] : []),
      ].join('\n'),
    )
    .join('\n');
}

function lockTable(locks: readonly LockSpan[], stepByStep: boolean): string {
  if (locks.length === 0) return '_No table is locked against the application._';
  const statements = (from: number, to: number) =>
    from === to ? `statement ${from}` : `statements ${from}–${to}`;
  const rows = locks.map(
    (lock) =>
      `| ${tableCell(lock.relation)} | ${plainText(lock.mode)} | ${plainText(statements(lock.from, lock.to))} | ${plainText(lock.blocks)} | ${lock.longDuring.length > 0 ? plainText(lock.longDuring.join(', ')) : '—'} |`,
  );
  return [
    stepByStep
      ? '**Locks, by table** (each statement commits on its own and releases its locks):'
      : '**Locks, by table** (one transaction: every lock is held until it commits, through the statements after the one that took it):',
    '',
    '| Table | Strongest lock | Held during | Blocks for the application | Long work meanwhile (statements) |',
    '|---|---|---|---|---|',
    ...rows,
  ].join('\n');
}

function impactTable(impact: readonly RelationFacts[]): string {
  if (impact.length === 0) return '_The statements name no table._';
  const rows = impact.map((f) =>
    f.exists
      ? `| ${tableCell(f.name)} | ${plainText(f.kind ?? 'yes')} | ${f.estimated_rows === null ? 'unknown (never analysed)' : `~${plainText(f.estimated_rows.toLocaleString('en-US'))}`} | ${f.total_bytes === null ? '—' : plainText(formatBytes(f.total_bytes))} | ${f.indexes === null ? '—' : plainText(String(f.indexes))} |`
      : `| ${tableCell(f.name)} | **does not exist** | — | — | — |`,
  );
  return [
    '| Relation | Exists | Rows (estimate) | Total size | Indexes |',
    '|---|---|---|---|---|',
    ...rows,
  ].join('\n');
}

function statementTable(statements: readonly StatementSummary[]): string {
  const rows = statements.map(
    (s, i) =>
      `| ${i + 1} | ${plainText(s.kind.replace(/Stmt$/, ''))} | ${s.relations.length > 0 ? s.relations.map(tableCell).join(', ') : '—'} | ${s.transactional ? 'yes' : 'NO'} |`,
  );
  return ['| # | Statement | Relations | In transaction |', '|---|---|---|---|', ...rows].join('\n');
}

export function renderApprovalFile(request: ApprovalRequest, context: RenderContext): string {
  const { command } = request;
  const minutes = minutesBetween(request.created_at, request.expires_at);
  const relations = relationsOf(context.statements);
  const stepByStep = context.statements.some((s) => !s.transactional);
  const mode = command.dry_run
    ? 'DRY RUN: the statements run in a transaction that is then rolled back; nothing is kept.'
    : stepByStep
      ? '**NOT in one transaction:** at least one statement cannot run inside a transaction, so every statement ' +
        'runs and commits on its own, in order. If one fails, the statements before it STAY APPLIED.'
      : 'The statements run in one transaction and are committed together, or not at all.';
  const frontMatter = stringifyFrontMatter({
    id: request.id,
    created_at: request.created_at,
    status: 'PENDING',
    action_type: 'api_call',
    priority: request.priority,
    expires_at: request.expires_at,
    requested_by: request.requested_by,
    environment: command.environment,
    database: command.database,
    request_hash: request.request_hash,
    ...(request.rollback_of ? { rollback_of: request.rollback_of } : {}),
    decided_by: '',
    ...(context.signing ? { signature: '' } : {}),
    ...(request.approvals_required === 2 ? { second_approver: '' } : {}),
    ...(request.approvals_required === 2 && context.signing ? { second_signature: '' } : {}),
    decided_at: '',
    reason: '',
  });
  const rollback = command.rollback_sql
    ? codeBlock('sql', command.rollback_sql)
    : '_No rollback SQL was provided: undoing this change would need new SQL written by hand._';

  return `---
${frontMatter}---

# Approval Request: ${plainText(request.title)}

## Proposed Action

**Type:** api_call (database migration)
**Target:** ${plainText(command.environment)} environment, database ${inlineCode(command.database)}${relations.length > 0 ? ` (${relations.map(inlineCode).join(', ')})` : ''}
**Requested By:** ${plainText(request.requested_by)}${request.rollback_of ? `\n**Rolls Back:** ${plainText(request.rollback_of)} (its recorded rollback SQL)` : ''}
**Mode:** ${command.dry_run ? 'dry run (rolled back)' : stepByStep ? 'execute step by step, each statement committed on its own' : 'execute and commit in one transaction'}

### Action Details

${plainText(request.title)}. ${mode}

### Execution Command

This block is what the server will run. It keeps its own copy of it; editing the SQL here does not
change what runs.

${codeBlock('yaml', renderExecutionCommand(request, context.serverName))}

## Reasoning

### Context

${codeBlock('text', request.reason)}

### Why This Action?

The reasoning above is the requesting agent's own; the server has not verified it.

### Expected Outcome

${mode} ${context.statements.length} statement${context.statements.length === 1 ? '' : 's'}, as read by the server's Postgres parser:

${statementTable(context.statements)}

## Risk Analysis

### Impact Assessment

- **Impact Level:** ${plainText(request.priority)}
- **Reversibility:** ${command.rollback_sql ? 'reversible (rollback SQL provided; it runs only through a new approval)' : 'NOT reversible by script (no rollback SQL provided)'}
- **Scope:** ${plainText(command.environment)} / ${plainText(command.database)}
- **Backup before execution:** ${command.backup_before ? (command.dry_run ? 'requested, but not needed for a dry run' : 'requested: the tables named are dumped with pg_dump (or copied inside the database) before anything runs; if that fails, nothing runs') : 'not requested'}

### Potential Risks

Computed by the server from the SQL with Postgres' own parser, not taken from the agent; the
agent's claims are in the Reasoning section above.

${findingsList(context.findings)}

${lockTable(context.locks, stepByStep)}

### Safeguards

- Runs only after a valid human decision in this file, before ${plainText(request.expires_at)}.
- Runs from the server's own record of this request (hash ${inlineCode(request.request_hash)}), never from text re-read from this file.
${
  stepByStep
    ? `- Runs at most once: each statement is recorded in the ledger as started before it runs and as done after it; after a crash in between, the outcome is reported as unknown and never retried.
- \`lock_timeout = ${context.lockTimeoutMs}ms\` and \`statement_timeout = ${context.statementTimeoutMs}ms\` for every statement; an error stops the run, but statements already done stay applied.`
    : `- Runs at most once: the ledger row is written in the same transaction as the migration.
- One transaction with \`lock_timeout = ${context.lockTimeoutMs}ms\` and \`statement_timeout = ${context.statementTimeoutMs}ms\`; any error rolls everything back.`
}

## Compliance & Policy

- **Approval Authority Required:** ${request.approvals_required === 2 ? '**two different humans** (the environment policy asks for two approvers for a risk found below): `decided_by` and `second_approver`' : 'human'}
- **Self-approval:** not accepted (\`decided_by\` must not be ${inlineCode(request.requested_by)})

## Preview

### Migration SQL
${codeBlock('sql', command.sql)}

### Rollback SQL
${rollback}

### Impact Analysis
From the live database catalog when the request was made (the agent's own estimates, if any, are in
its reasoning above; row counts are the planner's estimates, not exact counts):

${impactTable(context.impact)}

- **Affected Relations:** ${relations.length > 0 ? relations.map(inlineCode).join(', ') : 'none named'}
- **Statements:** ${context.statements.length}${command.migration_file ? `\n- **Migration File:** ${inlineCode(command.migration_file)}` : ''}

## Approval Decision

**Status:** PENDING
**Decided By:** ${PLACEHOLDERS.decidedBy}
**Decided At:** ${PLACEHOLDERS.decidedBy}
**Comments:** ${PLACEHOLDERS.comments}

### If APPROVED:
- The migration runs at once, ${command.dry_run ? 'and is rolled back (dry run)' : stepByStep ? 'statement by statement, each committed on its own' : 'in one transaction'}
- The outcome is appended to this file and returned to the agent

### If REJECTED:
- Nothing runs
- The agent is told your reason

### If EXPIRED:
- At ${plainText(request.expires_at)} (${minutes} minutes after the request) an undecided request expires, by the server's clock
- Nothing runs; the agent must submit a new request if still needed

---

## Human Instructions

**⚠️ ${plainText(command.environment.toUpperCase())} database change (${plainText(request.priority)} priority)**

Decide in the front matter at the top of this file (the Status line above is only a display).

**To approve this action:**
1. Review the Migration SQL and the Expected Outcome table
2. Change \`status: "PENDING"\` to \`status: "APPROVED"\` (exactly, in capitals)
3. Fill in your name: \`decided_by: "Your Name"\` (not ${inlineCode(request.requested_by)})${request.approvals_required === 2 ? '\n   and a second person\'s: `second_approver: "Another Name"` (two approvers are required)' : ''}
4. Optionally fill in \`decided_at\`; the server records its own time of your decision
5. Save the file

**To reject this action:**
1. Change \`status: "PENDING"\` to \`status: "REJECTED"\`
2. Fill in your name: \`decided_by: "Your Name"\`
3. **REQUIRED:** give a reason in \`reason: "…"\` or on the **Comments:** line above
4. Save the file

${signingInstructions(request, context.signing ?? null)}

**Note:** Decisions after ${plainText(request.expires_at)} are not accepted. The server notices a save within
milliseconds; a decision it cannot accept (a typo in the status, a missing name or reason) executes
nothing and is explained in \`gate_error\` in the front matter, so you can correct it and save again.
`;
}

/** The exact shell line that signs the canonical message of `role` for this request. */
function signCommand(request: ApprovalRequest, installation: string, role: SignedDecision['role']): string {
  const lines = canonicalMessage({
    id: request.id,
    requestHash: request.request_hash,
    installation,
    status: 'APPROVED',
    role,
    principal: 'you@example.com',
  })
    .replace(/\n$/, '')
    .split('\n');
  return `printf '%s\\n' ${lines.map((line) => `'${line}'`).join(' ')} | ssh-keygen -Y sign -n ${SIGNATURE_NAMESPACE} -f ~/.ssh/id_ed25519`;
}

/** How to decide: with a signature where the environment requires one, else an honest warning. */
function signingInstructions(
  request: ApprovalRequest,
  signing: { readonly installation: string } | null,
): string {
  const environment = plainText(request.command.environment);
  if (signing === null) {
    return `**Not authenticated:** decisions in the ${environment} environment are not signed, so anyone who can edit this file can approve it (the environment has no \`allowed_signers\`).`;
  }
  const second =
    request.approvals_required === 2
      ? `\n\nTwo approvers are required: the second runs the same approve command with their own name (it fills \`second_approver\` and \`second_signature\`), or signs by hand with \`second_approver: …\` as the last line of the message and pastes it as \`second_signature: |\`.`
      : '';
  return `**Signed decisions required.** In the ${environment} environment a decision counts only with an SSH signature (namespace \`${SIGNATURE_NAMESPACE}\`) by a key that its allowed_signers file lists for the name in \`decided_by\` (such as \`dana@example.com\`).

- In one step, signing with your SSH key or ssh-agent and making this edit: \`approval-gate approvals approve ${request.id} --as you@example.com [--key ~/.ssh/id_ed25519]\`, or \`approval-gate approvals reject ${request.id} --as you@example.com --reason "…"\`
- By hand: set \`status\` and \`decided_by\`, then sign this message with your name on its last line and the status you chose (APPROVED or REJECTED), and paste the output as \`signature: |\` in the front matter, each line indented by two spaces:

${codeBlock('sh', signCommand(request, signing.installation, 'decided_by'))}${second}`;
}

export interface OutcomeSection {
  readonly decision: Decision;
  readonly summary: string;
  readonly details: readonly string[];
}

/** The section the server appends once a request is final. */
export function renderOutcomeSection(outcome: OutcomeSection): string {
  const { decision } = outcome;
  const lines = [
    '',
    RESULT_MARKER,
    '## Outcome',
    '',
    `**Decision:** ${plainText(decision.status)}${decision.decided_by ? ` by ${plainText(decision.decided_by)}` : ' (by the server clock)'} at ${plainText(decision.decided_at)}`,
    `**Result:** ${plainText(outcome.summary)}`,
    ...outcome.details.map((line) => `- ${plainText(line)}`),
    '',
  ];
  return lines.join('\n');
}
