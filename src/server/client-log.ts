import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import {
  LoggingLevelSchema,
  SetLevelRequestSchema,
  type LoggingLevel,
} from '@modelcontextprotocol/sdk/types.js';
import type { ApprovalStatus } from '../pipeline.js';
import type { Change } from '../service/changes.js';
import type { PipelineHandle } from './handle.js';

/**
 * The gate's own events, sent to an MCP client as notifications/message once it has asked for them
 * with logging/setLevel (MCP logging): a request written, a decision recorded or refused, execution
 * progress and outcome. Only what the status already tells the agent, and never a connection string;
 * the server's stderr log stays as it is.
 */

const LEVELS = LoggingLevelSchema.options;

/** How many requests' told events a session remembers (so each is told once). */
const TOLD_REQUESTS = 1000;

export interface ClientLogEvent {
  readonly level: LoggingLevel;
  readonly event: string;
  readonly message: string;
}

/** The event a change means, read from the request's status; null when there is nothing to tell. */
export function clientLogEvent(status: ApprovalStatus, change: Change): ClientLogEvent | null {
  const { request, decision, problem } = status;
  const id = request.id;
  switch (change.kind) {
    case 'requested':
      return {
        level: 'info',
        event: 'request_written',
        message:
          `${id} written for ${request.command.environment}/${request.command.database} (${request.title}); ` +
          `it waits for a decision until ${request.expires_at}.`,
      };
    case 'decided':
      if (decision) {
        return {
          level: 'notice',
          event: 'decision_recorded',
          message: `${id} is ${decision.status}${decision.decided_by ? ` by ${decision.decided_by}` : ''}${decision.reason && decision.status !== 'APPROVED' ? `: ${decision.reason}` : ''}.`,
        };
      }
      if (problem) {
        return {
          level: 'warning',
          event: 'decision_refused',
          message: `${id}: the decision in its file was not accepted (${problem.code}): ${problem.message}`,
        };
      }
      return null;
    case 'execution': {
      if (status.final && status.result) {
        const failed = status.result.state === 'failed' || status.result.state === 'unknown';
        return {
          level: failed ? 'error' : 'notice',
          event: 'execution_finished',
          message:
            `${id} execution ${status.result.state} in ${status.result.duration_ms} ms` +
            (status.result.error ? `: ${status.result.error.message}` : '.'),
        };
      }
      if (status.final) {
        return {
          level: 'error',
          event: 'execution_finished',
          message: `${id} execution ${status.execution}${status.executionError ? `: ${status.executionError}` : '.'}`,
        };
      }
      if (status.execution === 'running') {
        return {
          level: 'info',
          event: 'execution_progress',
          message: `${id}: ${status.progress ?? 'running'}.`,
        };
      }
      return null;
    }
    case 'shown':
      return null;
  }
}

/**
 * Declares nothing itself (the server's capabilities include `logging`); answers logging/setLevel for
 * this session and sends the gate's events at or above that level. A client that never sets a level
 * gets none. Returns the function that stops it.
 */
export function registerClientLog(server: McpServer, gate: PipelineHandle): () => void {
  let level: LoggingLevel | null = null;
  server.server.setRequestHandler(SetLevelRequestSchema, (request) => {
    level = request.params.level;
    return Promise.resolve({});
  });
  /** Per request: what was told already (each event once), and the chain that keeps them in order. */
  const told = new Map<string, Set<string>>();
  const queued = new Map<string, Promise<void>>();
  let stopped = false;
  let stop: () => void = () => undefined;
  void gate.pipeline().then(
    (pipeline) => {
      if (stopped) return;
      const tell = async (id: string, change: Change): Promise<void> => {
        const status = await pipeline.status(id);
        const event = clientLogEvent(status, change);
        const threshold = level;
        if (!event || threshold === null || LEVELS.indexOf(event.level) < LEVELS.indexOf(threshold)) return;
        const key = `${event.event} ${event.message}`;
        const seen = told.get(id) ?? new Set<string>();
        if (seen.has(key)) return;
        seen.add(key);
        told.set(id, seen);
        // Bounded: the requests told about longest ago are forgotten first.
        for (const oldest of told.keys()) {
          if (told.size <= TOLD_REQUESTS) break;
          told.delete(oldest);
        }
        await server.sendLoggingMessage({
          level: event.level,
          logger: 'approval-gate',
          data: { approval_id: id, event: event.event, message: event.message },
        });
      };
      stop = pipeline.onChange((id, change) => {
        if (level === null || change.kind === 'shown' || !server.isConnected()) return;
        // Status reads finish in any order: chained per request, events go out as the changes came.
        const next = (queued.get(id) ?? Promise.resolve())
          .then(() => tell(id, change))
          .catch(() => undefined);
        queued.set(id, next);
        void next.then(() => {
          if (queued.get(id) === next) queued.delete(id);
        });
      });
    },
    () => undefined,
  );
  return () => {
    stopped = true;
    stop();
  };
}
