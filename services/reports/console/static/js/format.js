// Numbers and dates as Coder's Spend pages show them.

const USD = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const GROUPED = new Intl.NumberFormat("en-US");
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** Micro-dollars as dollars: 2 decimals with separators; a non-zero amount under a cent with 4. */
export function dollars(micros) {
  if (micros === null || micros === undefined) return "—";
  const value = Number(micros) / 1e6;
  if (micros !== 0 && Math.abs(Number(micros)) < 10000) return `$${value.toFixed(4)}`;
  return `$${USD.format(value)}`;
}

/** Tokens: 1.5M (2M when whole) from a million, grouped from a thousand, else as is. */
export function tokens(n) {
  const value = Number(n);
  if (value >= 1e6) {
    const m = value / 1e6;
    const text = Number.isInteger(m) ? String(m) : m.toFixed(1).replace(/\.0$/, "");
    return `${text}M`;
  }
  if (value >= 1000) return GROUPED.format(value);
  return String(value);
}

/** A plain count with thousands separators. */
export function count(n) {
  return GROUPED.format(Number(n));
}

/** Dollars (a decimal string from an input) to micro-dollars, rounded; NaN when not a number. */
export function toMicros(text) {
  const trimmed = String(text).trim();
  if (trimmed === "") return null;
  if (!/^-?\d*(\.\d*)?$/.test(trimmed)) return Number.NaN;
  return Math.round(Number(trimmed) * 1e6);
}

/** Micro-dollars as the plain decimal an input shows (no separators). */
export function microsToInput(micros) {
  if (micros === null || micros === undefined) return "";
  return String(Number(micros) / 1e6);
}

export function pad(n) {
  return String(n).padStart(2, "0");
}

/** A Date as YYYY-MM-DD (UTC). */
export function isoDay(date) {
  return `${date.getUTCFullYear()}-${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())}`;
}

/** YYYY-MM-DD to a Date at UTC midnight. */
export function parseDay(text) {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text || "");
  if (!m) return null;
  const date = new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3])));
  return Number.isNaN(date.getTime()) ? null : date;
}

export function addDays(date, days) {
  return new Date(date.getTime() + days * 86400000);
}

export function todayUtc() {
  return parseDay(isoDay(new Date()));
}

/** "Nov 2 – Nov 30, 2026" (or across years "Dec 20, 2025 – Jan 3, 2026"). */
export function dayRange(start, endInclusive) {
  const a = `${MONTHS[start.getUTCMonth()]} ${start.getUTCDate()}`;
  const b = `${MONTHS[endInclusive.getUTCMonth()]} ${endInclusive.getUTCDate()}, ${endInclusive.getUTCFullYear()}`;
  if (start.getUTCFullYear() !== endInclusive.getUTCFullYear()) return `${a}, ${start.getUTCFullYear()} – ${b}`;
  return `${a} – ${b}`;
}

/** "Nov 2, 2026, 14:05 UTC". */
export function dateTime(value) {
  if (!value) return "—";
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  return `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}, ${d.getUTCFullYear()}, ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())} UTC`;
}

/** "Nov 2, 2026". */
export function day(value) {
  const d = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  return `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}, ${d.getUTCFullYear()}`;
}

/** Milliseconds as "3h 20m" / "45m" / "30s". */
export function duration(ms) {
  const seconds = Math.round(Number(ms) / 1000);
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  const hours = Math.floor(minutes / 60);
  if (hours === 0) return `${minutes}m`;
  return `${GROUPED.format(hours)}h ${minutes % 60}m`;
}

/** Seconds as "5 minutes" / "3 hours" / "2 days". */
export function age(seconds) {
  const s = Math.max(0, Math.round(Number(seconds)));
  const unit = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  if (s < 60) return unit(s, "second");
  if (s < 3600) return unit(Math.floor(s / 60), "minute");
  if (s < 86400) return unit(Math.floor(s / 3600), "hour");
  return unit(Math.floor(s / 86400), "day");
}

/** "3 minutes ago" for a timestamp. */
export function ago(value) {
  if (!value) return "never";
  const seconds = (Date.now() - new Date(value).getTime()) / 1000;
  return `${age(seconds)} ago`;
}

/** Usage-limit bar: the share used (capped at 100) and its colour, by Coder's thresholds. */
export function limitState(spent, limit) {
  const ratio = limit > 0 ? (Number(spent) / Number(limit)) * 100 : 0;
  const reached = Number(spent) >= Number(limit);
  let colour = "green";
  if (ratio > 90 || reached) colour = "red";
  else if (ratio >= 75) colour = "orange";
  return { percent: Math.min(100, ratio), colour, reached };
}

export const PERIOD_TITLES = { day: "Daily", week: "Weekly", month: "Monthly" };
