import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/**
 * After a burst of work (a thousand requests written in seconds, say) V8 keeps the heap it grew for
 * it: its memory reducer gives it back only once allocation has been quiet long enough, and measured
 * here it often had not after half a minute (155–195 MB held with 1,000 pending requests; 30 MB less
 * soon after one collection). A gate then waits for humans for minutes or hours, so once the pipeline
 * has been quiet for `QUIET_MS` after a change, the server collects once. Nothing else waits on it then: the
 * pause (tens of milliseconds) falls where no call and no decision is under way.
 */
export const QUIET_MS = 15_000;

let fullCollection: (() => void) | null | undefined;

/**
 * V8's own full collection. Node has no public call for it: V8's gc extension is switched on just long
 * enough to be installed in one new, empty context, and off again, so no other context (and no code
 * but this) ever sees it. Null where that fails; then nothing is collected early.
 */
export function v8FullCollection(): (() => void) | null {
  if (fullCollection === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      const gc: unknown = runInNewContext('gc');
      // 'last-resort' is the collection V8 makes under memory pressure: it also gives pages back.
      fullCollection =
        typeof gc === 'function'
          ? () =>
              void (gc as (options: object) => unknown)({
                type: 'major',
                execution: 'sync',
                flavor: 'last-resort',
              })
          : null;
    } catch {
      fullCollection = null;
    } finally {
      setFlagsFromString('--no-expose-gc');
    }
  }
  return fullCollection;
}

/**
 * Collects once `quietMs` after the last change `subscribe` reports. Returns the function that stops it.
 */
export function compactWhenQuiet(
  subscribe: (listener: () => void) => () => void,
  {
    quietMs = QUIET_MS,
    collect = v8FullCollection(),
  }: { quietMs?: number; collect?: (() => void) | null } = {},
): () => void {
  if (collect === null) return () => undefined;
  let timer: NodeJS.Timeout | null = null;
  const unsubscribe = subscribe(() => {
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      collect();
    }, quietMs);
    // A pending collection never keeps the process alive.
    timer.unref();
  });
  return () => {
    unsubscribe();
    if (timer) clearTimeout(timer);
  };
}
