import { describe, expect, it } from 'vitest';
import { formatTimestamp, parseTimestamp } from '../src/time.js';

describe('timestamps', () => {
  it('reads a naive timestamp as wall time in the server time zone', () => {
    const parsed = parseTimestamp('2026-02-13T09:00:00');
    expect(parsed).toEqual(new Date(2026, 1, 13, 9, 0, 0));
  });

  it('reads Z and explicit offsets as exact instants', () => {
    expect(parseTimestamp('2026-02-13T09:00:00Z')?.toISOString()).toBe('2026-02-13T09:00:00.000Z');
    expect(parseTimestamp('2026-02-13T09:00:00+01:00')?.toISOString()).toBe('2026-02-13T08:00:00.000Z');
    expect(parseTimestamp('2026-02-13T09:00:00.250-0230')?.toISOString()).toBe('2026-02-13T11:30:00.250Z');
  });

  it('refuses what is not a timestamp instead of guessing', () => {
    for (const text of [
      'yesterday',
      '2026-02-31T09:00:00',
      '2026-13-01T00:00:00',
      '2026-02-13T25:00:00',
      '13/02/2026',
    ]) {
      expect(parseTimestamp(text), text).toBeNull();
    }
  });

  it('writes ISO 8601 with an explicit offset that reads back to the same instant', () => {
    const instant = new Date('2026-11-25T11:46:47.000Z');
    const written = formatTimestamp(instant);
    expect(written).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}$/);
    expect(parseTimestamp(written)?.getTime()).toBe(instant.getTime());
  });
});

describe('configured time zone', () => {
  it('reads naive timestamps as wall time in the configured zone, across DST', () => {
    expect(parseTimestamp('2026-02-13T09:00:00', 'Europe/Berlin')?.toISOString()).toBe(
      '2026-02-13T08:00:00.000Z',
    );
    expect(parseTimestamp('2026-07-13T09:00:00', 'Europe/Berlin')?.toISOString()).toBe(
      '2026-07-13T07:00:00.000Z',
    );
    expect(parseTimestamp('2026-02-13T09:00:00', 'America/New_York')?.toISOString()).toBe(
      '2026-02-13T14:00:00.000Z',
    );
  });

  it('ignores the zone when the timestamp carries its own offset', () => {
    expect(parseTimestamp('2026-02-13T09:00:00Z', 'Asia/Tokyo')?.toISOString()).toBe(
      '2026-02-13T09:00:00.000Z',
    );
  });

  it('writes in the configured zone with its offset', () => {
    const instant = new Date('2026-07-13T07:00:00Z');
    expect(formatTimestamp(instant, 'Europe/Berlin')).toBe('2026-07-13T09:00:00+02:00');
    expect(formatTimestamp(instant, 'UTC')).toBe('2026-07-13T07:00:00+00:00');
    expect(formatTimestamp(instant, 'Asia/Kolkata')).toBe('2026-07-13T12:30:00+05:30');
  });
});
