import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { asyncBufferFromFile, parquetReadObjects } from 'hyparquet';
import { withStore } from '../src/store/store.js';
import { segment } from '../src/segment/segment.js';
import { scoreVlm, VisionLanguageScorer } from '../src/score/vlm.js';
import { sideColumns, writeModelShards } from '../src/shard/model-shards.js';
import { noisePng, referenceCropFeatures, referenceLogProbs, writeTinySmolVlm, writeVlmStore, type FixturePair, type TinyVlm } from './vlm-fixture.js';
import { CLI, tempDir } from './support.js';

const PROMPT = 'Describe this image.';
const PAIRS: FixturePair[] = [
  ['p1', 'img-a', PROMPT, 'The cat sat on the mat. A dog ran.', 'A red square is there. The dog sat.'],
  ['p2', 'img-b', PROMPT, 'It is a blue square. There is a cat.', 'The cat ran.'],
  ['p3', 'img-a', PROMPT, 'A dog sat on a red mat. The cat ran. It is blue.', 'What is this? A cat.'],
  ['t1', null, PROMPT, 'A dog sat.', 'The cat sat on a mat. It ran.'],
  ['long', 'img-b', PROMPT, 'The cat sat on the mat. '.repeat(12).trim(), 'A cat.'],
];

let tiny: TinyVlm;
let vlm: VisionLanguageScorer;
let images: Record<string, Buffer>;

before(async () => {
  tiny = writeTinySmolVlm(path.join(tempDir(), 'tiny-smolvlm'));
  vlm = await VisionLanguageScorer.load(tiny.dir, { device: 'cpu' });
  images = { 'img-a': await noisePng(16, 8, 3), 'img-b': await noisePng(8, 8, 4) };
});

after(async () => vlm?.dispose());

test('sideColumns: prompt masked out, sentence multipliers on their tokens, 1 elsewhere, log-probs after the prompt', () => {
  const side = sideColumns([5, 6], { ids: [7, 8, 9], sentenceIds: [0, -1, 1] }, [2], [3, 4], new Map([[3, 1.5], [4, 2]]), [-1, -2, -3, -4]);
  assert.deepEqual(side.inputIds, [5, 6, 7, 8, 9, 2]);
  assert.deepEqual(side.responseMask, [0, 0, 1, 1, 1, 1]);
  assert.deepEqual(side.sentenceIds, [-1, -1, 3, -1, 4, -1]);
  assert.deepEqual(side.multipliers, [1, 1, 1.5, 1, 2, 1]);
  assert.deepEqual(side.refLogps, [0, 0, -1, -2, -3, -4]);
});

test('aspo shard --model: Parquet rows a reader without the toolkit takes back, matching the model and the store', async () => {
  const db = await writeVlmStore(path.join(tempDir(), 'shard.duckdb'), images, PAIRS);
  await withStore(db, async (store) => {
    await scoreVlm(store, vlm); // perplexity → non-trivial multipliers, and per-sentence sums to compare with
    await store.run(`UPDATE sentence_scores SET similarity = idx * 0.1 + 0.05, similarity_model = 'test' WHERE side = 'chosen'`);
  });
  const out = path.join(tempDir(), 'shards');
  const run = spawnSync(process.execPath, [CLI, 'shard', '--db', db, '--model', tiny.dir, '--out', out, '--ref-logps',
    '--eval-fraction', '0', '--alpha', '0.3', '--scale', '2', '--device', 'cpu'], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  const summary = JSON.parse(run.stdout);
  assert.deepEqual(summary.counts, { train: 4, eval: 0, dropped: 1, images: 2 });
  const manifest = JSON.parse(readFileSync(path.join(out, 'manifest.json'), 'utf8'));
  assert.equal(manifest.format, 'aspo-model-shards/1');
  assert.equal(manifest.model, vlm.modelId);
  assert.equal(manifest.referenceModel, vlm.modelId);
  assert.deepEqual(manifest.shards.map((s: { file: string }) => s.file), ['train-00000.parquet']);

  // An independent Parquet reader (hyparquet, pure JavaScript).
  const rows = await parquetReadObjects({ file: await asyncBufferFromFile(path.join(out, 'train-00000.parquet')) }) as Array<Record<string, any>>;
  assert.deepEqual(rows.map((r) => r.pair_id).sort(), ['p1', 'p2', 'p3', 't1']);
  const stored = await parquetReadObjects({ file: await asyncBufferFromFile(path.join(out, 'images.parquet')), utf8: false }) as Array<Record<string, any>>;
  assert.deepEqual(stored.map((r) => r.image_id).sort(), ['img-a', 'img-b']);
  for (const r of stored) assert.deepEqual(Buffer.from(r.bytes), images[r.image_id]);

  const { weights, sums } = await withStore(db, async (store) => ({
    weights: await store.all<{ pair_id: string; idx: number; multiplier: number }>(
      `SELECT pair_id, idx, multiplier FROM sentence_weights(alpha := 0.3, scale := 2.0) WHERE side = 'chosen'`),
    sums: await store.all<{ pair_id: string; side: string; idx: number; ref_logp_sum: number }>(
      'SELECT pair_id, side, idx, ref_logp_sum FROM sentence_scores'),
  }));
  assert.ok(weights.some((w) => w.multiplier > 1.01), 'the store gives non-trivial multipliers');
  const tokenizer = (vlm as unknown as { tokenizer: { decode(ids: number[], o?: object): string } }).tokenizer;
  for (const r of rows) {
    const pair = PAIRS.find((p) => p[0] === r.pair_id)!;
    assert.equal(r.image_id, pair[1]);
    const prompt = await vlm.encodePrompt(PROMPT, pair[1] ? images[pair[1]]! : null);
    let features: number[][] = [];
    if (pair[1]) {
      const pixels = prompt.vision!.pixel_values!;
      const per = 3 * tiny.weights.dims.imageSize ** 2;
      for (let c = 0; c < pixels.dims[1]!; c++) {
        features.push(...referenceCropFeatures(tiny.weights, (pixels.data as Float32Array).subarray(c * per, (c + 1) * per)));
      }
    }
    for (const [k, name] of (['chosen', 'rejected'] as const).entries()) {
      const response = pair[3 + k]!;
      const ids: number[] = r[`${name}_input_ids`];
      const mask: number[] = r[`${name}_response_mask`];
      const sentenceIds: number[] = r[`${name}_sentence_ids`];
      const logps: number[] = r[`${name}_ref_logps`];
      for (const column of ['attention_mask', 'response_mask', 'sentence_ids', 'ref_logps']) assert.equal(r[`${name}_${column}`].length, ids.length);
      assert.ok(r[`${name}_attention_mask`].every((m: number) => m === 1));
      // The prompt is the model's processor output for this image; the rest is the response and the turn's end.
      assert.deepEqual(ids.slice(0, mask.indexOf(1)), prompt.ids);
      assert.equal(tokenizer.decode(ids.filter((_, t) => mask[t] === 1)), ` ${response}<end_of_utterance>\n`);
      const sentences = segment(response);
      sentences.forEach((s, idx) => {
        const tokens = ids.filter((_, t) => sentenceIds[t] === idx);
        assert.equal(tokenizer.decode(tokens).trim(), response.slice(s.start, s.end).trim());
      });
      // Reference log-probs: a float64 forward of the same graphs, on every response token.
      const reference = referenceLogProbs(tiny.weights, ids, tiny.imageTokenId, features);
      ids.forEach((_, t) => {
        if (mask[t] === 1) assert.ok(Math.abs(logps[t]! - reference[t - 1]!) < 1e-4, `${r.pair_id}/${name} token ${t}`);
        else assert.equal(logps[t], 0);
      });
      // Their sums over a sentence are the scorer's ref_logp_sum.
      sentences.forEach((_, idx) => {
        const sum = logps.reduce((acc, l, t) => acc + (sentenceIds[t] === idx ? l : 0), 0);
        const want = sums.find((x) => x.pair_id === r.pair_id && x.side === name && x.idx === idx)!.ref_logp_sum;
        assert.ok(Math.abs(sum - want) < 1e-4, `${r.pair_id}/${name}/${idx}: ${sum} vs ${want}`);
      });
      if (name === 'chosen') {
        const multipliers: number[] = r.chosen_multipliers;
        ids.forEach((_, t) => {
          const idx = sentenceIds[t]!;
          const want = idx < 0 ? 1 : weights.find((w) => w.pair_id === r.pair_id && w.idx === idx)!.multiplier;
          assert.ok(Math.abs(multipliers[t]! - want) < 1e-6, `${r.pair_id} token ${t}: multiplier ${multipliers[t]} vs ${want}`);
        });
      }
    }
  }
  const rejects = await withStore(db, (store) => store.all<{ field: string; reason: string }>(`SELECT field, reason FROM rejects WHERE stage = 'shard'`));
  assert.equal(rejects.length, 1);
  assert.match(rejects[0]!.reason, /exceed the model's context of 96/);
});

test('without --ref-logps only the tokenizer and processor run, and the log-prob columns are null', async () => {
  const db = await writeVlmStore(path.join(tempDir(), 'plain.duckdb'), images, PAIRS.slice(0, 2));
  const out = path.join(tempDir(), 'plain');
  const summary = await withStore(db, (store) => writeModelShards(store, { out, model: tiny.dir, evalFraction: 0.5, splitBy: 'pair', seed: 3 }));
  assert.equal(summary.referenceModel, null);
  assert.equal(summary.counts.train + summary.counts.eval, 2);
  const files = JSON.parse(readFileSync(path.join(out, 'manifest.json'), 'utf8')).shards.map((s: { file: string }) => s.file);
  for (const file of files) {
    const rows = await parquetReadObjects({ file: await asyncBufferFromFile(path.join(out, file)) }) as Array<Record<string, any>>;
    for (const r of rows) {
      assert.ok(r.chosen_ref_logps == null && r.rejected_ref_logps == null, 'null lists (hyparquet reads them as undefined)');
      assert.ok(r.chosen_multipliers.every((m: number) => m === 1), 'no scores: every multiplier is 1');
    }
  }
});
