/**
 * The coordinator's side of the queue: adds jobs under ids that depend only on their work, hears when they finish
 * (BullMQ's event stream, and a periodic check that also catches events missed while this process was down), and
 * notices jobs that vanished from Redis (a restart without persistence, deleted keys), adding them again.
 */
import { Queue, QueueEvents } from 'bullmq';
import { connectionOptions, type QueueLocation } from './connection.js';

export const DEFAULT_ATTEMPTS = 3;

export interface JobQueueOptions {
  /** Tries per job before it fails for good (default 3; BullMQ's stalled-job recovery does not count). */
  attempts?: number;
  /** First retry delay, doubled at each further try (default 1000 ms). */
  backoffMs?: number;
  /** How often outstanding jobs are checked for existence and state (default 2000 ms). */
  checkMs?: number;
  /** Lines for the log (jobs found missing and added again). */
  log?: (line: string) => void;
}

/** How a job ended: its worker's result, or the reason of its last failure after its tries. */
export type JobOutcome<R> = { id: string; result: R } | { id: string; failed: string; attempts: number };

/** A job in the queue and everyone waiting for it (two transactions may ask for the very same model call). */
interface Outstanding { name: string; data: unknown; waiting: Array<(outcome: JobOutcome<unknown>) => void> }

export class JobQueue {
  private readonly outstanding = new Map<string, Outstanding>();
  private timer: NodeJS.Timeout | undefined;
  private checking: Promise<void> | undefined;
  /** Jobs added again because they had vanished from Redis. */
  lost = 0;

  private constructor(readonly location: QueueLocation, private readonly queue: Queue, private readonly events: QueueEvents,
    private readonly options: JobQueueOptions) {}

  /** Connects (waiting through a Redis that is not up yet) and starts listening for finished jobs. */
  static async open(location: QueueLocation, options: JobQueueOptions = {}): Promise<JobQueue> {
    const connection = connectionOptions(location);
    const attempts = options.attempts ?? DEFAULT_ATTEMPTS;
    if (!Number.isInteger(attempts) || attempts < 1) throw new Error(`attempts must be a positive integer, got ${attempts}`);
    const queue = new Queue(location.name, {
      connection, prefix: location.prefix,
      defaultJobOptions: { attempts, backoff: { type: 'exponential', delay: options.backoffMs ?? 1000 } },
    });
    const events = new QueueEvents(location.name, { connection, prefix: location.prefix });
    const jobs = new JobQueue(location, queue, events, options);
    queue.on('error', (error) => options.log?.(`queue ${location.redacted}: ${error.message}`));
    events.on('error', (error) => options.log?.(`queue events ${location.redacted}: ${error.message}`));
    await Promise.all([queue.waitUntilReady(), events.waitUntilReady()]);
    const finished = ({ jobId }: { jobId: string }) => {
      if (jobs.outstanding.has(jobId)) void jobs.settle([jobId]);
    };
    events.on('completed', finished);
    events.on('failed', finished);
    jobs.timer = setInterval(() => {
      jobs.checking ??= jobs.check().finally(() => { jobs.checking = undefined; });
    }, options.checkMs ?? 2000);
    jobs.timer.unref();
    return jobs;
  }

  /**
   * Adds `jobs` (a job whose id is already in the queue, finished or not, is left as it is) and returns one
   * promise per job, settled when it completes or fails for good.
   */
  async submit<R>(jobs: ReadonlyArray<{ id: string; name: string; data: unknown }>): Promise<Array<Promise<JobOutcome<R>>>> {
    const promises = jobs.map((job) => new Promise<JobOutcome<R>>((settle) => {
      const entry = this.outstanding.get(job.id) ?? { name: job.name, data: job.data, waiting: [] };
      entry.waiting.push(settle as Outstanding['waiting'][number]);
      this.outstanding.set(job.id, entry);
    }));
    await this.queue.addBulk(jobs.map((job) => ({ name: job.name, data: job.data, opts: { jobId: job.id } })));
    // Jobs that finished before this process asked (a coordinator restarted after its workers went on) settle now.
    await this.settle(jobs.map((job) => job.id));
    return promises;
  }

  /** Deletes finished jobs whose results are safely stored. */
  async remove(ids: readonly string[]): Promise<void> {
    for (const id of ids) await this.queue.remove(id);
  }

  /** Settles the given outstanding jobs that have finished; adds again those that no longer exist. */
  private async settle(ids: readonly string[]): Promise<void> {
    const missing: string[] = [];
    for (const id of ids) {
      const entry = this.outstanding.get(id);
      if (!entry) continue;
      // The state first: a job read before it finished would carry no result.
      const state = await this.queue.getJobState(id);
      if (state === 'unknown') {
        missing.push(id);
        continue;
      }
      if (state !== 'completed' && state !== 'failed') continue;
      // The result fields only: the job's data (its images) need not travel back.
      const client = await this.queue.backend.client;
      const [returnvalue, failedReason, attemptsMade, atm] = await client.hmget(this.queue.toKey(id), 'returnvalue', 'failedReason', 'attemptsMade', 'atm');
      if (!this.outstanding.has(id)) continue; // settled meanwhile (event and check both saw it)
      if (returnvalue === null && failedReason === null) {
        missing.push(id); // the job vanished between the two reads
        continue;
      }
      let outcome: JobOutcome<unknown>;
      if (state === 'failed') outcome = { id, failed: failedReason ?? 'no reason recorded', attempts: Number(attemptsMade ?? atm ?? 0) };
      else {
        try {
          outcome = { id, result: JSON.parse(returnvalue ?? 'null') };
        } catch {
          outcome = { id, failed: 'the worker\'s result is not JSON', attempts: 1 };
        }
      }
      this.outstanding.delete(id);
      for (const settle of entry.waiting) settle(outcome);
    }
    const lost = missing.filter((id) => this.outstanding.has(id));
    if (lost.length) {
      this.lost += lost.length;
      this.options.log?.(`queue ${this.location.redacted}: ${lost.length} job(s) missing from Redis (restarted without ` +
        'persistence, or its keys deleted): added again');
      await this.queue.addBulk(lost.map((id) => {
        const { name, data } = this.outstanding.get(id)!;
        return { name, data, opts: { jobId: id } };
      }));
    }
  }

  /** The periodic check of every outstanding job. */
  private async check(): Promise<void> {
    try {
      await this.settle([...this.outstanding.keys()]);
    } catch (error) {
      this.options.log?.(`queue ${this.location.redacted}: check failed (${(error as Error).message}); retrying`);
    }
  }

  /** Workers connected to the queue now. */
  async workers(): Promise<number> {
    return this.queue.getWorkersCount();
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.checking;
    await Promise.all([this.events.close(), this.queue.close()]);
  }
}

/** A queue for a one-off command: ready within `timeoutMs`, or an error naming the (redacted) URL and the cause. */
async function reachQueue(location: QueueLocation, timeoutMs = 5000): Promise<Queue> {
  const queue = new Queue(location.name, { connection: connectionOptions(location), prefix: location.prefix, skipMetasUpdate: true });
  let cause = 'no answer';
  queue.on('error', (error) => { cause = error.message; });
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`cannot reach Redis at ${location.redacted} within ${timeoutMs / 1000} s (${cause}): is it running, and are the host, port and password right?`)), timeoutMs);
  });
  try {
    await Promise.race([queue.waitUntilReady(), timeout]);
    return queue;
  } catch (error) {
    void queue.close().catch(() => undefined); // stops the reconnection attempts; nothing to wait for
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/** Counts of the queue's jobs by state, its workers, and the reasons of the latest failures: `aspo queue status`. */
export async function queueStatus(location: QueueLocation): Promise<{
  counts: Record<string, number>; workers: Array<{ name: string; addr: string; age: number }>; failures: Array<{ id: string; reason: string }>;
}> {
  const queue = await reachQueue(location);
  try {
    const counts = await queue.getJobCounts('waiting', 'active', 'delayed', 'completed', 'failed', 'prioritized');
    const workers = (await queue.getWorkers()).map((w) => ({ name: String(w.name ?? ''), addr: String(w.addr ?? ''), age: Number(w.age ?? 0) }));
    const failures = (await queue.getFailed(0, 9)).map((job) => ({ id: job.id ?? '', reason: job.failedReason }));
    return { counts, workers, failures };
  } finally {
    await queue.close();
  }
}

/** Deletes the queue and all its jobs (`aspo queue clear`): for a run abandoned for good. */
export async function clearQueue(location: QueueLocation): Promise<void> {
  const queue = await reachQueue(location);
  try {
    await queue.obliterate({ force: true });
  } finally {
    await queue.close();
  }
}
