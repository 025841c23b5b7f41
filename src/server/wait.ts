import type { RequestHandlerExtra } from '@modelcontextprotocol/sdk/shared/protocol.js';
import type { ServerNotification, ServerRequest } from '@modelcontextprotocol/sdk/types.js';
import type { ApprovalStatus, Pipeline } from '../pipeline.js';
import { outcomeOfStatus } from './outcome.js';

export type ToolExtra = RequestHandlerExtra<ServerRequest, ServerNotification>;

/**
 * Waits for a request to become final, but never longer than the configured bound (clients cancel a
 * tools/call after about 60 s), sending a progress notification every tick when the client asked for
 * them. Returns whatever the status is when the wait ends; PENDING is a normal answer.
 */
export async function waitBounded(
  pipeline: Pipeline,
  id: string,
  extra: ToolExtra,
  maxWaitSeconds?: number,
): Promise<ApprovalStatus> {
  const { wait } = pipeline.config;
  const boundSeconds = Math.min(maxWaitSeconds ?? wait.max_wait_seconds, wait.max_wait_seconds);
  return pipeline.waitForFinal(id, {
    timeoutMs: boundSeconds * 1000,
    tickMs: wait.progress_interval_seconds * 1000,
    signal: extra.signal,
    onTick: (status, elapsedMs) =>
      sendProgress(extra, elapsedMs / 1000, boundSeconds, outcomeOfStatus(status).message),
  });
}

/**
 * One progress notification (seconds waited, of `totalSeconds` when the wait is bounded), when the
 * client asked for them; a client that has gone away costs nothing.
 */
export async function sendProgress(
  extra: ToolExtra,
  seconds: number,
  totalSeconds: number | null,
  message: string,
): Promise<void> {
  const progressToken = extra._meta?.progressToken;
  if (progressToken === undefined) return;
  await extra
    .sendNotification({
      method: 'notifications/progress',
      params: {
        progressToken,
        progress: Math.round(seconds),
        ...(totalSeconds !== null ? { total: totalSeconds } : {}),
        message,
      },
    })
    .catch(() => undefined);
}
