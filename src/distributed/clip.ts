/**
 * CLIP similarity through the queue. The coordinator's executor (`queueSimilarities`) sends each model call of a
 * transaction (the text and image batches of similarityBatches, exactly those of a single-process run) as a job, and
 * takes the cosines of the embeddings that come back with the stage's own combineSimilarities. A worker runs a job
 * with the encoder calls the stage makes (`runTextJob`, `runImageJob`). So the rows are those of a single-process
 * run bit for bit, and scoreSimilarity around it is unchanged.
 */
import { existsSync, mkdirSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { sha256Hex } from '../util/hash.js';
import type { ClipEncoder } from '../score/clip.js';
import {
  combineSimilarities, emptyComputed, similarityBatches, DEFAULT_SCORE_BATCH_SIZE, type Computed, type SimilarityExecutor,
} from '../score/stage.js';
import {
  DEFAULT_MAX_JOB_BYTES, encodeEmbedding, jobBytes, jobId, readImageResult, readTextResult, type ImageJobPayload, type ImageJobResult,
  type JobEnvelope, type JobImage, type ModelRef, type TextJobPayload, type TextJobResult,
} from './protocol.js';
import type { JobOutcome, JobQueue } from './queue.js';

export const DEFAULT_AHEAD = 2;

export interface QueueSimilarityOptions {
  /** Images or texts per job, as per model call in a single-process run (default 32). */
  batchSize?: number;
  /** Cap on a job's JSON, inline images included (default 16 MiB). */
  maxJobBytes?: number;
  /**
   * Transactions whose jobs are queued while an earlier one is written (default 2): enough that workers never wait
   * for the coordinator. Each holds --commit-sentences sentences' texts and images in Redis.
   */
  ahead?: number;
  /** A folder every worker mounts: images are written there once (`<sha256>`) and jobs carry only the reference. */
  imagesDir?: string;
  /** Called as each job settles. */
  onJob?: (job: { id: string; kind: 'text' | 'image'; items: number; failed?: string }) => void;
}

/** The executor that sends each transaction's model calls to queue workers running the model `model`. */
export function queueSimilarities(queue: JobQueue, model: ModelRef, options: QueueSimilarityOptions = {}): SimilarityExecutor {
  const batchSize = options.batchSize ?? DEFAULT_SCORE_BATCH_SIZE;
  const maxJobBytes = options.maxJobBytes ?? DEFAULT_MAX_JOB_BYTES;
  if (options.imagesDir) mkdirSync(options.imagesDir, { recursive: true });
  return {
    model: model.id,
    device: `queue ${queue.location.redacted}`,
    lookahead: options.ahead ?? DEFAULT_AHEAD,
    async start(work, images) {
      const computed = emptyComputed();
      const batches = similarityBatches(work, batchSize);
      const stored = await images(batches.images.flat());
      const textJobs = batches.texts.map((keys) => envelope<TextJobPayload>('clip-text', model, {
        texts: keys.map((key) => work.texts.get(key)!), keys,
      }));
      const imageJobs: Array<JobEnvelope<ImageJobPayload>> = [];
      for (const ids of batches.images) {
        const batch: JobImage[] = [];
        for (const id of ids) {
          const image = stored.get(id);
          if (!image) computed.imageErrors.set(id, 'image missing from the images table'); // as in one process
          else if (options.imagesDir) {
            await shareImage(options.imagesDir, image);
            batch.push({ id, sha256: image.sha256 });
          } else batch.push({ id, sha256: image.sha256, bytes: Buffer.from(image.bytes).toString('base64') });
        }
        if (batch.length) imageJobs.push(envelope<ImageJobPayload>('clip-image', model, { images: batch }));
      }
      for (const job of [...imageJobs, ...textJobs]) {
        const size = jobBytes(job);
        if (size > maxJobBytes) {
          throw new Error(`a job of ${job.kind === 'clip-image' ? `images ${(job.payload as ImageJobPayload).images.map((i) => i.id).join(', ')}`
            : 'texts'} is ${size} bytes, over the ${maxJobBytes}-byte cap. Raise --max-job-mb (on the workers too), lower ` +
            '--batch-size, or pass --images-dir DIR, a folder every worker mounts, so that images travel by reference');
        }
      }
      const into: Collected = { computed, texts: new Map(), images: new Map(), textFailures: new Map() };
      const ids: string[] = [];
      // The transaction's first and last image are part of every id: each job belongs to one transaction, which a
      // restarted coordinator rebuilds the same, so its jobs get the same ids.
      const imageIds = batches.images.flat();
      const scope = `${imageIds[0]}..${imageIds[imageIds.length - 1]}`;
      /** Runs jobs; one that fails for good is split into one job per text or image, so that one bad input costs only itself. */
      const run = async (jobs: Array<JobEnvelope<unknown>>): Promise<void> => {
        const jobIds = jobs.map((job) => jobId(job.kind, model, [scope, ...jobParts(job)]));
        ids.push(...jobIds);
        const outcomes = await queue.submit(jobs.map((data, j) => ({ id: jobIds[j]!, name: data.kind, data })));
        await Promise.all(outcomes.map(async (pending, j) => {
          const outcome = await pending;
          const job = jobs[j]!;
          const singles = 'failed' in outcome ? split(job) : [];
          if (singles.length > 1) return run(singles);
          const failed = collect(job, outcome, into);
          options.onJob?.({ id: jobIds[j]!, kind: job.kind === 'clip-text' ? 'text' : 'image', items: jobParts(job).length, failed });
        }));
      };
      const done = run([...textJobs, ...imageJobs]).then(() => {
        // A failed text job leaves its texts without embeddings: the images that needed them are rejected.
        for (const { imageId, textKey } of work.misses.values()) {
          const failure = into.textFailures.get(textKey);
          if (failure !== undefined && into.images.has(imageId)) {
            computed.rejected.set(imageId, failure);
            into.images.delete(imageId);
          }
        }
        combineSimilarities(work, into.texts, into.images, computed);
        return computed;
      });
      return { done, release: () => queue.remove([...new Set(ids)]) };
    },
  };
}

function envelope<P>(kind: JobEnvelope<P>['kind'], model: ModelRef, payload: P): JobEnvelope<P> {
  return { v: 1, kind, model, payload };
}

/** A job's texts or images, one job each. */
function split(job: JobEnvelope<unknown>): Array<JobEnvelope<unknown>> {
  if (job.kind === 'clip-text') {
    const { texts, keys } = job.payload as TextJobPayload;
    return texts.map((text, i) => ({ ...job, payload: { texts: [text], keys: [keys[i]!] } }));
  }
  return (job.payload as ImageJobPayload).images.map((image) => ({ ...job, payload: { images: [image] } }));
}

/** What a job's id depends on: its texts' sha256s, or its images' ids and sha256s. */
function jobParts(job: JobEnvelope<unknown>): string[] {
  return job.kind === 'clip-text' ? (job.payload as TextJobPayload).keys
    : (job.payload as ImageJobPayload).images.map((image) => `${image.id}:${image.sha256}`);
}

/** What a transaction's jobs have brought back so far. */
interface Collected {
  computed: Computed;
  texts: Map<string, { embedding: Float32Array; truncated: boolean }>;
  images: Map<string, Float32Array>;
  /** Texts whose job failed for good, with the reason. */
  textFailures: Map<string, string>;
}

/**
 * One job's outcome into the transaction: embeddings, image errors, or (a failed job, an invalid result) the
 * reason, which rejects the job's images, or the images that needed the job's texts. Returns that reason.
 */
function collect(job: JobEnvelope<unknown>, outcome: JobOutcome<unknown>, into: Collected): string | undefined {
  const { computed, texts, images } = into;
  try {
    if ('failed' in outcome) throw new Error(`job ${outcome.id} failed after ${outcome.attempts} attempt(s): ${outcome.failed}`);
    if (job.kind === 'clip-text') {
      const payload = job.payload as TextJobPayload;
      const result = readTextResult(outcome.result, payload);
      payload.keys.forEach((key, i) => texts.set(key, { embedding: result.embeddings[i]!, truncated: result.truncated[i]! }));
      computed.texts += payload.keys.length;
      computed.truncated += result.truncated.filter(Boolean).length;
      computed.modelSeconds += result.modelSeconds;
    } else {
      const payload = job.payload as ImageJobPayload;
      const result = readImageResult(outcome.result, payload);
      payload.images.forEach((image, i) => {
        const embedding = result.embeddings[i];
        if (embedding) images.set(image.id, embedding);
        else computed.imageErrors.set(image.id, result.errors[i]!);
      });
      computed.images += result.embeddings.filter(Boolean).length;
      computed.modelSeconds += result.modelSeconds;
    }
    return undefined;
  } catch (error) {
    const reason = (error as Error).message;
    if (job.kind === 'clip-text') {
      for (const key of (job.payload as TextJobPayload).keys) into.textFailures.set(key, reason);
    } else {
      for (const image of (job.payload as ImageJobPayload).images) computed.rejected.set(image.id, reason);
    }
    return reason;
  }
}

/** Writes an image into the shared folder under its sha256, once, whole (written to a temporary name, then renamed). */
async function shareImage(dir: string, image: { bytes: Uint8Array; sha256: string }): Promise<void> {
  const file = path.join(dir, image.sha256);
  if (existsSync(file)) return;
  const temporary = `${file}.${process.pid}.tmp`;
  await fs.writeFile(temporary, image.bytes);
  await fs.rename(temporary, file);
}

/** A worker that cannot serve a job another worker may (wrong model, no images folder): it hands the job back and stops. */
export class WorkerSetupError extends Error {}

/** A job's image bytes: inline, or the shared folder's file; each checked against the sha256 the job names. */
async function jobImageBytes(image: JobImage, imagesDir: string | undefined): Promise<Uint8Array> {
  let bytes: Uint8Array;
  if (image.bytes !== undefined) bytes = Buffer.from(image.bytes, 'base64');
  else if (!imagesDir) throw new WorkerSetupError('the job carries its images by reference: start this worker with --images-dir DIR (the folder the coordinator writes them to)');
  else {
    const file = path.join(imagesDir, image.sha256);
    try {
      bytes = await fs.readFile(file);
    } catch (error) {
      throw new Error(`image ${image.id}: cannot read ${file} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}): is --images-dir the coordinator's folder?`);
    }
  }
  if (sha256Hex(bytes) !== image.sha256) {
    throw new Error(`image ${image.id}: its bytes do not match the sha256 recorded at ingest (${image.sha256.slice(0, 12)}…): ` +
      'the image is corrupt in the store or the shared folder; re-ingest it');
  }
  return bytes;
}

/** A text batch, as the stage runs it: tokenize (fitted to the context), then one text-tower call. */
export async function runTextJob(encoder: ClipEncoder, payload: TextJobPayload): Promise<TextJobResult> {
  const batch = encoder.tokenize(payload.texts);
  const t0 = performance.now();
  const embeddings = await encoder.embedTexts(batch);
  return { embeddings: embeddings.map(encodeEmbedding), truncated: batch.truncated, modelSeconds: (performance.now() - t0) / 1000 };
}

/** An image batch, as the stage runs it: decode and preprocess together, then one vision-tower call on those that decode. */
export async function runImageJob(encoder: ClipEncoder, payload: ImageJobPayload, imagesDir?: string): Promise<ImageJobResult> {
  const bytes = await Promise.all(payload.images.map((image) => jobImageBytes(image, imagesDir)));
  const { pixelValues, decoded, failures } = await encoder.preprocessImages(bytes);
  const embeddings: Array<string | null> = payload.images.map(() => null);
  const errors: Array<string | null> = payload.images.map(() => null);
  for (const failure of failures) errors[failure.index] = `image could not be decoded: ${failure.reason}`;
  const t0 = performance.now();
  if (pixelValues) (await encoder.embedImages(pixelValues)).forEach((embedding, i) => { embeddings[decoded[i]!] = encodeEmbedding(embedding); });
  return { embeddings, errors, modelSeconds: (performance.now() - t0) / 1000 };
}
