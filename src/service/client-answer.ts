/**
 * Who may answer in the MCP client, and under which name. Kept apart from the writing of the answer
 * (write-client-answer.ts) so that the server, which asks before its pipeline has loaded, does not
 * load the approval-file parser to answer `initialize`.
 */
import { userInfo } from 'node:os';
import type { ApprovalRequest } from '../approvals/request.js';
import type { Config } from '../config.js';

/** What the person in the MCP client answered: the same two decisions the file offers. */
export interface ClientAnswer {
  readonly status: 'APPROVED' | 'REJECTED';
  readonly reason?: string;
}

/** The value of `decided_via` in a file whose decision was answered in the MCP client. */
export const DECIDED_VIA_CLIENT = 'mcp-client';

/** The name in-client decisions are recorded under: `local_user`, or the OS user running the server. */
export function localUser(config: Config): string {
  return config.local_user ?? userInfo().username;
}

/**
 * Why an answer given in the MCP client could not count for `request`, or null when it could: the
 * environment does not allow it, or the local user may not decide this request (the requester
 * itself, or not among the environment's approvers). Asking would only waste the person's time.
 */
export function clientAnswerBar(config: Config, request: ApprovalRequest): string | null {
  const environment = config.environments[request.command.environment];
  if (environment?.approve_in_client !== true) {
    return `the ${request.command.environment} environment does not take decisions in the MCP client (approve_in_client)`;
  }
  const user = localUser(config);
  if (user.toLowerCase() === request.requested_by.toLowerCase()) {
    return `the local user "${user}" is also the requester (agent_identity), who may never decide`;
  }
  if (environment.approvers && !environment.approvers.some((a) => a.toLowerCase() === user.toLowerCase())) {
    return `the local user "${user}" is not among the approvers of ${request.command.environment}`;
  }
  return null;
}
