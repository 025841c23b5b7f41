/** What changed about a request: each is one event, told once to each listener. */
export type ChangeKind =
  /** A new request was written. */
  | 'requested'
  /** The gate recorded a decision, or found a problem with the file. */
  | 'decided'
  /** Execution was queued, started, made progress, or ended. */
  | 'execution'
  /** The server rewrote the approval file, its view of the request (execution fields, the Outcome). */
  | 'shown';

export interface Change {
  readonly id: string;
  readonly kind: ChangeKind;
}

type Listener = (change: Change) => void;

/**
 * The pipeline's change notifications, typed. Waiting tool calls listen to one request and read the
 * server's model; MCP resource subscriptions listen to all and read the file, so they follow what
 * changes the file ('requested', 'decided', 'shown'), not 'execution'. Plain sets instead of an EventEmitter: no listener ceiling to raise (and so no
 * warning hidden), and `listeners` tells tests and shutdown how many are still attached.
 */
export class ChangeFeed {
  readonly #all = new Set<Listener>();
  readonly #byId = new Map<string, Set<Listener>>();

  emit(change: Change): void {
    for (const listener of [...(this.#byId.get(change.id) ?? []), ...this.#all]) listener(change);
  }

  /** Calls `listener` for every change of every request. Returns the function that stops it. */
  subscribe(listener: Listener): () => void {
    this.#all.add(listener);
    return () => this.#all.delete(listener);
  }

  /** Calls `listener` for every change of request `id`. Returns the function that stops it. */
  watch(id: string, listener: Listener): () => void {
    let listeners = this.#byId.get(id);
    if (!listeners) {
      listeners = new Set();
      this.#byId.set(id, listeners);
    }
    listeners.add(listener);
    return () => {
      listeners.delete(listener);
      if (listeners.size === 0 && this.#byId.get(id) === listeners) this.#byId.delete(id);
    };
  }

  /** How many listeners are attached (all requests and single ones). */
  get listeners(): number {
    let count = this.#all.size;
    for (const listeners of this.#byId.values()) count += listeners.size;
    return count;
  }
}
