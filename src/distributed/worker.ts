/**
 * A queue worker (`aspo worker`): takes jobs from the queue, checks each payload, runs the model it was started
 * with, and returns the results. It never opens the store. A job for another model is handed back untouched and the
 * worker stops (workers with different models are refused, never mixed); a job that fails is retried by BullMQ and,
 * after its tries, ends in the coordinator's `rejects`. A worker killed mid-job loses its lock, and BullMQ's
 * stalled-job check of the other workers gives the job to one of them.
 */
import { DelayedError, UnrecoverableError, Worker, type Job } from 'bullmq';
import type { ClipEncoder } from '../score/clip.js';
import { connectionOptions, type QueueLocation } from './connection.js';
import { runImageJob, runTextJob, WorkerSetupError } from './clip.js';
import { DEFAULT_MAX_JOB_BYTES, PayloadError, validateEnvelope, validateImagePayload, validateTextPayload, type ModelRef } from './protocol.js';

export interface WorkerOptions {
  /** The CLIP model this worker runs (the only scorer it serves). */
  clip: ClipEncoder;
  /** Jobs processed at once (default 1). */
  concurrency?: number;
  /**
   * How long a job's lock lasts without renewal (default 30 s): a killed worker's job goes to another worker after
   * about this long. Renewed every half of it while the job runs, so it bounds no job's length.
   */
  lockMs?: number;
  /** Largest job accepted, in bytes of JSON (default 4 MiB). */
  maxJobBytes?: number;
  /** Where jobs that carry images by reference find them (the coordinator's --images-dir, mounted here). */
  imagesDir?: string;
  /** One line per job, and the reason the worker stops. */
  log?: (line: string) => void;
}

export interface RunningWorker {
  /** Settles when the worker has stopped: 0 after close(), 3 after refusing a job it cannot serve. */
  stopped: Promise<number>;
  /** Finishes the jobs in hand, then stops. */
  close(): Promise<void>;
  /** Jobs completed by this worker. */
  completed(): number;
}

/** Starts a worker on `location`; it runs until close(), or until it meets a job for a model it does not have. */
export async function startWorker(location: QueueLocation, options: WorkerOptions): Promise<RunningWorker> {
  const log = options.log ?? (() => undefined);
  const model: ModelRef = { id: options.clip.modelId, digest: options.clip.digest };
  const maxJobBytes = options.maxJobBytes ?? DEFAULT_MAX_JOB_BYTES;
  const lockMs = options.lockMs ?? 30_000;
  let completed = 0;
  let exitCode = 0;
  let stop: (code: number) => void = () => undefined;
  const stopped = new Promise<number>((resolve) => { stop = resolve; });

  const refuse = async (job: Job, token: string | undefined, reason: string): Promise<never> => {
    log(`worker: refusing job ${job.id}: ${reason}; handing it back and stopping`);
    exitCode = 3;
    await job.moveToDelayed(Date.now() + 1000, token);
    setImmediate(() => void worker.close().then(() => stop(exitCode)));
    throw new DelayedError();
  };

  const worker = new Worker(location.name, async (job: Job, token?: string) => {
    const started = performance.now();
    let run: () => Promise<unknown>;
    let items: string;
    try {
      const envelope = validateEnvelope(job.data, maxJobBytes);
      if (envelope.model.id !== model.id || envelope.model.digest !== model.digest) {
        return await refuse(job, token, `it needs model ${envelope.model.id} (sha256 ${envelope.model.digest ?? 'none: a Hub id'}), ` +
          `this worker runs ${model.id} (sha256 ${model.digest ?? 'none: a Hub id'}): start it with the coordinator's model`);
      }
      if (envelope.kind === 'clip-text') {
        const payload = validateTextPayload(envelope.payload);
        run = () => runTextJob(options.clip, payload);
        items = `${payload.texts.length} texts`;
      } else {
        const payload = validateImagePayload(envelope.payload);
        run = () => runImageJob(options.clip, payload, options.imagesDir);
        items = `${payload.images.length} images`;
      }
    } catch (error) {
      if (error instanceof PayloadError) throw new UnrecoverableError(error.message); // the same payload never becomes valid
      throw error;
    }
    log(`worker: job ${job.id} started (attempt ${job.attemptsMade + 1})`);
    try {
      const result = await run();
      completed++;
      log(`worker: job ${job.id} done: ${items} in ${((performance.now() - started) / 1000).toFixed(2)} s`);
      return result;
    } catch (error) {
      if (error instanceof WorkerSetupError) return await refuse(job, token, error.message);
      log(`worker: job ${job.id} failed (attempt ${job.attemptsMade + 1}): ${(error as Error).message}`);
      throw error;
    }
  }, {
    connection: connectionOptions(location), prefix: location.prefix, concurrency: options.concurrency ?? 1,
    lockDuration: lockMs, stalledInterval: Math.max(500, Math.round(lockMs / 2)), maxStalledCount: 3,
    autorun: false,
  });
  worker.on('error', (error) => log(`worker: ${location.redacted}: ${error.message}`));
  void worker.run();
  await worker.waitUntilReady();
  log(`worker: serving ${location.name} on ${location.redacted} with ${model.id}, ${options.concurrency ?? 1} job(s) at a time`);
  return {
    stopped,
    close: async () => {
      await worker.close();
      stop(exitCode);
    },
    completed: () => completed,
  };
}
