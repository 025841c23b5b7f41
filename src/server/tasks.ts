import { randomBytes } from 'node:crypto';
import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import {
  isTerminal,
  type CreateTaskOptions,
  type TaskStore,
} from '@modelcontextprotocol/sdk/experimental/tasks/interfaces.js';
import type {
  CreateTaskRequestHandlerExtra,
  TaskRequestHandlerExtra,
} from '@modelcontextprotocol/sdk/experimental/tasks/interfaces.js';
import type { CreateTaskResult } from '@modelcontextprotocol/sdk/experimental/tasks/types.js';
import { InMemoryTaskMessageQueue } from '@modelcontextprotocol/sdk/experimental/tasks/stores/in-memory.js';
import type {
  CallToolResult,
  GetTaskResult,
  Request,
  RequestId,
  Result,
  Task,
} from '@modelcontextprotocol/sdk/types.js';
import { APPROVAL_ID_PATTERN } from '../approvals/request.js';
import { GateError } from '../errors.js';
import type { ApprovalStatus, Pipeline } from '../pipeline.js';
import type { QuestionChannel } from './ask-in-client.js';
import type { PipelineHandle } from './handle.js';
import { outcomeOfRefusal, outcomeOfStatus, toToolResult } from './outcome.js';

/**
 * MCP Tasks (experimental in the SDK) for execute_migration and await_approval. A task here is a view
 * of an approval request on disk, not a job of this process: its id is the approval id, its status is
 * read from the request's status whenever it is asked for, and its result is the tool's result. So a
 * task survives a reconnect and a restart, and any session of this installation can follow it, as any
 * session can follow any request with get_approval_status. tasks/cancel is cancel_approval: it works
 * while no one has decided, and is refused after.
 *
 * Status: input_required while a human must decide, working while the approved migration runs, then
 * completed, or failed where the tool result is an error (rejected, expired, void, a failed or unknown
 * execution), or cancelled (withdrawn, or its file deleted).
 *
 * Clients that do not ask for a task keep the bounded wait: the SDK turns such a call of a
 * task-capable tool into a task it polls until the end, so this store gives it an inline task that
 * is already finished with today's result (PENDING after the wait bound) when the SDK first looks.
 */

/** How often a client should ask for a task's status. */
export const TASK_POLL_MS = 1000;

/** Tasks held in memory only (refusals, inline calls) at most; the oldest go first. */
const MAX_MEMORY_TASKS = 500;

const PAGE_SIZE = 50;

interface MemoryTask {
  task: Task;
  result: CallToolResult | null;
  /** A call that did not ask for a task: its result is taken once, by the SDK, then forgotten. */
  readonly inline: boolean;
}

/** The task status an approval's status means (see above). */
export function taskStatusOf(status: ApprovalStatus): Task['status'] {
  if (!status.decision) return 'input_required';
  if (status.decision.status === 'CANCELLED') return 'cancelled';
  if (!status.final) return 'working';
  return toToolResult(outcomeOfStatus(status)).isError ? 'failed' : 'completed';
}

function isoOf(timestamp: string | null | undefined, fallback: string): string {
  const ms = timestamp ? Date.parse(timestamp) : NaN;
  return new Date(Number.isNaN(ms) ? Date.parse(fallback) : ms).toISOString();
}

/** The task view of an approval's status. */
export function taskOf(status: ApprovalStatus): Task {
  const { request, decision } = status;
  const lastUpdated = status.result?.finished_at ?? decision?.decided_at ?? request.created_at;
  return {
    taskId: request.id,
    status: taskStatusOf(status),
    statusMessage: outcomeOfStatus(status).message,
    createdAt: isoOf(request.created_at, request.created_at),
    lastUpdatedAt: isoOf(lastUpdated, request.created_at),
    // The request stays on disk; so does the task.
    ttl: null,
    pollInterval: TASK_POLL_MS,
  };
}

function wasAskedAsTask(request: Request): boolean {
  const params = request.params as Record<string, unknown> | undefined;
  return params?.task !== undefined;
}

/** One per MCP session: the SDK's task handlers (tasks/get, tasks/result, tasks/list, tasks/cancel) read it. */
export class ApprovalTasks implements TaskStore {
  readonly #gate: PipelineHandle;
  readonly #memory = new Map<string, MemoryTask>();
  /** Tasks this session created, with the last status told about each (see follow). */
  readonly #followed = new Map<string, string>();
  readonly #closed = new AbortController();
  /** Messages for this session's tasks (the questions asked in the client), until tasks/result fetches them. */
  readonly messageQueue = new InMemoryTaskMessageQueue();
  #watching: Promise<() => void> | null = null;

  constructor(gate: PipelineHandle) {
    this.#gate = gate;
  }

  /**
   * Tells `server`'s client of each change of the approval's task (notifications/tasks/status) until
   * it ends; clients poll tasks/get anyway, this only saves them the wait.
   */
  follow(id: string, server: McpServer): void {
    if (this.#closed.signal.aborted) return;
    this.#followed.set(id, '');
    this.#watching ??= this.#gate.pipeline().then((pipeline) =>
      pipeline.onChange((changed) => {
        if (this.#followed.has(changed) && !this.#closed.signal.aborted) void this.#tell(changed, server);
      }),
    );
  }

  async #tell(id: string, server: McpServer): Promise<void> {
    const task = await this.getTask(id).catch(() => null);
    if (!task || !this.#followed.has(id)) return;
    const told = `${task.status} ${task.statusMessage ?? ''}`;
    if (this.#followed.get(id) === told) return;
    this.#followed.set(id, told);
    if (isTerminal(task.status)) this.#followed.delete(id);
    await server.server
      .notification({ method: 'notifications/tasks/status', params: task })
      .catch(() => undefined);
  }

  /**
   * How a question about task `id` reaches the client: queued for its tasks/result, while the session
   * lasts. A question that is over leaves the queue, so a client that fetches it late is not asked
   * about a request decided meanwhile.
   */
  questionChannel(id: string): QuestionChannel {
    return {
      signal: this.#closed.signal,
      sendOptions: { relatedTask: { taskId: id } },
      onEnd: () => void this.messageQueue.dequeueAll(id),
    };
  }

  /** The session ended: no more notifications, and open questions are withdrawn. */
  close(): void {
    this.#closed.abort(new Error('the MCP session closed'));
    this.#followed.clear();
    void this.#watching?.then(
      (stop) => stop(),
      () => undefined,
    );
  }

  async createTask(options: CreateTaskOptions, _requestId: RequestId, request: Request): Promise<Task> {
    const approvalId = options.context?.approval_id;
    const inline = !wasAskedAsTask(request);
    if (!inline && typeof approvalId === 'string') {
      const task = await this.getTask(approvalId);
      if (!task) throw new Error(`No approval request ${approvalId} to make a task of.`);
      return task;
    }
    const now = new Date().toISOString();
    const task: Task = {
      taskId: `${inline ? 'inline' : 'refused'}-${randomBytes(8).toString('hex')}`,
      status: 'working',
      createdAt: now,
      lastUpdatedAt: now,
      ttl: null,
      pollInterval: TASK_POLL_MS,
    };
    this.#memory.set(task.taskId, { task, result: null, inline });
    for (const oldest of this.#memory.keys()) {
      if (this.#memory.size <= MAX_MEMORY_TASKS) break;
      this.#memory.delete(oldest);
    }
    return task;
  }

  /** True for the task of a call that did not ask for one (see the module comment). */
  isInline(taskId: string): boolean {
    return this.#memory.get(taskId)?.inline === true;
  }

  async getTask(taskId: string): Promise<Task | null> {
    const held = this.#memory.get(taskId);
    if (held) return held.task;
    const status = await this.#statusOf(taskId);
    return status ? taskOf(status) : null;
  }

  /** Only tasks held in memory take a stored result; an approval's result is its status on disk. */
  storeTaskResult(taskId: string, status: 'completed' | 'failed', result: Result): Promise<void> {
    const held = this.#memory.get(taskId);
    if (!held) {
      return Promise.reject(
        new Error(`The result of ${taskId} is the approval's own status; it cannot be stored.`),
      );
    }
    held.result = result as CallToolResult;
    held.task = { ...held.task, status, lastUpdatedAt: new Date().toISOString() };
    return Promise.resolve();
  }

  async getTaskResult(taskId: string): Promise<Result> {
    const held = this.#memory.get(taskId);
    if (held) {
      if (held.result === null) throw new Error(`Task ${taskId} has no result yet.`);
      if (held.inline) this.#memory.delete(taskId);
      return held.result;
    }
    const status = await this.#statusOf(taskId);
    if (!status) throw new Error(`Task not found: ${taskId}`);
    return toToolResult(outcomeOfStatus(status));
  }

  /**
   * The SDK calls this for tasks/cancel ('cancelled'), which withdraws the request like
   * cancel_approval; other statuses follow from the approval itself and are not set from outside.
   */
  async updateTaskStatus(taskId: string, status: Task['status'], statusMessage?: string): Promise<void> {
    if (status !== 'cancelled' || this.#memory.has(taskId)) return;
    const pipeline = await this.#gate.pipeline();
    await pipeline.cancel(taskId, {
      by: this.#gate.config.requested_by,
      reason: statusMessage ?? 'The MCP client cancelled the task.',
    });
  }

  async listTasks(cursor?: string): Promise<{ tasks: Task[]; nextCursor?: string }> {
    const pipeline = await this.#gate.pipeline();
    const ids = (await pipeline.list()).map((summary) => summary.approval_id).sort();
    const start = cursor === undefined ? 0 : ids.findIndex((id) => id > cursor);
    const page = start === -1 ? [] : ids.slice(start, start + PAGE_SIZE);
    // A request that became unreadable since list() (a record rewritten meanwhile) is left out, as
    // list() leaves it out, rather than failing the whole page.
    const tasks = (await Promise.all(page.map((id) => this.getTask(id).catch(() => null)))).filter(
      (t): t is Task => t !== null,
    );
    const last = page.at(-1);
    return last !== undefined && start + PAGE_SIZE < ids.length ? { tasks, nextCursor: last } : { tasks };
  }

  /** The status of the approval a task id names, or null when there is no such request. */
  async #statusOf(taskId: string): Promise<ApprovalStatus | null> {
    if (!APPROVAL_ID_PATTERN.test(taskId)) return null;
    const pipeline = await this.#gate.pipeline();
    try {
      return await pipeline.status(taskId);
    } catch (error) {
      if (error instanceof GateError && error.code === 'APPROVAL_NOT_FOUND') return null;
      throw error;
    }
  }
}

/** What a task-capable tool does with its (validated) arguments `A`; the task plumbing is shared. */
export interface ApprovalTaskWork<A> {
  /** Submits or finds the request and returns its id; throws the refusal (a GateError). */
  start(args: A, pipeline: Pipeline): Promise<string>;
  /** A call that did not ask for a task: today's bounded wait, and its result. */
  inline(
    id: string,
    args: A,
    pipeline: Pipeline,
    extra: CreateTaskRequestHandlerExtra,
  ): Promise<CallToolResult>;
  /** A task was created for request `id`: anything to do meanwhile (ask in the client). */
  followed?(id: string, args: A, pipeline: Pipeline): void;
}

/**
 * The task handler of a tool registered with taskSupport: optional: a call that asks for a task gets
 * the approval's task at once; one that does not gets its result as today, through an inline task.
 */
export function approvalTaskHandler<A>(
  gate: PipelineHandle,
  tasks: ApprovalTasks,
  work: ApprovalTaskWork<A>,
) {
  return {
    createTask: async (args: A, extra: CreateTaskRequestHandlerExtra): Promise<CreateTaskResult> => {
      let started:
        { readonly id: string; readonly pipeline: Pipeline } | { readonly refusal: CallToolResult };
      try {
        const pipeline = await gate.pipeline();
        started = { id: await work.start(args, pipeline), pipeline };
      } catch (error) {
        started = { refusal: toToolResult(outcomeOfRefusal(error)) };
      }
      const context = 'id' in started ? { approval_id: started.id } : {};
      const task = await extra.taskStore.createTask({ ttl: null, pollInterval: TASK_POLL_MS, context });
      if ('id' in started && !tasks.isInline(task.taskId)) {
        work.followed?.(started.id, args, started.pipeline);
        return { task };
      }
      const result =
        'id' in started ? await work.inline(started.id, args, started.pipeline, extra) : started.refusal;
      // Stored directly, not through extra.taskStore: no status notification for a task the client
      // never asked for.
      await tasks.storeTaskResult(task.taskId, result.isError ? 'failed' : 'completed', result);
      return { task: (await tasks.getTask(task.taskId)) ?? task };
    },
    getTask: async (_args: A, extra: TaskRequestHandlerExtra): Promise<GetTaskResult> =>
      extra.taskStore.getTask(extra.taskId),
    getTaskResult: async (_args: A, extra: TaskRequestHandlerExtra): Promise<CallToolResult> =>
      (await extra.taskStore.getTaskResult(extra.taskId)) as CallToolResult,
  };
}
