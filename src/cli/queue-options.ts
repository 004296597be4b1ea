/** The queue flags of `aspo score --queue`, `aspo worker` and `aspo queue` (loaded only by those commands). */
import { queueLocation, QueueUrlError, DEFAULT_KEY_PREFIX, DEFAULT_QUEUE_NAME, type QueueLocation } from '../distributed/connection.js';
import { DEFAULT_MAX_JOB_BYTES } from '../distributed/protocol.js';
import { numberOption, UsageError, type Options } from './command.js';

export const QUEUE_OPTIONS = {
  queue: { type: 'string' },
  'queue-name': { type: 'string' },
  'queue-prefix': { type: 'string' },
  'max-job-mb': { type: 'string' },
  'images-dir': { type: 'string' },
} as const satisfies Options;

export const QUEUE_USAGE =
  `  --queue redis://[USER:PASSWORD@]HOST:PORT[/DB] (rediss:// for TLS); --queue-name (default ${DEFAULT_QUEUE_NAME}) and\n` +
  `  --queue-prefix (default ${DEFAULT_KEY_PREFIX}) must match between the coordinator and its workers. --max-job-mb: cap on\n` +
  `  one job (default ${DEFAULT_MAX_JOB_BYTES / 2 ** 20}); --images-dir DIR: a folder every worker mounts, so images travel by reference.`;

/** The queue's location from the flags; a usage error (without the password) for a bad URL or name. */
export function queueFromFlags(values: { queue?: string; 'queue-name'?: string; 'queue-prefix'?: string }): QueueLocation {
  if (!values.queue) throw new UsageError('--queue redis://HOST:PORT is required');
  try {
    return queueLocation(values.queue, { name: values['queue-name'], prefix: values['queue-prefix'] });
  } catch (error) {
    if (error instanceof QueueUrlError) throw new UsageError(error.message);
    throw error;
  }
}

/** `--max-job-mb` in bytes. */
export function maxJobBytes(value: string | undefined): number {
  const mb = numberOption(value, 'max-job-mb', DEFAULT_MAX_JOB_BYTES / 2 ** 20);
  if (!(mb > 0) || mb > 512) throw new UsageError('--max-job-mb must be above 0 and at most 512 (Redis\'s largest value)');
  return Math.round(mb * 2 ** 20);
}

/** `--<name>` as a positive integer. */
export function positiveInteger(value: string | undefined, name: string, fallback: number): number {
  const n = numberOption(value, name, fallback);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`--${name} must be a positive integer, got "${value}"`);
  return n;
}
