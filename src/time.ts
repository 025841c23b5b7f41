/**
 * Time in approval files. The server writes ISO 8601 with an explicit offset. It reads both that and
 * the naive form the reference file uses (`2026-02-13T09:00:00`); a naive timestamp is read as wall
 * time in the server's local time zone (documented in docs/decisions.md). Because front matter is
 * parsed with the YAML 1.2 core schema, quoted and unquoted timestamps both arrive as strings, so the
 * same rule applies to both.
 */

export type Clock = () => Date;

export const systemClock: Clock = () => new Date();

const ISO_PATTERN =
  /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:?\d{2})?$/;

/** Parses an ISO 8601 timestamp with or without offset; returns null when it is not one. */
export function parseTimestamp(text: string): Date | null {
  const match = ISO_PATTERN.exec(text.trim());
  if (!match) return null;
  const [, y, mo, d, h, mi, s, frac, zone] = match;
  const parts = [y, mo, d, h, mi].map(Number) as [number, number, number, number, number];
  const seconds = Number(s ?? '0');
  const millis = frac ? Number(frac.slice(0, 3).padEnd(3, '0')) : 0;
  const [year, month, day, hour, minute] = parts;
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || seconds > 59) return null;
  // Reject dates that JavaScript would silently roll over (2026-02-31 → March 3rd).
  if (new Date(Date.UTC(year, month - 1, day)).getUTCDate() !== day) return null;
  let result: Date;
  if (zone === undefined) {
    result = new Date(year, month - 1, day, hour, minute, seconds, millis);
  } else {
    let offsetMinutes = 0;
    if (zone !== 'Z') {
      const sign = zone.startsWith('-') ? -1 : 1;
      const digits = zone.slice(1).replace(':', '');
      offsetMinutes = sign * (Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2, 4)));
    }
    result = new Date(Date.UTC(year, month - 1, day, hour, minute, seconds, millis) - offsetMinutes * 60_000);
  }
  return Number.isNaN(result.getTime()) ? null : result;
}

function pad(value: number, width = 2): string {
  return String(value).padStart(width, '0');
}

/** ISO 8601 in the server's local time zone with an explicit offset, to the second. */
export function formatTimestamp(date: Date): string {
  const offset = -date.getTimezoneOffset();
  const sign = offset >= 0 ? '+' : '-';
  const abs = Math.abs(offset);
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}` +
    `${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`
  );
}

/** Truncates to whole seconds, so that what the file shows is exactly what the server enforces. */
export function wholeSeconds(date: Date): Date {
  return new Date(Math.floor(date.getTime() / 1000) * 1000);
}
