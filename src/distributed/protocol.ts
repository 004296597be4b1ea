/**
 * What travels through the queue, and the checks made before anything in it is used. A job names what it asks for
 * (`kind`), the model (id and content digest: a worker with another model refuses the job), and carries its work as
 * plain JSON: texts, and images either inline (base64, up to the size cap) or by reference to a shared folder.
 * Every image carries the sha256 recorded for its bytes at ingest and every text its own sha256, so corruption in
 * the store, in transit or in the shared folder is caught, not scored. Results come back as exact float32 bytes.
 */
import { sha256Hex } from '../util/hash.js';

export const PROTOCOL_VERSION = 1;
/** Default cap on one job's JSON (inline images included): 16 MiB (32 images of 380 KB). */
export const DEFAULT_MAX_JOB_BYTES = 16 * 1024 * 1024;
/** Cap on a sentence's length in a job, in UTF-16 units (far above any sentence; bounds a worker's memory). */
export const MAX_TEXT_LENGTH = 20_000;

/**
 * What a job asks for: one call of a CLIP model's text tower or vision tower, on exactly the batch the single-process
 * stage would make (see similarityBatches): a model's output may depend on the other rows of its batch.
 */
export type JobKind = 'clip-text' | 'clip-image';
export const JOB_KINDS: readonly JobKind[] = ['clip-text', 'clip-image'];

/** The model a job needs: its id in the score tables and the sha256 over its files (null for a Hub id). */
export interface ModelRef { id: string; digest: string | null }

export interface JobEnvelope<Payload> {
  v: typeof PROTOCOL_VERSION;
  kind: JobKind;
  model: ModelRef;
  payload: Payload;
}

/** A batch of texts for the text tower, each with its sha256. */
export interface TextJobPayload { texts: string[]; keys: string[] }

/** One image of an image batch. */
export interface JobImage {
  id: string;
  /** sha256 of the stored bytes (images.sha256): the worker checks the bytes against it. */
  sha256: string;
  /** The bytes, base64; absent when the worker reads them from its shared images folder (`<dir>/<sha256>`). */
  bytes?: string;
}

/** A batch of images for the vision tower. */
export interface ImageJobPayload { images: JobImage[] }

/** Unit embeddings (float32, base64 of the little-endian bytes: exact), per input row in order. */
export interface TextJobResult { embeddings: string[]; truncated: boolean[]; modelSeconds: number }

/** Per input image: its embedding, or (null and) why it could not be decoded. */
export interface ImageJobResult { embeddings: Array<string | null>; errors: Array<string | null>; modelSeconds: number }

/** A payload a worker refuses: the reason names the field. Never worth a retry. */
export class PayloadError extends Error {}

const HEX64 = /^[0-9a-f]{64}$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function fail(field: string, problem: string): never {
  throw new PayloadError(`${field.startsWith('result') ? 'invalid worker result' : 'invalid job payload'}: ${field} ${problem}`);
}

function object(value: unknown, field: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(field, 'must be an object');
  return value as Record<string, unknown>;
}

function string(value: unknown, field: string, max: number): string {
  if (typeof value !== 'string') fail(field, 'must be a string');
  if ((value as string).length > max) fail(field, `is longer than ${max} characters`);
  return value as string;
}

function hex64(value: unknown, field: string): string {
  if (typeof value !== 'string' || !HEX64.test(value)) fail(field, 'must be 64 lower-case hex digits (a sha256)');
  return value as string;
}

function list(value: unknown, field: string, max: number): unknown[] {
  if (!Array.isArray(value)) fail(field, 'must be an array');
  if ((value as unknown[]).length === 0) fail(field, 'is empty');
  if ((value as unknown[]).length > max) fail(field, `has more than ${max} entries`);
  return value as unknown[];
}

/** The size of a job as stored in Redis (its JSON), in bytes. */
export function jobBytes(job: unknown): number {
  return Buffer.byteLength(JSON.stringify(job));
}

/**
 * Checks a job's envelope: version, kind, model reference, size. Throws PayloadError naming the field.
 * The payload itself is checked by its kind's validator.
 */
export function validateEnvelope(data: unknown, maxJobBytes = DEFAULT_MAX_JOB_BYTES): JobEnvelope<unknown> {
  const job = object(data, 'job');
  const size = jobBytes(job);
  if (size > maxJobBytes) fail('job', `is ${size} bytes, over this worker's cap of ${maxJobBytes} (--max-job-mb)`);
  if (job.v !== PROTOCOL_VERSION) fail('v', `must be ${PROTOCOL_VERSION} (this worker's protocol), got ${JSON.stringify(job.v)}: run the same toolkit version on the coordinator and the workers`);
  if (!JOB_KINDS.includes(job.kind as JobKind)) fail('kind', `must be one of ${JOB_KINDS.join(', ')}, got ${JSON.stringify(job.kind)}`);
  const model = object(job.model, 'model');
  const id = string(model.id, 'model.id', 1000);
  const digest = model.digest === null ? null : hex64(model.digest, 'model.digest');
  return { v: PROTOCOL_VERSION, kind: job.kind as JobKind, model: { id, digest }, payload: object(job.payload, 'payload') };
}

/** Checks a text batch: 1 to 1024 strings of bounded length, each matching its sha256. */
export function validateTextPayload(data: unknown): TextJobPayload {
  const payload = object(data, 'payload');
  const texts = list(payload.texts, 'payload.texts', 1024).map((text, i) => string(text, `payload.texts[${i}]`, MAX_TEXT_LENGTH));
  const keys = list(payload.keys, 'payload.keys', 1024).map((key, i) => hex64(key, `payload.keys[${i}]`));
  if (keys.length !== texts.length) fail('payload.keys', 'must give one sha256 per text');
  texts.forEach((text, i) => {
    if (sha256Hex(text) !== keys[i]) fail(`payload.texts[${i}]`, 'does not match its sha256 (corrupted in transit)');
  });
  return { texts, keys };
}

/** Checks an image batch: 1 to 1024 images, each with an id, the sha256 of its bytes, and base64 bytes or none. */
export function validateImagePayload(data: unknown): ImageJobPayload {
  const payload = object(data, 'payload');
  const images = list(payload.images, 'payload.images', 1024).map((value, i): JobImage => {
    const field = `payload.images[${i}]`;
    const image = object(value, field);
    const bytes = image.bytes === undefined ? undefined : string(image.bytes, `${field}.bytes`, Number.MAX_SAFE_INTEGER);
    if (bytes !== undefined && !BASE64.test(bytes)) fail(`${field}.bytes`, 'must be base64');
    return { id: string(image.id, `${field}.id`, 200), sha256: hex64(image.sha256, `${field}.sha256`), ...(bytes === undefined ? {} : { bytes }) };
  });
  if (new Set(images.map((image) => image.id)).size !== images.length) fail('payload.images', 'names an image twice');
  return { images };
}

/** Float32 embeddings to and from base64 (exact). */
export function encodeEmbedding(embedding: Float32Array): string {
  return Buffer.from(embedding.buffer, embedding.byteOffset, embedding.byteLength).toString('base64');
}

export function decodeEmbedding(value: unknown, field: string): Float32Array {
  if (typeof value !== 'string' || !BASE64.test(value)) fail(field, 'must be a base64 embedding');
  const bytes = Buffer.from(value as string, 'base64');
  if (bytes.length === 0 || bytes.length % 4 !== 0) fail(field, `is ${bytes.length} bytes, not a float32 vector`);
  const embedding = new Float32Array(bytes.length / 4);
  Buffer.from(embedding.buffer).set(bytes);
  if (!embedding.every(Number.isFinite)) fail(field, 'holds a value that is not finite');
  return embedding;
}

function seconds(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) fail(field, 'must be a number of seconds');
  return value as number;
}

/** A worker's text result, checked against its job: one finite embedding of one size per text. */
export function readTextResult(result: unknown, job: TextJobPayload): { embeddings: Float32Array[]; truncated: boolean[]; modelSeconds: number } {
  const r = object(result, 'result');
  const embeddings = list(r.embeddings, 'result.embeddings', job.texts.length).map((e, i) => decodeEmbedding(e, `result.embeddings[${i}]`));
  const truncated = list(r.truncated, 'result.truncated', job.texts.length);
  if (embeddings.length !== job.texts.length || truncated.length !== job.texts.length || truncated.some((t) => typeof t !== 'boolean')) {
    fail('result', `must give an embedding and a truncated flag for each of the job's ${job.texts.length} texts`);
  }
  if (embeddings.some((e) => e.length !== embeddings[0]!.length)) fail('result.embeddings', 'differ in size');
  return { embeddings, truncated: truncated as boolean[], modelSeconds: seconds(r.modelSeconds, 'result.modelSeconds') };
}

/** A worker's image result, checked against its job: per image a finite embedding or a reason. */
export function readImageResult(result: unknown, job: ImageJobPayload):
  { embeddings: Array<Float32Array | null>; errors: Array<string | null>; modelSeconds: number } {
  const r = object(result, 'result');
  const n = job.images.length;
  const raw = list(r.embeddings, 'result.embeddings', n);
  const errors = list(r.errors, 'result.errors', n);
  if (raw.length !== n || errors.length !== n) fail('result', `must give an embedding or an error for each of the job's ${n} images`);
  const embeddings = raw.map((e, i) => {
    if (e === null) {
      string(errors[i], `result.errors[${i}]`, 10_000);
      return null;
    }
    return decodeEmbedding(e, `result.embeddings[${i}]`);
  });
  return { embeddings, errors: errors as Array<string | null>, modelSeconds: seconds(r.modelSeconds, 'result.modelSeconds') };
}

/** A job id that depends only on the work (BullMQ ignores an add whose id exists, so re-planning never duplicates). */
export function jobId(kind: JobKind, model: ModelRef, parts: readonly string[]): string {
  return `${kind}-${sha256Hex([model.id, model.digest ?? '', ...parts].join('\n')).slice(0, 32)}`;
}
