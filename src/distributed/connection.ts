/**
 * Where the queue lives: a Redis URL (`redis://[USER:PASSWORD@]HOST[:PORT][/DB]`, or `rediss://` for TLS), the
 * queue's name and its key prefix. The password travels only inside the connection options: everything printed
 * uses `redactUrl`.
 */
import type { ConnectionOptions } from 'bullmq';

export const DEFAULT_QUEUE_NAME = 'aspo-score';
export const DEFAULT_KEY_PREFIX = 'aspo';

export interface QueueLocation {
  /** The URL as given (with its password): only for the connection. */
  url: string;
  /** The URL with any password replaced by `***`: for logs and errors. */
  redacted: string;
  /** The queue's name (default `aspo-score`); coordinator and workers must agree on it. */
  name: string;
  /** Prefix of every Redis key of the queue (default `aspo`). */
  prefix: string;
}

export class QueueUrlError extends Error {}

/** The URL with its password (and a user given without one) hidden; unparsable input is hidden whole. */
export function redactUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return '<unparsable queue URL>';
  }
  if (parsed.password) parsed.password = '***';
  else if (parsed.username) parsed.username = '***'; // `redis://SECRET@host` puts a bare password in the user field
  return parsed.toString();
}

/** Checks `--queue` and names the queue; errors never repeat the password. */
export function queueLocation(url: string, options: { name?: string; prefix?: string } = {}): QueueLocation {
  const redacted = redactUrl(url);
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new QueueUrlError(`--queue must be a URL like redis://HOST:PORT[/DB] or rediss://USER:PASSWORD@HOST:PORT, got ${redacted}`);
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    throw new QueueUrlError(`--queue must start with redis:// or rediss:// (TLS), got ${redacted}`);
  }
  if (!parsed.hostname) throw new QueueUrlError(`--queue names no host: ${redacted}`);
  const db = parsed.pathname.replace(/^\//, '');
  if (db && !/^\d+$/.test(db)) throw new QueueUrlError(`--queue: the database after the host must be a number, got "/${db}" in ${redacted}`);
  const name = options.name ?? DEFAULT_QUEUE_NAME;
  const prefix = options.prefix ?? DEFAULT_KEY_PREFIX;
  for (const [flag, value] of [['--queue-name', name], ['--queue-prefix', prefix]] as const) {
    if (!/^[A-Za-z0-9_.-]{1,100}$/.test(value)) throw new QueueUrlError(`${flag} must be 1–100 letters, digits, '_', '.' or '-', got "${value}"`);
  }
  return { url, redacted, name, prefix };
}

/**
 * BullMQ connection options for a location: ioredis reads host, port, database, user, password and TLS (`rediss:`)
 * from the URL. `maxRetriesPerRequest: null` keeps commands waiting through a reconnection (BullMQ requires it of
 * workers), so a Redis restart pauses the work instead of failing it.
 */
export function connectionOptions(location: QueueLocation): ConnectionOptions {
  return { url: location.url, maxRetriesPerRequest: null };
}
