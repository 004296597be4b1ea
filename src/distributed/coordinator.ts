/**
 * The coordinator (`aspo score --clip MODEL --queue URL`): the process that owns the store runs the score stage as
 * it always does, with the model calls done by queue workers. What is pending, the cache, the keys and the upserts
 * are the stage's own, and so are its model calls (the same --batch-size and --commit-sentences make the same
 * batches), so the rows are those of a single-machine run, bit for bit.
 */
import type { Store } from '../store/store.js';
import { scoreSimilarity, type ScoreOptions, type ScoreSummary } from '../score/stage.js';
import type { QueueLocation } from './connection.js';
import { queueSimilarities, type QueueSimilarityOptions } from './clip.js';
import type { ModelRef } from './protocol.js';
import { JobQueue, type JobQueueOptions } from './queue.js';

export interface QueueScoreOptions extends Omit<ScoreOptions, 'onModelCall'>, Omit<QueueSimilarityOptions, 'batchSize'>, JobQueueOptions {}

export interface QueueScoreSummary extends ScoreSummary {
  /** Jobs settled by this run, of them failed for good, and jobs added again after vanishing from Redis. */
  jobs: number;
  failedJobs: number;
  lostJobs: number;
}

/** Scores the store with the CLIP model `model` (id and digest) through the queue at `location`. */
export async function scoreThroughQueue(store: Store, location: QueueLocation, model: ModelRef,
  options: QueueScoreOptions = {}): Promise<QueueScoreSummary> {
  const queue = await JobQueue.open(location, options);
  let jobs = 0;
  let failedJobs = 0;
  try {
    const executor = queueSimilarities(queue, model, {
      ...options,
      onJob: (job) => {
        jobs++;
        if (job.failed !== undefined) failedJobs++;
        options.onJob?.(job);
      },
    });
    const summary = await scoreSimilarity(store, executor, options);
    return { ...summary, jobs, failedJobs, lostJobs: queue.lost };
  } finally {
    await queue.close();
  }
}
