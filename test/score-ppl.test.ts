import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { initBackend, tf } from '../src/model/backend.js';
import { DEFAULT_SFT_OPTIONS, readSftData, runSft, SftTrainer } from '../src/train/sft.js';
import { encodePromptResponse } from '../src/model/encode.js';
import { loadImagePixels, stackImages } from '../src/model/images.js';
import { encodeWithSentences } from '../src/segment/align.js';
import { segmentStage } from '../src/segment/stage.js';
import { Store, withStore } from '../src/store/store.js';
import { groundingGain, perplexity, scoreReference, sentenceLogProbs } from '../src/score/perplexity.js';
import { loadModel, type LoadedModel } from '../src/model/checkpoint.js';
import { renderShape, writeShapesDataset } from './model-fixture.js';
import { CLI, tempDir } from './support.js';

const PROMPT = 'Describe the image.';
/** [pair id, shape, colour of the image (null: text-only), chosen, rejected]. */
const PAIRS: Array<[string, string, string | null, string, string]> = [
  ['red-circle', 'circle', 'red', 'A red circle. A red circle.', 'A blue circle. A red circle.'],
  ['green-square', 'square', 'green', 'A green square. A green square.', 'A yellow square. A green square.'],
  ['blue-triangle', 'triangle', 'blue', 'A blue triangle. A blue triangle.', 'A red triangle. A blue triangle.'],
  ['text-only', 'circle', null, 'A red circle. A blue square.', 'A green circle.'],
  ['too-long', 'circle', 'red', 'A red circle. '.repeat(12).trim(), 'A blue circle. '.repeat(12).trim()],
];

let checkpoint: string;
let ref: LoadedModel;
let db: string;
const pixels = new Map<string, Float32Array>();

before(async () => {
  await initBackend('auto');
  const data = tempDir();
  await writeShapesDataset(data, 2);
  checkpoint = path.join(tempDir(), 'ref');
  // Trained a little on the shapes world, so that the image matters to the model: 16 visual tokens, 24 text positions.
  const trainer = await SftTrainer.create({
    ...DEFAULT_SFT_OPTIONS, data, out: checkpoint, steps: 40, batchSize: 12, lr: 1e-2, warmupSteps: 5, evalEvery: 0,
    saveEvery: 0, logEvery: 40, model: { ...DEFAULT_SFT_OPTIONS.model, width: 32, layers: 1, heads: 2, mlpRatio: 2, context: 16 + 24 },
  }, await readSftData(data));
  await runSft(trainer);
  trainer.dispose();
  ref = await loadModel(checkpoint);

  db = path.join(tempDir(), 'ppl.duckdb');
  await withStore(db, async (store) => {
    for (const [pairId, shape, colour, chosen, rejected] of PAIRS) {
      let imageId: string | null = null;
      if (colour) {
        const png = await renderShape(shape, colour);
        imageId = createHash('sha256').update(png).digest('hex');
        pixels.set(pairId, await loadImagePixels(png, ref.model.config.imageSize));
        if (!await store.scalar('SELECT count(*) FROM images WHERE image_id = ?', [imageId])) {
          await store.append('images', ['varchar', 'varchar', 'integer', 'integer', 'integer', 'integer', 'varchar', 'bigint', 'blob', 'varchar'],
            [[imageId, imageId, 64, 64, 64, 64, 'png', png.length, png, '<bytes>']]);
        }
      }
      await store.run(`INSERT INTO pairs (pair_id, source, source_row, format, prompt, chosen, rejected, image_id)
        VALUES (?, 'test.jsonl', 0, 'jsonl', ?, ?, ?, ?)`, [pairId, PROMPT, chosen, rejected, imageId]);
    }
    await segmentStage(store);
    // A similarity from another scorer (CLIP) that the perplexity scorer must leave alone.
    await store.run(`INSERT INTO sentence_scores (pair_id, side, idx, similarity, similarity_model) VALUES ('text-only', 'chosen', 0, 0.42, 'clip-x')`);
  });
});

after(() => ref?.model.dispose());

/** Per sentence of one response, Σ log p and token count, computed here from the model and the alignment. */
async function directSums(store: Store, pairId: string, side: string, withImage: boolean): Promise<Array<{ sum: number; n: number }>> {
  const pair = (await store.one<{ chosen: string; rejected: string }>('SELECT chosen, rejected FROM pairs WHERE pair_id = ?', [pairId]))!;
  const response = side === 'chosen' ? pair.chosen : pair.rejected;
  const sentences = await store.all<{ start: number; end: number }>(
    'SELECT char_start AS start, char_end AS end FROM sentences WHERE pair_id = ? AND side = ? ORDER BY idx', [pairId, side]);
  const { promptIds, responseIds } = encodePromptResponse(ref.tokenizer, PROMPT, response);
  const { sentenceIds } = encodeWithSentences(ref.tokenizer, PROMPT, response, sentences);
  const image = withImage ? pixels.get(pairId)! : null;
  const images = image ? stackImages([image], ref.model.config.imageSize) : null;
  const { logps, mask } = ref.model.responseLogProbs({ images, hasImage: [Boolean(image)], promptIds: [promptIds], responseIds: [responseIds] });
  const values = await logps.data();
  tf.dispose([logps, mask]);
  images?.dispose();
  const out = sentences.map(() => ({ sum: 0, n: 0 }));
  for (let j = 0; j < responseIds.length; j++) {
    const k = sentenceIds[promptIds.length + j]!;
    if (k >= 0) {
      out[k]!.sum += values[j]!;
      out[k]!.n += 1;
    }
  }
  return out;
}

interface Scored { pair_id: string; side: string; idx: number; similarity: number | null; similarity_model: string | null;
  ppl: number | null; ref_logp_sum: number | null; n_tokens: number | null; ppl_model: string | null }

async function scored(store: Store): Promise<Map<string, Scored>> {
  const rows = await store.all<Scored>('SELECT * FROM sentence_scores');
  return new Map(rows.map((r) => [`${r.pair_id}/${r.side}/${r.idx}`, r]));
}

test('sentenceLogProbs, perplexity and groundingGain on a hand-worked response', () => {
  const sums = sentenceLogProbs([-1, -2, -0.5, -3, -4], [0, 0, -1, 1, 1], 3);
  assert.deepEqual(sums, [{ sum: -3, n: 2 }, { sum: -7, n: 2 }, { sum: 0, n: 0 }]);
  assert.equal(perplexity(sums[0]!), Math.exp(1.5));
  assert.equal(perplexity(sums[2]!), null);
  assert.equal(groundingGain({ sum: -2, n: 2 }, { sum: -5, n: 2 }), 1.5);
  assert.equal(groundingGain({ sum: 0, n: 0 }, { sum: 0, n: 0 }), null);
  assert.throws(() => groundingGain({ sum: -2, n: 2 }, { sum: -5, n: 3 }), /token counts differ/);
});

test('perplexity: sums match a direct model call, ppl = exp(-sum/n), other similarity kept, long rows skipped', async () => {
  await withStore(db, async (store) => {
    const summary = await scoreReference(store, ref, 'perplexity', { batchSize: 3 });
    assert.equal(summary.model, ref.modelId);
    assert.equal(summary.tooLong, 2);
    assert.equal(summary.responses, 8);
    assert.equal(summary.textOnlyResponses, 2);
    const rows = await scored(store);
    for (const [pairId, side] of [['red-circle', 'chosen'], ['green-square', 'rejected'], ['text-only', 'chosen']] as const) {
      const direct = await directSums(store, pairId, side, pairId !== 'text-only');
      direct.forEach(({ sum, n }, idx) => {
        const row = rows.get(`${pairId}/${side}/${idx}`)!;
        assert.ok(n > 0);
        assert.equal(row.n_tokens, n, `${pairId}/${side}/${idx} n_tokens`);
        assert.ok(Math.abs(row.ref_logp_sum! - sum) < 1e-4, `${pairId}/${side}/${idx}: ${row.ref_logp_sum} vs ${sum}`);
        assert.ok(Math.abs(row.ppl! - Math.exp(-row.ref_logp_sum! / n)) < 1e-9 * row.ppl!);
        assert.equal(row.ppl_model, ref.modelId);
      });
    }
    assert.equal(rows.get('text-only/chosen/0')!.similarity, 0.42);
    assert.equal(rows.get('text-only/chosen/0')!.similarity_model, 'clip-x');
    assert.equal([...rows.keys()].filter((k) => k.startsWith('too-long/')).length, 0, 'too-long rows are not written');
    // Every multi-sentence scored response now has perplexity weights.
    const weights = await store.all<{ pair_id: string; p_norm: number | null }>(
      `SELECT pair_id, p_norm FROM sentence_weights WHERE n_sentences > 1 AND pair_id <> 'too-long'`);
    assert.ok(weights.length >= 12);
    assert.ok(weights.every((w) => w.p_norm !== null));

    const again = await scoreReference(store, ref, 'perplexity');
    assert.equal(again.responses, 0);
    assert.equal(again.sentences, 0);
    assert.equal(again.tooLong, 2, 'skipped rows are counted again, still not truncated');
  });
});

test('grounding: mean log-prob gain with the image over without, matching a direct computation', async () => {
  await withStore(db, async (store) => {
    const summary = await scoreReference(store, ref, 'grounding', { batchSize: 4 });
    assert.equal(summary.model, `grounding:${ref.modelId}`);
    assert.equal(summary.responses, 6, 'image pairs only (too-long skipped)');
    const rows = await scored(store);
    for (const [pairId, side] of [['red-circle', 'chosen'], ['blue-triangle', 'rejected']] as const) {
      const withImage = await directSums(store, pairId, side, true);
      const withoutImage = await directSums(store, pairId, side, false);
      withImage.forEach(({ sum, n }, idx) => {
        const expected = (sum - withoutImage[idx]!.sum) / n;
        const row = rows.get(`${pairId}/${side}/${idx}`)!;
        assert.ok(Math.abs(row.similarity! - expected) < 1e-4, `${pairId}/${side}/${idx}: ${row.similarity} vs ${expected}`);
        assert.equal(Math.sign(row.similarity!), Math.sign(expected));
        assert.equal(row.similarity_model, `grounding:${ref.modelId}`);
        assert.ok(row.ppl !== null, 'perplexity columns kept');
      });
    }
    // The image supports the sentence naming its own colour more than the one naming another colour.
    const first = await store.all<{ side: string; g: number }>(`SELECT side, avg(similarity) AS g FROM sentence_scores
      WHERE idx = 0 AND similarity_model LIKE 'grounding:%' GROUP BY side`);
    const bySide = new Map(first.map((r) => [r.side, r.g]));
    assert.ok(bySide.get('chosen')! > bySide.get('rejected')!, `own colour ${bySide.get('chosen')} vs other ${bySide.get('rejected')}`);
    assert.equal(rows.get('text-only/chosen/0')!.similarity_model, 'clip-x', 'text-only pairs get no grounding');
    assert.equal((await scoreReference(store, ref, 'grounding')).responses, 0);
  });
});

test('aspo score --ref: re-run scores nothing new; grounding without --ref and bad folders are usage errors', () => {
  const run = (...args: string[]) => spawnSync(process.execPath, [CLI, 'score', '--db', db, ...args], { encoding: 'utf8' });
  const ok = run('--ref', checkpoint, '--similarity', 'grounding', '--backend', 'wasm');
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(ok.stderr, /^perplexity: 0 sentences of 0 responses/m);
  assert.match(ok.stderr, /2 longer than the model's context/);
  assert.match(ok.stderr, /^grounding: 0 sentences of 0 responses/m);
  assert.equal(ok.stdout, '');
  const noRef = run('--similarity', 'grounding');
  assert.notEqual(noRef.status, 0);
  assert.match(noRef.stderr, /--similarity grounding needs --ref/);
  const bad = run('--ref', path.join(tempDir(), 'nothing-here'));
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /--ref: .*manifest\.json is missing/);
});
