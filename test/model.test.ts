import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { initBackend, tf } from '../src/model/backend.js';
import {
  causalSoftmax, dense, DEFAULT_MODEL_CONFIG, gelu, layerNorm, layoutBatch, matMulFast, neighbourhoods3x3, parameterShapes, sampleToken, VisionLanguageModel, type ModelConfig,
} from '../src/model/model.js';
import { BOS_ID, EOS_ID } from '../src/model/tokenizer.js';
import { Rng } from '../src/util/random.js';

before(async () => {
  await initBackend('auto');
});

const TINY: ModelConfig = {
  vocabSize: 40, width: 16, layers: 1, heads: 2, mlpRatio: 2, context: 4 + 12, imageSize: 8, patchSize: 4, channels: 3, stemChannels: 0,
};

function randomImage(seed: number, config = TINY): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: config.imageSize * config.imageSize * config.channels }, () => rng.next() * 2 - 1);
}

function imagesTensor(images: Float32Array[], config = TINY): tf.Tensor4D {
  const per = config.imageSize * config.imageSize * config.channels;
  const data = new Float32Array(images.length * per);
  images.forEach((img, i) => data.set(img, i * per));
  return tf.tensor4d(data, [images.length, config.imageSize, config.imageSize, config.channels]);
}

async function logProbs(model: VisionLanguageModel, batch: Parameters<VisionLanguageModel['responseLogProbs']>[0]) {
  const { logps, mask } = model.responseLogProbs(batch);
  const out = { logps: (await logps.array()) as number[][], mask: (await mask.array()) as number[][], shape: logps.shape };
  tf.dispose([logps, mask]);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// An independent float64 forward pass, written from the architecture's description with plain loops.

type Vec = Float64Array;

function layerNorm64(x: Vec, g: Float32Array, b: Float32Array): Vec {
  const n = x.length;
  const mean = x.reduce((a, v) => a + v, 0) / n;
  const variance = x.reduce((a, v) => a + (v - mean) ** 2, 0) / n;
  return x.map((v, i) => ((v - mean) / Math.sqrt(variance + 1e-5)) * g[i]! + b[i]!);
}

/** y = x · W + b, W stored row-major [in, out]. */
function affine(x: Vec, w: Float32Array, b: Float32Array | null, out: number): Vec {
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let s = b ? b[o]! : 0;
    for (let i = 0; i < x.length; i++) s += x[i]! * w[i * out + o]!;
    y[o] = s;
  }
  return y;
}

function referenceLogProbs(config: ModelConfig, w: Record<string, Float32Array>, image: Float32Array | null,
  prompt: number[], response: number[]): number[] {
  const d = config.width;
  const g = config.imageSize / config.patchSize;
  const nVis = g * g;
  // The image as a feature map: the pixels, or the output of the convolutional stem.
  let c = config.channels;
  let p = config.patchSize;
  let map = (y: number, x: number, ch: number) => image![(y * config.imageSize + x) * config.channels + ch]!;
  if (config.stemChannels > 0 && image) {
    const m = config.imageSize / 4;
    const k = config.stemChannels;
    const geluOf = (u: number) => 0.5 * u * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (u + 0.044715 * u ** 3)));
    const first: Vec[] = [];
    for (let y = 0; y < m; y++) {
      for (let x = 0; x < m; x++) {
        const block = new Float64Array(16 * config.channels);
        for (let dy = 0; dy < 4; dy++) for (let dx = 0; dx < 4; dx++) for (let ch = 0; ch < config.channels; ch++) {
          block[(dy * 4 + dx) * config.channels + ch] = image[((4 * y + dy) * config.imageSize + 4 * x + dx) * config.channels + ch]!;
        }
        first.push(affine(block, w['stem.w1']!, w['stem.b1']!, k).map(geluOf));
      }
    }
    const second: Vec[] = [];
    for (let y = 0; y < m; y++) {
      for (let x = 0; x < m; x++) {
        const around = new Float64Array(9 * k);
        for (let dy = 0; dy < 3; dy++) for (let dx = 0; dx < 3; dx++) {
          const yy = y + dy - 1;
          const xx = x + dx - 1;
          if (yy < 0 || yy >= m || xx < 0 || xx >= m) continue;
          for (let ch = 0; ch < k; ch++) around[(dy * 3 + dx) * k + ch] = first[yy * m + xx]![ch]!;
        }
        const conv = affine(around, w['stem.w2']!, w['stem.b2']!, k).map(geluOf);
        second.push(conv.map((v, ch) => v + first[y * m + x]![ch]!));
      }
    }
    c = k;
    p = config.patchSize / 4;
    map = (y, x, ch) => second[y * m + x]![ch]!;
  }
  const seq: Vec[] = [];
  for (let k = 0; k < nVis; k++) {
    if (!image) {
      seq.push(Float64Array.from(w['no_image']!.subarray(k * d, (k + 1) * d)));
      continue;
    }
    const gy = Math.floor(k / g);
    const gx = k % g;
    const patch = new Float64Array(p * p * c);
    for (let dy = 0; dy < p; dy++) {
      for (let dx = 0; dx < p; dx++) {
        for (let ch = 0; ch < c; ch++) patch[(dy * p + dx) * c + ch] = map(gy * p + dy, gx * p + dx, ch);
      }
    }
    if (config.patchHidden) {
      // the grid row and column as one-hot features after the patch's own, then a GELU hidden layer
      const withPlace = new Float64Array(patch.length + 2 * g);
      withPlace.set(patch);
      withPlace[patch.length + gy] = 1;
      withPlace[patch.length + g + gx] = 1;
      const geluOf = (u: number) => 0.5 * u * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (u + 0.044715 * u ** 3)));
      const hidden = affine(withPlace, w['patch.hidden.w']!, w['patch.hidden.b']!, config.patchHidden).map(geluOf);
      seq.push(affine(hidden, w['patch.w']!, w['patch.b']!, d));
    } else {
      seq.push(affine(patch, w['patch.w']!, w['patch.b']!, d));
    }
  }

  const inputs = [BOS_ID, ...prompt, ...response];
  const targets = [...prompt, ...response, EOS_ID];
  for (const id of inputs) seq.push(Float64Array.from(w['tok_emb']!.subarray(id * d, (id + 1) * d)));
  let h = seq.map((v, t) => v.map((x, i) => x + w['pos_emb']![t * d + i]!));
  const heads = config.heads;
  const dh = d / heads;
  for (let l = 0; l < config.layers; l++) {
    const pre = `h${l}`;
    const a = h.map((x) => layerNorm64(x, w[`${pre}.ln1.g`]!, w[`${pre}.ln1.b`]!));
    const q = a.map((x) => affine(x, w[`${pre}.attn.wq`]!, w[`${pre}.attn.bq`]!, d));
    const k = a.map((x) => affine(x, w[`${pre}.attn.wk`]!, w[`${pre}.attn.bk`]!, d));
    const v = a.map((x) => affine(x, w[`${pre}.attn.wv`]!, w[`${pre}.attn.bv`]!, d));
    const mixed = h.map(() => new Float64Array(d));
    for (let head = 0; head < heads; head++) {
      for (let t = 0; t < h.length; t++) {
        // an image head's keys are the visual tokens only
        const last = head < (config.imageHeads ?? 0) ? Math.min(t, nVis - 1) : t;
        const scores: number[] = [];
        for (let s = 0; s <= last; s++) {
          let dot = 0;
          for (let i = head * dh; i < (head + 1) * dh; i++) dot += q[t]![i]! * k[s]![i]!;
          scores.push(dot / Math.sqrt(dh));
        }
        const max = Math.max(...scores);
        const e = scores.map((x) => Math.exp(x - max));
        const z = e.reduce((x, y) => x + y, 0);
        for (let s = 0; s <= last; s++) {
          for (let i = head * dh; i < (head + 1) * dh; i++) mixed[t]![i]! += (e[s]! / z) * v[s]![i]!;
        }
      }
    }
    h = h.map((x, t) => {
      const attn = affine(mixed[t]!, w[`${pre}.attn.wo`]!, w[`${pre}.attn.bo`]!, d);
      return x.map((y, i) => y + attn[i]!);
    });
    h = h.map((x) => {
      const hidden = affine(layerNorm64(x, w[`${pre}.ln2.g`]!, w[`${pre}.ln2.b`]!), w[`${pre}.mlp.w1`]!, w[`${pre}.mlp.b1`]!, config.mlpRatio * d)
        .map((u) => 0.5 * u * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (u + 0.044715 * u ** 3))));
      const out = affine(hidden, w[`${pre}.mlp.w2`]!, w[`${pre}.mlp.b2`]!, d);
      return x.map((y, i) => y + out[i]!);
    });
  }
  const result: number[] = [];
  for (let j = 0; j <= response.length; j++) {
    const t = nVis + prompt.length + j; // the position reading the token before response token j
    const final = layerNorm64(h[t]!, w['ln_f.g']!, w['ln_f.b']!);
    const logits = Array.from({ length: config.vocabSize }, (_, id) => {
      let s = 0;
      for (let i = 0; i < d; i++) s += final[i]! * w['tok_emb']![id * d + i]!;
      return s;
    });
    const max = Math.max(...logits);
    const logZ = max + Math.log(logits.reduce((a, x) => a + Math.exp(x - max), 0));
    result.push(logits[targets[prompt.length + j]!]! - logZ);
  }
  return result;
}

// ---------------------------------------------------------------------------------------------------------------

test('the benchmark configuration has the issue\'s ≈0.97 M parameters', () => {
  const config = { ...DEFAULT_MODEL_CONFIG, vocabSize: 512 };
  const model = VisionLanguageModel.init(config, 1);
  const d = 128;
  const perLayer = 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 4 * d;
  const expected = 512 * d + 96 * d + (16 * 16 * 3 * d + d) + 16 * d + 4 * perLayer + 2 * d;
  assert.equal(model.parameterCount, expected);
  assert.ok(Math.abs(expected - 0.97e6) < 0.01e6);
  model.dispose();
});

for (const [stemChannels, patchHidden, imageHeads] of [[0, 0, 0], [3, 0, 0], [0, 5, 0], [3, 5, 0], [3, 0, 1], [0, 5, 2]] as const) test(`log-probs match an independent float64 forward pass (with image, without image; stem ${stemChannels}, patch hidden ${patchHidden}, image heads ${imageHeads})`, async () => {
  const config = { ...TINY, layers: 2, imageSize: 16, patchSize: 8, stemChannels, patchHidden, imageHeads };
  const model = VisionLanguageModel.init(config, 7);
  const weights = await model.values();
  const image = randomImage(3, config);
  const prompt = [5, 9, 11];
  const response = [20, 21, 22, 23];
  const withImage = await logProbs(model, { images: imagesTensor([image], config), promptIds: [prompt], responseIds: [response] });
  const noImage = await logProbs(model, { images: null, promptIds: [prompt], responseIds: [response] });
  const expectedWith = referenceLogProbs(config, weights, image, prompt, response);
  const expectedWithout = referenceLogProbs(config, weights, null, prompt, response);
  assert.equal(withImage.logps[0]!.length, response.length + 1);
  withImage.logps[0]!.forEach((v, j) => assert.ok(Math.abs(v - expectedWith[j]!) < 1e-4, `token ${j}: ${v} vs ${expectedWith[j]}`));
  noImage.logps[0]!.forEach((v, j) => assert.ok(Math.abs(v - expectedWithout[j]!) < 1e-4, `token ${j}: ${v} vs ${expectedWithout[j]}`));
  model.dispose();
});

test('imageHeads 0 is the model without image heads: same weights, same log-probs', async () => {
  const without = VisionLanguageModel.init(TINY, 9);
  const zero = VisionLanguageModel.init({ ...TINY, imageHeads: 0 }, 9);
  assert.deepEqual(parameterShapes(zero.config), parameterShapes(without.config));
  assert.deepEqual(await zero.values(), await without.values());
  const batch = { images: imagesTensor([randomImage(4)]), promptIds: [[5, 6]], responseIds: [[7, 8, 9]] };
  assert.deepEqual((await logProbs(zero, batch)).logps, (await logProbs(without, batch)).logps);
  tf.dispose(batch.images);
  without.dispose();
  zero.dispose();
});

for (const extra of [{}, { imageHeads: 1 }]) test(`shapes and mask of a padded batch; padding never changes a row's log-probs (${JSON.stringify(extra)})`, async () => {
  const model = VisionLanguageModel.init({ ...TINY, ...extra }, 11);
  const rows = [
    { image: randomImage(1), prompt: [5], response: [6, 7] },
    { image: randomImage(2), prompt: [8, 9, 10, 11], response: [12, 13, 14, 15, 16] },
    { image: randomImage(3), prompt: [17, 18], response: [19] },
  ];
  const batched = await logProbs(model, {
    images: imagesTensor(rows.map((r) => r.image)), promptIds: rows.map((r) => r.prompt), responseIds: rows.map((r) => r.response),
  });
  assert.deepEqual(batched.shape, [3, 6]);
  assert.deepEqual(batched.mask, [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]);
  for (const [b, row] of rows.entries()) {
    const alone = await logProbs(model, { images: imagesTensor([row.image]), promptIds: [row.prompt], responseIds: [row.response] });
    const n = row.response.length + 1;
    for (let j = 0; j < n; j++) {
      assert.ok(Math.abs(batched.logps[b]![j]! - alone.logps[0]![j]!) <= 1e-6,
        `row ${b} token ${j}: batched ${batched.logps[b]![j]} vs alone ${alone.logps[0]![j]}`);
    }
    batched.logps[b]!.slice(n).forEach((v) => assert.equal(v, 0));
  }
  model.dispose();
});

test('the image matters: other pixels, other log-probs; rows without image use the no-image prefix', async () => {
  const model = VisionLanguageModel.init(TINY, 5);
  const prompt = [[5, 6], [5, 6], [5, 6]];
  const response = [[7, 8, 9], [7, 8, 9], [7, 8, 9]];
  const result = await logProbs(model, {
    images: imagesTensor([randomImage(1), randomImage(2), randomImage(3)]), hasImage: [true, true, false], promptIds: prompt, responseIds: response,
  });
  const diff = Math.max(...result.logps[0]!.map((v, j) => Math.abs(v - result.logps[1]![j]!)));
  assert.ok(diff > 1e-4, `log-probs barely moved with the image (max diff ${diff})`);
  const textOnly = await logProbs(model, { images: null, promptIds: [prompt[2]!], responseIds: [response[2]!] });
  textOnly.logps[0]!.forEach((v, j) => assert.ok(Math.abs(v - result.logps[2]![j]!) <= 1e-6));
  model.dispose();
});

test('a sequence longer than the context is refused, not truncated', () => {
  const model = VisionLanguageModel.init(TINY, 5);
  assert.throws(() => model.responseLogProbs({ images: null, promptIds: [[5, 6, 7, 8, 9]], responseIds: [[1, 2, 3, 4, 5, 6, 7]] }),
    /exceed the model's 12 text positions/);
  model.dispose();
});

test('layoutBatch places each response right after its prompt', () => {
  const layout = layoutBatch([[5], [6, 7]], [[8, 9], [10]], 10);
  assert.equal(layout.length, 4);
  assert.deepEqual([...layout.inputs], [BOS_ID, 5, 8, 9, BOS_ID, 6, 7, 10]);
  assert.deepEqual([...layout.targets], [5, 8, 9, EOS_ID, 6, 7, 10, EOS_ID]);
  // response column j of row 0 is read at position 1 + j (prompt length 1), of row 1 at 2 + j
  const at = (b: number, j: number) => [...layout.select.subarray((b * 3 + j) * 4, (b * 3 + j + 1) * 4)].indexOf(1);
  assert.deepEqual([at(0, 0), at(0, 1), at(0, 2), at(1, 0), at(1, 1), at(1, 2)], [1, 2, 3, 2, 3, -1]);
});

test('the stem\'s 3×3 neighbourhoods times a matrix are tf.conv2d with "same" padding', () => {
  const rng = new Rng(4);
  const map = tf.tensor4d(Float32Array.from({ length: 2 * 5 * 4 * 3 }, () => rng.normal()), [2, 5, 4, 3]);
  const filter = tf.tensor4d(Float32Array.from({ length: 3 * 3 * 3 * 6 }, () => rng.normal()), [3, 3, 3, 6]);
  const ours = tf.reshape(tf.matMul(tf.reshape(neighbourhoods3x3(map), [-1, 27]), tf.reshape(filter, [27, 6])), [2, 5, 4, 6]);
  const reference = tf.conv2d(map, filter, 1, 'same');
  assert.ok(tf.max(tf.abs(tf.sub(ours, reference))).dataSync()[0]! < 1e-5);
});

test('dense, matMulFast, gelu, layerNorm and causalSoftmax have the gradients of the built-in ops they replace', () => {
  const rng = new Rng(9);
  const t = (shape: number[]) => tf.tensor(Float32Array.from({ length: shape.reduce((a, b) => a * b) }, () => rng.normal()), shape);
  const x = t([6, 5]) as tf.Tensor2D;
  const w = t([5, 4]) as tf.Tensor2D;
  const b = t([4]) as tf.Tensor1D;
  const r = t([6, 4]);
  const ours = tf.grads((x, w, b) => tf.sum(tf.mul(dense(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D), r)))([x, w, b]);
  const builtIn = tf.grads((x, w, b) => tf.sum(tf.mul(tf.add(tf.matMul(x as tf.Tensor2D, w as tf.Tensor2D), b), r)))([x, w, b]);
  ours.forEach((g, i) => assert.ok(tf.max(tf.abs(tf.sub(g, builtIn[i]!))).dataSync()[0]! < 1e-5));
  const oursMm = tf.grads((x, w) => tf.sum(tf.mul(matMulFast(x as tf.Tensor2D, w as tf.Tensor2D), r)))([x, w]);
  const builtInMm = tf.grads((x, w) => tf.sum(tf.mul(tf.matMul(x as tf.Tensor2D, w as tf.Tensor2D), r)))([x, w]);
  oursMm.forEach((g, i) => assert.ok(tf.max(tf.abs(tf.sub(g, builtInMm[i]!))).dataSync()[0]! < 1e-5));
  const geluComposite = (x: tf.Tensor) =>
    tf.mul(tf.mul(x, 0.5), tf.add(1, tf.tanh(tf.mul(tf.add(x, tf.mul(tf.pow(x, 3), 0.044715)), Math.sqrt(2 / Math.PI)))));
  const z = tf.mul(t([6, 4]), 2);
  assert.ok(tf.max(tf.abs(tf.sub(gelu(z), geluComposite(z)))).dataSync()[0]! < 1e-6);
  const oursGelu = tf.grad((x) => tf.sum(tf.mul(gelu(x), r)))(z);
  const builtInGelu = tf.grad((x) => tf.sum(tf.mul(geluComposite(x), r)))(z);
  assert.ok(tf.max(tf.abs(tf.sub(oursGelu, builtInGelu))).dataSync()[0]! < 1e-5);
  const layerNormComposite = (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => {
    const { mean, variance } = tf.moments(x, -1, true);
    return tf.add(tf.mul(tf.div(tf.sub(x, mean), tf.sqrt(tf.add(variance, 1e-5))), g), b);
  };
  const gain = tf.add(t([4]), 1) as tf.Tensor1D;
  const shift = t([4]) as tf.Tensor1D;
  assert.ok(tf.max(tf.abs(tf.sub(layerNorm(z as tf.Tensor2D, gain, shift), layerNormComposite(z, gain, shift)))).dataSync()[0]! < 1e-5);
  const oursLn = tf.grads((x, g, b) => tf.sum(tf.mul(layerNorm(x as tf.Tensor2D, g as tf.Tensor1D, b as tf.Tensor1D), r)))([z, gain, shift]);
  const builtInLn = tf.grads((x, g, b) => tf.sum(tf.mul(layerNormComposite(x, g, b), r)))([z, gain, shift]);
  oursLn.forEach((g, i) => assert.ok(tf.max(tf.abs(tf.sub(g, builtInLn[i]!))).dataSync()[0]! < 1e-4, `layerNorm gradient ${i}`));
  const scores = t([2, 2, 3, 3]) as tf.Tensor4D;
  const mask = tf.tensor2d([0, -1e9, -1e9, 0, 0, -1e9, 0, 0, 0], [3, 3]);
  const r4 = t([2, 2, 3, 3]);
  const softmaxComposite = (x: tf.Tensor) => tf.softmax(tf.add(tf.mul(x, 0.7), mask));
  assert.ok(tf.max(tf.abs(tf.sub(causalSoftmax(scores, 0.7, mask), softmaxComposite(scores)))).dataSync()[0]! < 1e-6);
  const oursSm = tf.grad((x) => tf.sum(tf.mul(causalSoftmax(x as tf.Tensor4D, 0.7, mask), r4)))(scores);
  const builtInSm = tf.grad((x) => tf.sum(tf.mul(softmaxComposite(x), r4)))(scores);
  assert.ok(tf.max(tf.abs(tf.sub(oursSm, builtInSm))).dataSync()[0]! < 1e-5);
});

test('greedy generation picks the most likely next token, and batching does not change it', async () => {
  const model = VisionLanguageModel.init(TINY, 13);
  const image = randomImage(4);
  const prompt = [5, 6, 7];
  const [greedy] = await model.generate({ images: imagesTensor([image]), promptIds: [prompt], maxTokens: 4 });
  // independent check of the first token: score every vocabulary entry as a one-token response
  const candidates = Array.from({ length: TINY.vocabSize }, (_, id) => id);
  const scored = await logProbs(model, {
    images: imagesTensor(candidates.map(() => image)), promptIds: candidates.map(() => prompt), responseIds: candidates.map((id) => [id]),
  });
  const firstTokenLogps = scored.logps.map((row) => row[0]!);
  const best = firstTokenLogps.indexOf(Math.max(...firstTokenLogps));
  const eosBest = firstTokenLogps[EOS_ID]! >= firstTokenLogps[best]!;
  assert.equal(greedy!.length === 0 ? EOS_ID : greedy![0], eosBest ? EOS_ID : best);
  const pair = await model.generate({
    images: imagesTensor([randomImage(8), image]), promptIds: [[9], prompt], maxTokens: 4,
  });
  assert.deepEqual(pair[1], greedy);
  model.dispose();
});

test('sampled generation is reproducible from its seed', async () => {
  const model = VisionLanguageModel.init(TINY, 17);
  const options = { images: null, promptIds: [[5, 6], [7]], maxTokens: 6, temperature: 1.5 };
  const a = await model.generate({ ...options, seed: 1 });
  const b = await model.generate({ ...options, seed: 1 });
  assert.deepEqual(a, b);
  const draws = await Promise.all([2, 3, 4, 5].map((seed) => model.generate({ ...options, seed })));
  assert.ok(draws.some((d) => JSON.stringify(d) !== JSON.stringify(a)), 'different seeds never gave different samples');
  model.dispose();
});

test('nucleus sampling (top-p) draws only from the most likely tokens that first reach p, in their proportions', () => {
  const probabilities = [0.05, 0.5, 0.15, 0.3]; // sorted: token 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)
  const logits = Float32Array.from(probabilities, Math.log);
  const draw = (options: { temperature: number; topK?: number; topP?: number }, n: number) => {
    const rng = new Rng(5);
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < n; i++) counts[sampleToken(logits, options, rng)]!++;
    return counts.map((c) => c / n);
  };
  // p = 0.75: 0.5 is short of it, 0.5 + 0.3 reaches it, so tokens 1 and 3 in the ratio 5 : 3
  const nucleus = draw({ temperature: 1, topP: 0.75 }, 4000);
  assert.deepEqual([nucleus[0], nucleus[2]], [0, 0]);
  assert.ok(Math.abs(nucleus[1]! - 0.625) < 0.03, `token 1: ${nucleus[1]}`);
  // p = 0.5 is reached by the first token alone; p = 1 keeps all, in their probabilities
  assert.deepEqual(draw({ temperature: 1, topP: 0.5 }, 200), [0, 1, 0, 0]);
  draw({ temperature: 1 }, 8000).forEach((f, i) => assert.ok(Math.abs(f - probabilities[i]!) < 0.02, `token ${i}: ${f}`));
  // top-k first, then the nucleus of what is left: k = 3, renormalised 0.5/0.95 alone does not reach 0.9
  assert.equal(draw({ temperature: 1, topK: 3, topP: 0.9 }, 2000)[0], 0);
});

test('initialisation is a function of the seed', async () => {
  const a = await VisionLanguageModel.init(TINY, 3).values();
  const b = await VisionLanguageModel.init(TINY, 3).values();
  const c = await VisionLanguageModel.init(TINY, 4).values();
  for (const [name] of parameterShapes(TINY)) assert.deepEqual(a[name], b[name]);
  assert.notDeepEqual(a['tok_emb'], c['tok_emb']);
});
