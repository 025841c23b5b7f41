import type { AuditLog } from '../approvals/audit.js';
import { parseApprovalText, updateFrontMatter } from '../approvals/frontmatter.js';
import type { ApprovalRequest } from '../approvals/request.js';
import type { ApprovalStore } from '../approvals/store.js';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { DECIDED_VIA_CLIENT, localUser, type ClientAnswer } from './client-answer.js';

export interface ClientAnswerOptions {
  readonly store: ApprovalStore;
  readonly audit: AuditLog;
  readonly config: Config;
  readonly log: Logger;
}

/**
 * Writes an answer given in the MCP client into the approval file as the edit a person would make
 * (status, decided_by, reason), marked `decided_via: "mcp-client"`, so that the gate judges it by the
 * same rules as any save: this function decides nothing. The audit trail, which only the server
 * writes, records that the answer came from the client (the file's mark is a view; anyone can type it).
 *
 * Returns false, leaving the file alone, when the file no longer says PENDING: someone has decided
 * or is deciding in the file, and the file's word comes first.
 */
export async function writeClientAnswer(
  o: ClientAnswerOptions,
  request: ApprovalRequest,
  answer: ClientAnswer,
  client: string,
): Promise<boolean> {
  const decidedBy = localUser(o.config);
  let stillPending = false;
  const written = await o.store.updateApprovalFile(request.id, (text) => {
    stillPending = parseApprovalText(text).data.status === 'PENDING';
    if (!stillPending) return text;
    return updateFrontMatter(text, {
      status: answer.status,
      decided_by: decidedBy,
      ...(answer.reason !== undefined ? { reason: answer.reason } : {}),
      decided_via: DECIDED_VIA_CLIENT,
      // As for a human's save: a gate_error present afterwards is the gate's word on this answer.
      gate_error: undefined,
    });
  });
  if (!written || !stillPending) {
    o.log.info(
      { approval_id: request.id },
      'answer in the MCP client not written: the file was decided first',
    );
    return false;
  }
  await o.audit.append({
    approval_id: request.id,
    event: 'answered_in_client',
    actor: decidedBy,
    request_hash: request.request_hash,
    detail: `${answer.status} in the MCP client ${JSON.stringify(client)}${answer.reason ? `: ${answer.reason}` : ''}`,
  });
  o.log.info(
    { approval_id: request.id, status: answer.status, by: decidedBy },
    'answer in the MCP client written',
  );
  return true;
}
