import { afterEach, describe, expect, it, vi } from 'vitest';
import { ChangeFeed } from '../../src/service/changes.js';
import { compactWhenQuiet, v8FullCollection } from '../../src/server/quiet-compaction.js';

describe('collecting the heap once the gate is quiet', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('collects once, after the last change of a burst and the quiet time', () => {
    vi.useFakeTimers();
    const changes = new ChangeFeed();
    const collect = vi.fn();
    const stop = compactWhenQuiet((listener) => changes.subscribe(listener), { quietMs: 1000, collect });
    for (let i = 0; i < 5; i += 1) {
      changes.emit({ id: `APR-20261204-00${i}`, kind: 'requested' });
      vi.advanceTimersByTime(900);
    }
    expect(collect).not.toHaveBeenCalled();
    vi.advanceTimersByTime(100);
    expect(collect).toHaveBeenCalledTimes(1);
    vi.advanceTimersByTime(10_000);
    expect(collect).toHaveBeenCalledTimes(1);
    stop();
    changes.emit({ id: 'APR-20261204-009', kind: 'requested' });
    vi.advanceTimersByTime(10_000);
    expect(collect).toHaveBeenCalledTimes(1);
    expect(changes.listeners).toBe(0);
  });

  it("reaches V8's full collection on this Node, without exposing gc to anyone else", () => {
    const collect = v8FullCollection();
    expect(collect).toBeTypeOf('function');
    collect?.();
    expect((globalThis as { gc?: unknown }).gc).toBeUndefined();
  });
});
