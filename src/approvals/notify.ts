import type { Logger } from '../log.js';
import type { ApprovalRequest } from './request.js';

/**
 * Tells humans that a request waits for them: a webhook (plain JSON or a Slack-compatible payload)
 * and/or a terminal bell. Fire and forget: a slow or dead receiver never delays the request; failures
 * are retried with backoff and logged. The payload carries no connection details, and the webhook URL
 * (which often embeds a secret) is never logged.
 */

export interface NotifyConfig {
  readonly webhook?: {
    readonly url: string;
    readonly format: 'json' | 'slack';
    readonly retries: number;
    readonly timeout_ms: number;
  };
  readonly terminal_bell: boolean;
}

export interface PendingNotice {
  readonly request: ApprovalRequest;
  readonly file: string;
  readonly findings: readonly {
    readonly severity: string;
    readonly code: string;
    readonly message: string;
  }[];
}

export function webhookPayload(notice: PendingNotice, format: 'json' | 'slack'): unknown {
  const { request } = notice;
  const dangers = notice.findings.filter((f) => f.severity === 'danger');
  if (format === 'slack') {
    return {
      text:
        `:warning: *${request.id}* waits for approval: ${request.title}\n` +
        `${request.command.environment}/${request.command.database}, ${request.priority} priority, expires ${request.expires_at}\n` +
        (dangers.length > 0
          ? `${dangers.length} danger finding(s): ${dangers.map((f) => f.code).join(', ')}\n`
          : '') +
        `Decide in \`${notice.file}\``,
    };
  }
  return {
    event: 'approval.requested',
    approval_id: request.id,
    title: request.title,
    environment: request.command.environment,
    database: request.command.database,
    priority: request.priority,
    requested_by: request.requested_by,
    created_at: request.created_at,
    expires_at: request.expires_at,
    file: notice.file,
    findings: notice.findings.map((f) => ({ severity: f.severity, code: f.code, message: f.message })),
  };
}

export class Notifier {
  readonly #config: NotifyConfig;
  readonly #log: Logger;
  readonly #inFlight = new Set<Promise<void>>();

  constructor(config: NotifyConfig, log: Logger) {
    this.#config = config;
    this.#log = log;
  }

  /** Starts notifying and returns at once. */
  pending(notice: PendingNotice): void {
    if (this.#config.terminal_bell) process.stderr.write('\u0007');
    const webhook = this.#config.webhook;
    if (!webhook) return;
    const delivery = this.#deliver(webhook, notice).finally(() => this.#inFlight.delete(delivery));
    this.#inFlight.add(delivery);
  }

  /** Waits for deliveries under way (for shutdown and tests). */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.#inFlight]);
  }

  async #deliver(webhook: NonNullable<NotifyConfig['webhook']>, notice: PendingNotice): Promise<void> {
    const body = JSON.stringify(webhookPayload(notice, webhook.format));
    const host = new URL(webhook.url).host;
    for (let attempt = 1; attempt <= webhook.retries + 1; attempt += 1) {
      try {
        const response = await fetch(webhook.url, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body,
          signal: AbortSignal.timeout(webhook.timeout_ms),
        });
        await response.body?.cancel();
        if (response.ok) {
          this.#log.info({ approval_id: notice.request.id, webhook_host: host }, 'approval request notified');
          return;
        }
        this.#log.warn(
          { approval_id: notice.request.id, webhook_host: host, status: response.status, attempt },
          'webhook refused the notification',
        );
      } catch (error) {
        this.#log.warn(
          {
            approval_id: notice.request.id,
            webhook_host: host,
            attempt,
            err: error instanceof Error ? error.name : 'error',
          },
          'webhook notification failed',
        );
      }
      if (attempt <= webhook.retries)
        await new Promise((resolve) => setTimeout(resolve, 250 * 2 ** (attempt - 1)));
    }
    this.#log.error(
      { approval_id: notice.request.id, webhook_host: host },
      'gave up notifying about the approval request',
    );
  }
}
