/**
 * The ingest stage: dataset files → `pairs`, `images`, `labels` and `rejects` in the store.
 *
 * Rows stream in batches and are committed every `commitRows` rows, keyed by content hashes, so re-running an ingest
 * (after a kill, or on the same files) adds exactly the rows that are not there yet.
 */
import { createHash } from 'node:crypto';
import { stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pLimit from 'p-limit';
import type { Store } from '../store/store.js';
import { sha256Hex } from '../util/hash.js';
import { dropStage, firstFastLines, insertFastPairs, looksSimple, readableByDuckDb, routedLines, stageLines } from './fast.js';
import { decodeImage, ImageError, ImageRoot, loadImageBytes, type StoredImage } from './images.js';
import { checkFileHead, detectFileFormat, lineRow, readRows, type FileFormat, type RowBatch, type SourceRow } from './readers.js';
import { readRow, RowError, type ImageRef, type RawPair, type RowLayout } from './rows.js';

export interface IngestOptions {
  /** File format; detected from the name or first bytes by default. */
  format?: FileFormat | 'auto';
  /** Row layout; detected per row by default. */
  layout?: RowLayout | 'auto';
  /** Folder that relative image paths resolve against (default: each dataset file's folder). */
  images?: string;
  /** Take the image from this field instead of image / images / image_path. */
  imageField?: string;
  maxSide?: number;
  maxPixels?: number;
  /** What to do with a pair whose image file does not exist: reject the row (default) or keep it text-only. */
  missingImages?: 'reject' | 'drop';
  batchSize?: number;
  /** Rows per transaction. Larger is faster (DuckDB writes big transactions straight to the file, small ones through
   *  its log); a killed run redoes at most this many rows. */
  commitRows?: number;
  /** DuckDB's memory limit while ingesting (default 512MB; its own default, 80% of RAM, lets a large load grow its
   *  buffer pool far beyond what the load needs). Restored afterwards. */
  duckdbMemory?: string;
  /** Images read and decoded at once. */
  concurrency?: number;
  /** Let DuckDB read the simple rows of JSON Lines files itself (default true); false sends every row through the
   *  JavaScript path. The stored result is the same either way (see fast.ts). */
  fastPath?: boolean;
  onProgress?: (event: ProgressEvent) => void;
}

export interface ProgressEvent {
  /** The file being read, with the bytes of it read so far and its size. */
  file: string;
  /** Rows read so far by this call, over all its files. */
  rows: number;
  bytesRead: number;
  totalBytes: number;
}

export interface IngestSummary {
  files: number;
  /** Rows read (blank lines are not rows). */
  read: number;
  /** Pairs added to the store by this run. */
  ingested: number;
  /** Pairs already in the store (or earlier in this run). */
  duplicates: number;
  /** Rows refused; each has a row in `rejects`. */
  rejected: number;
  /** Rated rows whose best and worst completions tie (no pair). */
  ties: number;
  /** Pairs kept without their image because the file was missing (--missing-images drop). */
  imagesDropped: number;
  /** Distinct images added to the store. */
  newImages: number;
  /** Of the rows read, those DuckDB read and checked itself (the fast path for simple JSON Lines rows). */
  fastRows: number;
  seconds: number;
}

export interface Reject {
  source: string;
  sourceRow: number;
  field: string | null;
  reason: string;
  raw?: string;
}

const RAW_LIMIT = 4096;
export const DEFAULT_BATCH_SIZE = 5000;
export const DEFAULT_COMMIT_ROWS = 100_000;
const MAX_QUEUED_BATCHES = 2;
const IMAGE_CHUNK = 128;
export const DEFAULT_DUCKDB_MEMORY = '512MB';

/** A pair ready to store: its content hash and its resolved image. */
interface ReadyPair extends RawPair {
  pairId: string;
  sourceRow: number;
  imageId: string | null;
}

/**
 * The first 32 hex digits of sha256 over the UTF-8 of `${part.length}:${part}` for each of prompt, chosen, rejected
 * and image in turn (length in UTF-16 code units, as JavaScript counts), where the image is its sha256, "" for a
 * text-only pair, or "missing:<path>" for a pair kept without its missing image file.
 */
export function pairId(prompt: string, chosen: string, rejected: string, image: string | null): string {
  const hash = createHash('sha256');
  for (const part of [prompt, chosen, rejected, image ?? '']) hash.update(`${part.length}:`).update(part);
  // From the first 16 bytes, so the id is a flat 32-character string (a slice of the hex digest would keep all 64 alive).
  return hash.digest().toString('hex', 0, 16);
}

function rawText(row: SourceRow): string {
  const text = row.raw ?? JSON.stringify(row.value, (_k, v) => (v instanceof Uint8Array ? `<${v.length} bytes>` : v));
  return text.length > RAW_LIMIT ? `${text.slice(0, RAW_LIMIT)}…` : text;
}

export async function ingest(store: Store, files: readonly string[], options: IngestOptions = {}): Promise<IngestSummary> {
  const started = performance.now();
  await checkInputFiles(files, options);
  await store.run('CREATE TEMP TABLE IF NOT EXISTS stage_rejects AS SELECT * FROM rejects LIMIT 0');
  const run: Run = {
    store, options,
    summary: { files: files.length, read: 0, ingested: 0, duplicates: 0, rejected: 0, ties: 0, imagesDropped: 0, newImages: 0, fastRows: 0, seconds: 0 },
    knownPairs: new Set(),
    knownPairsStale: true,
    knownImages: await storedIds(store, 'SELECT image_id FROM images'),
    decoding: new Map(),
    limit: pLimit(options.concurrency ?? Math.max(2, os.availableParallelism() * 2)),
    imageRoots: new Map(),
    uncommittedRows: 0,
    rowsRead: 0,
  };
  const memoryLimit = await store.scalar<string>("SELECT current_setting('memory_limit')");
  await store.run(`SET memory_limit = '${(options.duckdbMemory ?? DEFAULT_DUCKDB_MEMORY).replace(/'/g, '')}'`);
  await store.run('BEGIN TRANSACTION');
  try {
    for (const file of files) await ingestFile(run, file);
    await store.run('COMMIT');
  } catch (error) {
    await store.run('ROLLBACK');
    throw error;
  } finally {
    await store.run(`SET memory_limit = '${memoryLimit}'`);
  }
  run.summary.seconds = (performance.now() - started) / 1000;
  return run.summary;
}

/** The state one ingest call carries across files and batches. */
interface Run {
  store: Store;
  options: IngestOptions;
  summary: IngestSummary;
  /** Ids already stored (or written by this run): deduplicated here rather than by a DuckDB primary key, whose index
   *  upkeep would cost four times the whole load. */
  knownPairs: Set<string>;
  /** knownPairs is to be (re)loaded before its next use: at the start, and after the fast path has written pairs
   *  (loaded only when the JavaScript path needs it, so a fast-path-only ingest never holds the ids in memory). */
  knownPairsStale: boolean;
  /** While the JavaScript path handles the lines the fast path left it, the file they come from. */
  fastSource?: string;
  knownImages: Set<string>;
  /** Images of this run not yet written, by sha256: each distinct image is decoded once. */
  decoding: Map<string, Promise<StoredImage | ImageError>>;
  limit: ReturnType<typeof pLimit>;
  /** The image roots of this run, each resolving its real paths once. */
  imageRoots: Map<string, ImageRoot>;
  uncommittedRows: number;
  /** Rows read so far, over all files (for progress). */
  rowsRead: number;
}

async function storedIds(store: Store, sql: string): Promise<Set<string>> {
  return new Set(((await store.connection.runAndReadAll(sql)).getColumnsJS()[0] ?? []) as string[]);
}

/** What became of one pair's image: stored or to be stored (sha), failed, or none. */
type ImageOutcome = { sha: string; stored?: StoredImage } | ImageError | null;

/**
 * Checks that every dataset file exists, is a file and has a format this reader knows, before anything is written
 * (so a mistyped name leaves neither a new store nor half an ingest behind). Returns each file's size and format.
 */
export async function checkInputFiles(files: readonly string[], options: Pick<IngestOptions, 'format'> = {}):
  Promise<{ file: string; source: string; size: number; format: FileFormat }[]> {
  const checked = [];
  for (const file of files) {
    const source = path.resolve(file);
    const info = await stat(source).catch(() => {
      throw new Error(`${file}: no such file`);
    });
    if (!info.isFile()) throw new Error(`${file}: not a file; give the dataset files themselves (e.g. ${path.join(file, '*.jsonl')})`);
    const format = !options.format || options.format === 'auto' ? await detectFileFormat(source) : options.format;
    await checkFileHead(source, format);
    checked.push({ file, source, size: info.size, format });
  }
  return checked;
}

async function ingestFile(run: Run, file: string): Promise<void> {
  const { options } = run;
  const [{ source, size: totalBytes, format }] = await checkInputFiles([file], options) as [Awaited<ReturnType<typeof checkInputFiles>>[0]];
  const root = path.resolve(options.images ?? path.dirname(source));
  const fastLayout = !options.layout || options.layout === 'auto' || options.layout === 'trl' || options.layout === 'rlaif-v';
  if (format === 'jsonl' && options.fastPath !== false && fastLayout && !options.imageField && readableByDuckDb(source) &&
      await looksSimple(source) && await ingestFast(run, file, source, root, totalBytes)) return;
  await ingestBatches(run, file, source, format, root, totalBytes, () => readRows(source, format, options.batchSize ?? DEFAULT_BATCH_SIZE));
}

/**
 * A JSON Lines file through the fast path: DuckDB stages every line, JavaScript handles the lines it routed back
 * (first, so that its pairs are stored before the fast ones are checked against the store), then the fast pairs are
 * inserted. Returns false, having written nothing, when DuckDB cannot read the file line by line.
 */
async function ingestFast(run: Run, file: string, source: string, root: string, totalBytes: number): Promise<boolean> {
  const { store, summary, options } = run;
  // Staging runs outside the ingest transaction: a file DuckDB refuses must not abort it.
  await store.run('COMMIT');
  run.uncommittedRows = 0;
  let staged = true;
  try {
    await stageLines(store, source);
  } catch {
    staged = false;
  }
  await store.run('BEGIN TRANSACTION');
  if (!staged) return false;
  const batchSize = options.batchSize ?? DEFAULT_BATCH_SIZE;
  try {
    run.fastSource = source;
    await ingestBatches(run, file, source, 'jsonl', root, totalBytes, (settled) => routedBatches(run.store, batchSize, settled));
    run.fastSource = undefined;
    const { taken, inserted } = await insertFastPairs(store, source);
    run.knownPairsStale = true;
    summary.read += taken;
    summary.fastRows += taken;
    summary.ingested += inserted;
    summary.duplicates += taken - inserted;
    run.rowsRead += taken;
    run.uncommittedRows += taken;
    if (run.uncommittedRows >= (options.commitRows ?? DEFAULT_COMMIT_ROWS)) {
      await store.run('COMMIT');
      await store.run('BEGIN TRANSACTION');
      run.uncommittedRows = 0;
    }
    options.onProgress?.({ file, rows: run.rowsRead, bytesRead: totalBytes, totalBytes });
  } finally {
    run.fastSource = undefined;
    await dropStage(store).catch(() => {});
  }
  return true;
}

/** The lines the fast path routed to JavaScript, as rows, fetched only while no write is running. */
async function* routedBatches(store: Store, batchSize: number, settled: () => Promise<void>): AsyncGenerator<RowBatch> {
  let after = -1;
  for (;;) {
    await settled();
    const lines = await routedLines(store, after, batchSize);
    if (!lines.length) return;
    after = Number(lines.at(-1)!.line);
    yield { rows: lines.flatMap(({ line, text }) => lineRow(Number(line), text) ?? []), bytesRead: 0 };
  }
}

async function ingestBatches(run: Run, file: string, source: string, format: FileFormat, root: string, totalBytes: number,
  batches: (settled: () => Promise<void>) => AsyncIterable<RowBatch>): Promise<void> {
  const { options, summary } = run;
  const inFlight: Promise<void>[] = [];
  const settled = async () => {
    await Promise.all(inFlight);
  };
  for await (const batch of batches(settled)) {
    const rejects: Reject[] = [];
    const pending: { row: SourceRow; pair: RawPair }[] = [];
    for (const row of batch.rows) {
      if (row.error !== undefined) {
        rejects.push({ source, sourceRow: row.row, field: null, reason: row.error, raw: rawText(row) });
        continue;
      }
      try {
        const result = readRow(row.value, options.layout ?? 'auto', { imageField: options.imageField });
        if (result.tie) summary.ties++;
        for (const pair of result.pairs) pending.push({ row, pair });
      } catch (error) {
        if (!(error instanceof RowError)) throw error;
        rejects.push({ source, sourceRow: row.row, field: error.field, reason: error.message, raw: rawText(row) });
      }
    }
    // Rows with images go through in smaller chunks, so that one chunk is written while the next is decoded; the
    // next chunk's images are queued before this one's are awaited, so the decoders never wait for a chunk's slowest
    // image (and decoding runs at most one chunk ahead).
    const chunkSize = pending.some(({ pair }) => pair.image) ? IMAGE_CHUNK : Math.max(pending.length, 1);
    const resolveChunk = (from: number) => {
      const outcomes = Promise.all(pending.slice(from, from + chunkSize).map(({ pair }) => (pair.image ? resolveImage(run, pair.image, root) : null)));
      outcomes.catch(() => {}); // it is awaited in turn; this only stops an early failure being reported as unhandled
      return outcomes;
    };
    let resolving = resolveChunk(0);
    for (let from = 0; from === 0 || from < pending.length; from += chunkSize) {
      const chunk = pending.slice(from, from + chunkSize);
      const last = from + chunkSize >= pending.length;
      const chunkRejects = from === 0 ? rejects : [];
      const upcoming = last ? undefined : resolveChunk(from + chunkSize);
      const outcomes = await resolving;
      if (upcoming) resolving = upcoming;
      const ready = readyPairs(run, chunk, outcomes, chunkRejects, source);
      const images = [...new Map(outcomes.flatMap((o) => (o && !(o instanceof Error) && o.stored ? [[o.sha, o.stored] as const] : []))).values()];
      const rowsRead = last ? batch.rows.length : 0;
      const rowsSoFar = (run.rowsRead += rowsRead);
      const bytesRead = batch.bytesRead || totalBytes;
      // Writes queue up behind each other (the store sees one at a time) while reading, parsing and decoding go on,
      // so a commit's disk time overlaps the next batches' work. The queue is short to keep memory bounded.
      const write = (inFlight.at(-1) ?? Promise.resolve()).then(() => writeBatch(run, source, format, ready, images, chunkRejects)).then(async (inserted) => {
        run.uncommittedRows += rowsRead;
        if (run.uncommittedRows >= (options.commitRows ?? DEFAULT_COMMIT_ROWS)) {
          await run.store.run('COMMIT');
          await run.store.run('BEGIN TRANSACTION');
          run.uncommittedRows = 0;
        }
        summary.read += rowsRead;
        summary.ingested += inserted.pairs;
        summary.newImages += inserted.images;
        summary.duplicates += ready.length - inserted.pairs;
        summary.rejected += new Set(chunkRejects.map((r) => r.sourceRow)).size;
        if (last) options.onProgress?.({ file, rows: rowsSoFar, bytesRead, totalBytes });
      });
      write.catch(() => {}); // it is awaited below; this only stops a failure being reported twice
      inFlight.push(write);
      if (inFlight.length > MAX_QUEUED_BATCHES) await inFlight.shift();
    }
  }
  await Promise.all(inFlight);
}

/** Reads and hashes an image and, unless it is stored already or being decoded, decodes and validates it. */
function resolveImage(run: Run, ref: ImageRef, root: string): Promise<ImageOutcome> {
  return run.limit(async () => {
    let bytes: Uint8Array;
    let origin: string;
    try {
      let imageRoot = run.imageRoots.get(root);
      if (!imageRoot) run.imageRoots.set(root, imageRoot = new ImageRoot(root));
      ({ bytes, origin } = await loadImageBytes(ref, imageRoot));
    } catch (error) {
      if (error instanceof ImageError) return error;
      throw error;
    }
    const sha = sha256Hex(bytes);
    if (run.knownImages.has(sha)) return { sha };
    let decoding = run.decoding.get(sha);
    if (!decoding) {
      decoding = decodeImage(bytes, origin, run.options, sha).catch((error: unknown) => {
        if (error instanceof ImageError) return error;
        throw error;
      });
      run.decoding.set(sha, decoding);
    }
    const result = await decoding;
    return result instanceof Error ? result : { sha, stored: result };
  });
}

/**
 * Gives every pair whose image is usable its id. A pair whose image failed is rejected, or kept text-only when its
 * file is missing and missingImages is "drop".
 */
function readyPairs(run: Run, pending: { row: SourceRow; pair: RawPair }[], outcomes: ImageOutcome[], rejects: Reject[], source: string): ReadyPair[] {
  const ready: ReadyPair[] = [];
  pending.forEach(({ row, pair }, i) => {
    const outcome = outcomes[i];
    let imageSha: string | null = null;
    let identity: string | null = null;
    if (outcome instanceof Error) {
      if (!(outcome.code === 'missing' && run.options.missingImages === 'drop')) {
        rejects.push({ source, sourceRow: row.row, field: 'image', reason: outcome.message, raw: rawText(row) });
        return;
      }
      run.summary.imagesDropped++;
      pair.meta = { ...pair.meta, image_dropped: outcome.message };
      // Two pairs that differ only in their (missing) image stay two pairs.
      identity = `missing:${pair.image?.kind === 'path' ? pair.image.path : ''}`;
    } else if (outcome) {
      imageSha = identity = outcome.sha;
    }
    const readyPair = pair as ReadyPair;
    readyPair.pairId = pairId(pair.prompt, pair.chosen, pair.rejected, identity);
    readyPair.sourceRow = row.row;
    readyPair.imageId = imageSha;
    ready.push(readyPair);
  });
  return ready;
}

/** Writes one batch inside the open transaction; returns how many pairs and images were new. */
async function writeBatch(run: Run, source: string, format: string, ready: ReadyPair[], images: StoredImage[], rejects: Reject[]):
  Promise<{ pairs: number; images: number }> {
  const { store, knownImages } = run;
  if (run.knownPairsStale) {
    run.knownPairs = await storedIds(store, 'SELECT pair_id FROM pairs');
    run.knownPairsStale = false;
  }
  const knownPairs = run.knownPairs;
  // A routed line's pair loses to the same pair on an earlier line the fast path will insert, and wins over a later one.
  const fastLines = run.fastSource === source ? await firstFastLines(store, ready.map((p) => p.pairId).filter((id) => !knownPairs.has(id))) : undefined;
  const fresh = ready.filter((p) => {
    if (knownPairs.has(p.pairId)) return false;
    knownPairs.add(p.pairId);
    const fastLine = fastLines?.get(p.pairId);
    return fastLine === undefined || fastLine > p.sourceRow;
  });
  // An image decoded for one chunk can come back in a later chunk still queued behind it.
  const newImages = images.filter((im) => !knownImages.has(im.imageId));
  await store.append('images', ['varchar', 'varchar', 'integer', 'integer', 'integer', 'integer', 'varchar', 'bigint', 'blob', 'varchar'],
    newImages.map((im) => [im.imageId, im.sha256, im.width, im.height, im.origWidth, im.origHeight, im.format, im.bytes.length, im.bytes, im.origin]));
  await store.append('pairs', ['varchar', 'varchar', 'bigint', 'varchar', 'varchar', 'varchar', 'varchar', 'varchar', 'varchar'],
    fresh.map((p) => [p.pairId, source, p.sourceRow, format, p.prompt, p.chosen, p.rejected, p.imageId,
      Object.keys(p.meta).length ? JSON.stringify(p.meta) : null]));
  // Labels travel with the first occurrence of their pair only.
  await store.append('labels', ['varchar', 'varchar', 'integer', 'integer', 'varchar'],
    fresh.flatMap((p) => p.labels.map((l) => [p.pairId, l.side, l.start, l.end, l.label])));
  if (rejects.length) {
    await store.append('stage_rejects', ['varchar', 'varchar', 'bigint', 'varchar', 'varchar', 'varchar'],
      rejects.map((r) => ['ingest', r.source, r.sourceRow, r.field, r.reason, r.raw]), true);
    // One reject per row: a row with several bad pairs (HA-DPO lists) keeps its first reason.
    await store.run(`INSERT OR IGNORE INTO rejects SELECT * FROM stage_rejects QUALIFY row_number() OVER (PARTITION BY stage, source, source_row) = 1`);
    await store.run('DELETE FROM stage_rejects');
  }
  for (const image of images) {
    knownImages.add(image.imageId);
    run.decoding.delete(image.imageId);
  }
  return { pairs: fresh.length, images: newImages.length };
}

/** The one-line account of an ingest run that the CLI and the pipeline log. */
export function formatIngestSummary(s: IngestSummary): string {
  const extras = [s.ties ? `${s.ties} rating ties dropped` : '', s.imagesDropped ? `${s.imagesDropped} images missing (kept text-only)` : '']
    .filter(Boolean).join(', ');
  return `read ${s.read}, ingested ${s.ingested}, duplicates ${s.duplicates}, rejected ${s.rejected}, ` +
    `new images ${s.newImages}${extras ? `, ${extras}` : ''}, ${s.seconds.toFixed(1)} s`;
}
