/**
 * Time in approval files. The server writes ISO 8601 with an explicit offset. It reads both that and
 * the naive form the reference file uses (`2026-02-13T09:00:00`); a naive timestamp is read as wall
 * time in the configured time zone (`timezone`, default the server's own). Because front matter is
 * parsed with the YAML 1.2 core schema, quoted and unquoted timestamps both arrive as strings, so the
 * same rule applies to both. Expiry is always judged by the server's clock, never by a file's text.
 */

export type Clock = () => Date;

export const systemClock: Clock = () => new Date();

/** An IANA zone name such as "Europe/Berlin", or null for the server's local zone. */
export type TimeZone = string | null;

const ISO_PATTERN =
  /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:?\d{2})?$/;

/** True when `zone` is a time zone this runtime knows. */
export function isValidTimeZone(zone: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}

/** Minutes east of UTC of `zone` at `instant`. */
export function offsetMinutes(instant: Date, zone: TimeZone): number {
  if (zone === null) return -instant.getTimezoneOffset();
  const parts = new Intl.DateTimeFormat('en-US', {
    timeZone: zone,
    hourCycle: 'h23',
    year: 'numeric',
    month: 'numeric',
    day: 'numeric',
    hour: 'numeric',
    minute: 'numeric',
    second: 'numeric',
  }).formatToParts(instant);
  const part = (type: Intl.DateTimeFormatPartTypes) => Number(parts.find((p) => p.type === type)?.value ?? 0);
  const wall = Date.UTC(
    part('year'),
    part('month') - 1,
    part('day'),
    part('hour'),
    part('minute'),
    part('second'),
  );
  return Math.round((wall - Math.floor(instant.getTime() / 1000) * 1000) / 60_000);
}

/** Parses an ISO 8601 timestamp with or without offset; returns null when it is not one. */
export function parseTimestamp(text: string, zone: TimeZone = null): Date | null {
  const match = ISO_PATTERN.exec(text.trim());
  if (!match) return null;
  const [, y, mo, d, h, mi, s, frac, offset] = match;
  const [year, month, day, hour, minute] = [y, mo, d, h, mi].map(Number) as [
    number,
    number,
    number,
    number,
    number,
  ];
  const seconds = Number(s ?? '0');
  const millis = frac ? Number(frac.slice(0, 3).padEnd(3, '0')) : 0;
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || seconds > 59) return null;
  // Reject dates that JavaScript would silently roll over (2026-02-31 → March 3rd).
  if (new Date(Date.UTC(year, month - 1, day)).getUTCDate() !== day) return null;
  const wall = Date.UTC(year, month - 1, day, hour, minute, seconds, millis);
  if (offset === undefined) {
    // Wall time in `zone`: correct the first guess once, for instants near a DST change.
    const first = wall - offsetMinutes(new Date(wall), zone) * 60_000;
    return new Date(wall - offsetMinutes(new Date(first), zone) * 60_000);
  }
  let east = 0;
  if (offset !== 'Z') {
    const sign = offset.startsWith('-') ? -1 : 1;
    const digits = offset.slice(1).replace(':', '');
    east = sign * (Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2, 4)));
  }
  return new Date(wall - east * 60_000);
}

function pad(value: number, width = 2): string {
  return String(value).padStart(width, '0');
}

/** ISO 8601 in `zone` (default: the server's) with an explicit offset, to the second. */
export function formatTimestamp(date: Date, zone: TimeZone = null): string {
  const offset = offsetMinutes(date, zone);
  const wall = new Date(Math.floor(date.getTime() / 1000) * 1000 + offset * 60_000);
  const sign = offset >= 0 ? '+' : '-';
  const abs = Math.abs(offset);
  return (
    `${wall.getUTCFullYear()}-${pad(wall.getUTCMonth() + 1)}-${pad(wall.getUTCDate())}` +
    `T${pad(wall.getUTCHours())}:${pad(wall.getUTCMinutes())}:${pad(wall.getUTCSeconds())}` +
    `${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`
  );
}

/** Truncates to whole seconds, so that what the file shows is exactly what the server enforces. */
export function wholeSeconds(date: Date): Date {
  return new Date(Math.floor(date.getTime() / 1000) * 1000);
}
