import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { Store, withStore } from '../src/store/store.js';
import { segmentStage } from '../src/segment/stage.js';
import { ingest } from '../src/ingest/ingest.js';
import { ClipEncoder, ClipModelError, fitToContext, normalizeRows, onnxRuntimeHasCuda } from '../src/score/clip.js';
import { scoreSimilarity } from '../src/score/stage.js';
import { CONTEXT, cosine, referenceImageEmbedding, referenceTextEmbedding, writeTinyClip } from './clip-fixture.js';
import { CLI, sharedPath, tempDir } from './support.js';

type Rgb = [number, number, number];
const COLORS: Record<string, Rgb> = { red: [255, 0, 0], green: [0, 255, 0], blue: [0, 0, 255], yellow: [255, 255, 0] };

const MODEL_DIR = writeTinyClip(path.join(tempDir('aspo-clip-'), 'tiny-clip'));
let encoderPromise: Promise<ClipEncoder> | undefined;
const tinyClip = (): Promise<ClipEncoder> => (encoderPromise ??= ClipEncoder.load(MODEL_DIR, { device: 'cpu' }));

async function solidPng(rgb: Rgb, width = 12, height = 10): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } }).png().toBuffer();
}

async function addImage(store: Store, bytes: Uint8Array): Promise<string> {
  const id = createHash('sha256').update(bytes).digest('hex');
  if (await store.scalar('SELECT count(*) FROM images WHERE image_id = ?', [id])) return id;
  await store.append('images', ['varchar', 'varchar', 'integer', 'integer', 'integer', 'integer', 'varchar', 'bigint', 'blob', 'varchar'],
    [[id, id, 12, 10, 12, 10, 'png', bytes.length, bytes, '<bytes>']]);
  return id;
}

async function addPair(store: Store, pairId: string, chosen: string, rejected: string, imageId: string | null): Promise<void> {
  await store.run(`INSERT INTO pairs (pair_id, source, source_row, format, prompt, chosen, rejected, image_id)
    VALUES (?, 'test.jsonl', 0, 'jsonl', 'Describe the image.', ?, ?, ?)`, [pairId, chosen, rejected, imageId]);
}

/** One pair per colour: the chosen answer names the image's colour, the rejected one the next colour. */
async function colourStore(db: string): Promise<Map<string, Rgb>> {
  const imageOfPair = new Map<string, Rgb>();
  await withStore(db, async (store) => {
    const names = Object.keys(COLORS);
    for (const [i, name] of names.entries()) {
      const other = names[(i + 1) % names.length]!;
      const imageId = await addImage(store, await solidPng(COLORS[name]!));
      await addPair(store, `pair-${name}`, `A ${name} square. A photo of a square.`, `A ${other} square. A photo of a square.`, imageId);
      imageOfPair.set(`pair-${name}`, COLORS[name]!);
    }
    await addPair(store, 'text-only', 'A red square. Nothing else.', 'A blue square.', null);
    await segmentStage(store);
  });
  return imageOfPair;
}

interface ScoreRow { pair_id: string; side: string; idx: number; text: string; similarity: number | null; similarity_model: string | null; similarity_truncated: boolean | null }

async function scoreRows(store: Store): Promise<ScoreRow[]> {
  return store.all<ScoreRow>(`SELECT s.pair_id, s.side, s.idx, s.text, sc.similarity, sc.similarity_model, sc.similarity_truncated
    FROM sentences s LEFT JOIN sentence_scores sc USING (pair_id, side, idx) ORDER BY s.pair_id, s.side, s.idx`);
}

test('fitToContext keeps the first tokens and the end token; normalizeRows gives unit rows', () => {
  assert.deepEqual(fitToContext([0, 5, 6, 1], 4), { ids: [0, 5, 6, 1], truncated: false });
  assert.deepEqual(fitToContext([0, 5, 6, 7, 8, 1], 4), { ids: [0, 5, 6, 1], truncated: true });
  const rows = normalizeRows([3, 4, 0, 0, 0, 0], 2, 3);
  assert.deepEqual([...rows[0]!].map((v) => +v.toFixed(6)), [0.6, 0.8, 0]);
  assert.deepEqual([...rows[1]!], [0, 0, 0]);
});

test('the tiny CLIP folder loads through transformers.js and its similarities match a float64 reference', async () => {
  const encoder = await tinyClip();
  assert.equal(encoder.contextLength, CONTEXT);
  assert.equal(encoder.device, 'cpu');
  assert.match(encoder.modelId, /^tiny-clip@[0-9a-f]{12}$/);
  const { pixelValues, decoded, failures } = await encoder.preprocessImages(
    [await solidPng(COLORS.red!), Buffer.from('not an image'), await solidPng(COLORS.yellow!, 30, 7)]);
  assert.deepEqual(decoded, [0, 2]);
  assert.equal(failures.length, 1);
  assert.equal(failures[0]!.index, 1);
  const images = await encoder.embedImages(pixelValues!);
  // Texts of different lengths in one batch (padding must be masked), one longer than the context.
  const texts = ['a red square', 'a photo of a yellow square .', 'red', 'a photo of a dark red square of a blue photo', 'zebra'];
  const batch = encoder.tokenize(texts);
  assert.deepEqual(batch.truncated, [false, true, false, true, false]);
  const embeddings = await encoder.embedTexts(batch);
  for (const [i, rgb] of [COLORS.red!, COLORS.yellow!].entries()) {
    texts.forEach((text, t) => {
      const got = embeddings[t]!.reduce((s, v, d) => s + v * images[i]![d]!, 0);
      assert.ok(Math.abs(got - cosine(referenceImageEmbedding(rgb), referenceTextEmbedding(text))) < 1e-5, `${text} vs image ${i}: ${got}`);
    });
  }
});

test('scores every sentence of the image pairs: own colour beats a shuffled caption, text-only pairs are counted and skipped', async () => {
  const db = path.join(tempDir(), 'score.duckdb');
  const imageOfPair = await colourStore(db);
  await withStore(db, async (store) => {
    const encoder = await tinyClip();
    const summary = await scoreSimilarity(store, encoder, { batchSize: 2 });
    const rows = await scoreRows(store);
    const imageRows = rows.filter((r) => r.pair_id !== 'text-only');
    assert.equal(summary.sentences, imageRows.length);
    assert.equal(summary.textOnlySentences, rows.length - imageRows.length);
    assert.equal(summary.textOnlyPairs, 1);
    assert.equal(summary.images, 4);
    // "A photo of a square." is shared by both sides of each pair: one computation per image for it.
    assert.equal(summary.computed, 4 * 3);
    assert.equal(summary.texts, new Set(imageRows.map((r) => r.text)).size);
    assert.equal(summary.alreadyDone, 0);
    for (const row of rows) {
      if (row.pair_id === 'text-only') {
        assert.equal(row.similarity, null);
        continue;
      }
      assert.equal(row.similarity_model, encoder.modelId);
      assert.equal(row.similarity_truncated, false);
      const expected = cosine(referenceImageEmbedding(imageOfPair.get(row.pair_id)!), referenceTextEmbedding(row.text));
      assert.ok(Math.abs(row.similarity! - expected) < 1e-5, `${row.pair_id} ${row.text}: ${row.similarity} vs ${expected}`);
    }
    // Own caption vs the caption of another pair's image, on the same image.
    for (const [pairId] of imageOfPair) {
      const own = rows.find((r) => r.pair_id === pairId && r.side === 'chosen' && r.idx === 0)!;
      const shuffled = rows.find((r) => r.pair_id === pairId && r.side === 'rejected' && r.idx === 0)!;
      assert.ok(own.similarity! > shuffled.similarity! + 0.2, `${pairId}: ${own.similarity} vs ${shuffled.similarity}`);
    }
    assert.equal(await store.scalar('SELECT count(*) FROM similarity_cache'), 12);

    // Re-run: nothing to do. New pair on a known image with known sentences: all from the cache.
    const again = await scoreSimilarity(store, encoder);
    assert.deepEqual([again.sentences, again.alreadyDone, again.computed], [0, imageRows.length, 0]);
    const redId = createHash('sha256').update(await solidPng(COLORS.red!)).digest('hex');
    await addPair(store, 'pair-red-2', 'A red square. A photo of a square.', 'A green square.', redId);
    await segmentStage(store);
    const added = await scoreSimilarity(store, encoder);
    assert.deepEqual([added.sentences, added.cacheHits, added.computed, added.images], [3, 3, 0, 0]);
  });
});

test('a killed run resumes without duplicates; an undecodable image gives NULL with the reason', async () => {
  const db = path.join(tempDir(), 'resume.duckdb');
  await colourStore(db);
  await withStore(db, async (store) => {
    const junk = new TextEncoder().encode('definitely not a PNG');
    const junkId = await addImage(store, junk);
    await addPair(store, 'pair-junk', 'A red square. A blue square.', 'A green square.', junkId);
    await segmentStage(store);
    const encoder = await tinyClip();
    const total = Number(await store.scalar(`SELECT count(*) FROM sentences s JOIN pairs p USING (pair_id) WHERE p.image_id IS NOT NULL`));
    // Transactions of about 6 sentences (whole images); the run dies after the first commit.
    await assert.rejects(scoreSimilarity(store, encoder, { batchSize: 1, commitSentences: 6, onBatch: () => { throw new Error('killed'); } }), /killed/);
    const afterKill = Number(await store.scalar('SELECT count(*) FROM sentence_scores'));
    assert.ok(afterKill > 0 && afterKill < total, `${afterKill} of ${total}`);
    const resumed = await scoreSimilarity(store, encoder, { batchSize: 1, commitSentences: 6 });
    assert.equal(resumed.alreadyDone, afterKill);
    assert.equal(resumed.sentences, total - afterKill);
    assert.equal(await store.scalar('SELECT count(*) FROM sentence_scores'), total);
    const junkRows = await store.all<{ similarity: number | null; similarity_error: string }>(
      `SELECT similarity, similarity_error FROM sentence_scores WHERE pair_id = 'pair-junk'`);
    assert.equal(junkRows.length, 3);
    for (const row of junkRows) {
      assert.equal(row.similarity, null);
      assert.match(row.similarity_error, /image could not be decoded/);
    }
    assert.equal(await store.scalar('SELECT count(*) FROM sentence_scores WHERE similarity IS NULL'), 3);
  });
});

test('an incomplete or unreadable model folder gives a clear error naming the file and what to do', async () => {
  const incomplete = writeTinyClip(path.join(tempDir('aspo-clip-'), 'no-text'), ['onnx/text_model.onnx', 'tokenizer.json']);
  await assert.rejects(ClipEncoder.load(incomplete), (error: Error) => {
    assert.ok(error instanceof ClipModelError);
    assert.match(error.message, /is incomplete: missing tokenizer\.json, onnx\/text_model\.onnx/);
    assert.match(error.message, /Xenova\/clip-vit-base-patch32/);
    return true;
  });
  await assert.rejects(ClipEncoder.load(path.join(tempDir(), 'nowhere')), /does not exist/);
  if (!onnxRuntimeHasCuda()) await assert.rejects(ClipEncoder.load(MODEL_DIR, { device: 'cuda' }), /no CUDA provider/);
  const corrupt = writeTinyClip(path.join(tempDir('aspo-clip-'), 'corrupt'));
  writeFileSync(path.join(corrupt, 'onnx', 'vision_model.onnx'), 'garbage');
  await assert.rejects(ClipEncoder.load(corrupt, { device: 'cpu' }), (error: Error) =>
    error instanceof ClipModelError && error.message.includes(`cannot load the CLIP model in ${corrupt}`));
});

test('aspo score: scores a store from the command line; usage errors exit 2', async () => {
  const db = path.join(tempDir(), 'cli.duckdb');
  await colourStore(db);
  const run = (...args: string[]) => spawnSync(process.execPath, [CLI, 'score', ...args], { encoding: 'utf8' });
  const ok = run('--db', db, '--clip', MODEL_DIR, '--device', 'cpu', '--batch-size', '4');
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal(ok.stdout, '');
  assert.match(ok.stderr, /score: 16 sentences scored with tiny-clip@[0-9a-f]{12} on cpu .* 3 sentences of 1 text-only pairs skipped/);
  const scored = await withStore(db, (store) => store.scalar('SELECT count(*) FROM sentence_scores WHERE similarity IS NOT NULL'));
  assert.equal(scored, 16);
  const missing = run('--db', db);
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, /--clip MODEL is required/);
  const incomplete = run('--db', db, '--clip', writeTinyClip(path.join(tempDir('aspo-clip-'), 'x'), ['config.json']));
  assert.equal(incomplete.status, 2);
  assert.match(incomplete.stderr, /missing config\.json/);
  assert.equal(run('--db', db, '--clip', MODEL_DIR, '--device', 'tpu').status, 2);
});

test('real data: the RLHF-V pairs through ingest, segment and score (text-only pairs counted)', { skip: !sharedPath('data', 'mhalo', 'derived') && 'shared/data/mhalo absent' }, async () => {
  const derived = sharedPath('data', 'mhalo', 'derived')!;
  await withStore(path.join(tempDir(), 'rlhfv.duckdb'), async (store) => {
    await ingest(store, [path.join(derived, 'rlhfv_pairs_spans.jsonl')], { missingImages: 'drop' });
    await ingest(store, [path.join(derived, 'rlhfv_pairs_with_local_images.jsonl')], { imageField: 'local_image', images: sharedPath('data')! });
    await segmentStage(store);
    const summary = await scoreSimilarity(store, await tinyClip());
    const counts = (await store.one<{ with_image: number; text_only: number; text_only_pairs: number }>(`
      SELECT count(*) FILTER (p.image_id IS NOT NULL) AS with_image, count(*) FILTER (p.image_id IS NULL) AS text_only,
             count(DISTINCT p.pair_id) FILTER (p.image_id IS NULL) AS text_only_pairs
      FROM sentences s JOIN pairs p USING (pair_id)`))!;
    assert.ok(counts.with_image > 0 && counts.text_only_pairs >= 400, JSON.stringify(counts));
    assert.deepEqual([summary.sentences, summary.textOnlySentences, summary.textOnlyPairs, summary.imageErrors],
      [counts.with_image, counts.text_only, counts.text_only_pairs, 0]);
    assert.equal(summary.images, 2);
    const range = (await store.one<{ lo: number; hi: number; n: number }>(
      'SELECT min(similarity) AS lo, max(similarity) AS hi, count(similarity) AS n FROM sentence_scores'))!;
    assert.equal(range.n, counts.with_image);
    assert.ok(range.lo >= -1 - 1e-6 && range.hi <= 1 + 1e-6, JSON.stringify(range));
    // Text-only responses still get weights (from perplexity once it is scored; 0 until then).
    assert.equal(await store.scalar(`SELECT count(*) FROM sentence_weights w JOIN pairs p USING (pair_id)
      WHERE p.image_id IS NULL AND w.weight <> 0`), 0);
  });
});

test('the fast image preprocessing gives exactly the library processor\'s pixel values (CLIP 224 settings)', async () => {
  const dir = writeTinyClip(path.join(tempDir('aspo-clip-'), 'clip-224'));
  writeFileSync(path.join(dir, 'preprocessor_config.json'), JSON.stringify({
    feature_extractor_type: 'CLIPFeatureExtractor', do_resize: true, size: { shortest_edge: 224 }, resample: 3,
    do_center_crop: true, crop_size: { height: 224, width: 224 }, do_rescale: true, rescale_factor: 1 / 255,
    do_normalize: true, image_mean: [0.48145466, 0.4578275, 0.40821073], image_std: [0.26862954, 0.26130258, 0.27577711],
    do_convert_rgb: true,
  }));
  const encoder = await ClipEncoder.load(dir, { device: 'cpu' });
  try {
    const { RawImage } = await import('@huggingface/transformers');
    const images = await Promise.all([[300, 200], [97, 411], [224, 224], [640, 480]].map(async ([width, height], i) => {
      const { data, info } = await sharp({ create: { width: width!, height: height!, channels: 3, background: { r: 0, g: 0, b: 0 },
        noise: { type: 'gaussian', mean: 100 + 20 * i, sigma: 50 } } }).raw().toBuffer({ resolveWithObject: true });
      return new RawImage(new Uint8ClampedArray(data), info.width, info.height, 3);
    }));
    const fast = await encoder.processPlain(images);
    const library = await encoder.processWithLibrary(images);
    assert.deepEqual(fast.dims, [4, 3, 224, 224]);
    assert.deepEqual(fast.dims, library.dims);
    assert.deepEqual(fast.data, library.data);
  } finally {
    await encoder.dispose();
  }
});
