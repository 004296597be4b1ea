import { initBackend, tf } from '../dist/src/train/backend.js';
import { VisionLanguageModel } from '../dist/src/train/model.js';
import { AdamW } from '../dist/src/train/optimizer.js';
import { sftLoss, DEFAULT_SFT_OPTIONS } from '../dist/src/train/sft.js';
import { Rng } from '../dist/src/util/random.js';
await initBackend('wasm');
const config = { ...DEFAULT_SFT_OPTIONS.model, vocabSize: 512, context: 96 };
const model = VisionLanguageModel.init(config, 1);
const opt = new AdamW(model.weights);
const rng = new Rng(1);
const make = (B) => ({
  images: Array.from({ length: B }, () => Float32Array.from({ length: 48 * 48 * 3 }, () => rng.next() * 2 - 1)),
  promptIds: Array.from({ length: B }, () => Array.from({ length: 8 }, () => 4 + Math.floor(rng.next() * 500))),
  responseIds: Array.from({ length: B }, () => Array.from({ length: 48 }, () => 4 + Math.floor(rng.next() * 500))),
});
const names = new Map(Object.entries(model.weights).map(([n, w]) => [w.name, n]));
async function step(batch) {
  const t = performance.now();
  const { value, grads } = tf.variableGrads(() => sftLoss(model, batch), Object.values(model.weights));
  const g = Object.fromEntries(Object.entries(grads).map(([k, v]) => [names.get(k), v]));
  opt.apply(g, 1e-4); await value.data(); tf.dispose([value, ...Object.values(grads)]);
  return performance.now() - t;
}
for (const B of [32, 16, 32, 16, 32, 16]) {
  const batch = make(B); await step(batch);
  const ts = []; for (let i = 0; i < 5; i++) ts.push(await step(batch));
  ts.sort((a, b) => a - b); console.log('batch', B, 'median ms', ts[2].toFixed(0));
}
