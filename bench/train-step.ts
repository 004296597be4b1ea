/**
 * Benchmark: preference training steps, DPO and sentence-level ASPO, timed interleaved in one run. One step =
 * policy forward over the 32 chosen and 32 rejected responses, reference forward over the same (no gradient),
 * the loss, backward, AdamW update — `PreferenceTrainer.trainStep`, the trainer's own code, metrics read-back
 * included. Model: the benchmark configuration of the model issue (bench/model.ts: 64×64 image → 16 patch tokens,
 * vocabulary 512, width 128, 4 layers, 4 heads, MLP 4×, context 96). Pairs: 10 prompt tokens, chosen and rejected
 * responses of 60 tokens each, the chosen one in 4 sentences with a similarity each; ASPO uses the default loss
 * options (α 0.5: similarity and per-step policy perplexity). Reference: a PyTorch CPU implementation of the same
 * step reaches about 50 pairs/s on this 2-core machine with ASPO/DPO = 1.01; targets ≥ 0.5× and ASPO/DPO ≤ 1.05.
 * With `--workers N` (default 1) each objective also runs with N gradient workers (data parallelism, parallel.ts),
 * timed interleaved with the single-thread trainers: the speed-up target on 2 cores is ≥ 1.8×.
 *
 *   npx tsc -p . && node dist/bench/train-step.js [--steps 5] [--backend wasm] [--workers 1]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { initBackend, type BackendName } from '../src/model/backend.js';
import { saveCheckpoint, loadModel } from '../src/model/checkpoint.js';
import { lossConfig } from '../src/train/loss.js';
import { DEFAULT_MODEL_CONFIG, VisionLanguageModel } from '../src/model/model.js';
import { DEFAULT_PREFERENCE_OPTIONS, PreferenceTrainer, type PreferenceObjective } from '../src/train/preference.js';
import { Tokenizer } from '../src/model/tokenizer.js';
import type { ShardManifest, ShardPair, ShardSet } from '../src/shard/types.js';
import { Rng } from '../src/util/random.js';

const REFERENCE_PAIRS_PER_S = 50;
const BATCH = 32;
const PROMPT = 10;
const SENTENCES = 4;
const SENTENCE_TOKENS = 15; // 60-token responses: BOS + 10 + 60 = 71 of the 80 text positions

const { values } = parseArgs({
  options: { steps: { type: 'string', default: '5' }, backend: { type: 'string', default: 'wasm' }, workers: { type: 'string', default: '1' } },
});
const steps = Number(values.steps);
const workers = Number(values.workers);
const backend = await initBackend(values.backend as BackendName);

const dir = mkdtempSync(path.join(os.tmpdir(), 'aspo-bench-train-'));
const rng = new Rng(1);
// A 512-token vocabulary (the benchmark configuration): more distinct words than fit.
const tokenizer = Tokenizer.build([Array.from({ length: 700 }, (_, i) => `w${i}`).join(' ')], { vocabSize: 512 });
const config = { ...DEFAULT_MODEL_CONFIG, vocabSize: tokenizer.vocabSize };
const initial = VisionLanguageModel.init(config, 1);
const refDir = path.join(dir, 'ref');
await saveCheckpoint(refDir, { config, tokenizer, weights: await initial.values() });
initial.dispose();
const ref = await loadModel(refDir);
ref.model.dispose();

const images = new Map<string, Uint8Array>();
for (let i = 0; i < BATCH; i++) {
  const raw = Buffer.from(Array.from({ length: 64 * 64 * 3 }, () => Math.floor(rng.next() * 256)));
  images.set(`image${i}`, await sharp(raw, { raw: { width: 64, height: 64, channels: 3 } }).png().toBuffer());
}
const token = () => 4 + Math.floor(rng.next() * (tokenizer.vocabSize - 4));
const pairs: ShardPair[] = Array.from({ length: 2 * BATCH }, (_, i) => ({
  pairId: `pair${i}`,
  imageId: `image${i % BATCH}`,
  promptIds: Array.from({ length: PROMPT }, token),
  chosenIds: Array.from({ length: SENTENCES * SENTENCE_TOKENS }, token),
  rejectedIds: Array.from({ length: SENTENCES * SENTENCE_TOKENS }, token),
  chosenSentenceIds: Array.from({ length: SENTENCES * SENTENCE_TOKENS }, (_, t) => Math.floor(t / SENTENCE_TOKENS)),
  rejectedSentenceIds: Array.from({ length: SENTENCES * SENTENCE_TOKENS }, (_, t) => Math.floor(t / SENTENCE_TOKENS)),
  chosenSimilarity: Array.from({ length: SENTENCES }, () => rng.next()),
  chosenRefLogps: null,
  rejectedRefLogps: null,
  truncated: false,
}));
const manifest: ShardManifest = {
  format: 'aspo-shards/1', tokenizer: ref.modelId, referenceModel: null, similarityModel: 'bench', options: {},
  counts: { train: pairs.length, eval: 0, dropped: 0, truncated: 0, images: images.size }, fingerprint: 'bench',
  shards: [], images: null, createdAt: new Date().toISOString(),
};
const shardSet: ShardSet = {
  dir: 'memory', manifest,
  async *pairs(split) { if (split === 'train') yield* pairs; },
  images: async () => images,
  verify: async () => undefined,
};

async function trainer(objective: PreferenceObjective, extraThreads = 0): Promise<PreferenceTrainer> {
  const t = await PreferenceTrainer.create({
    ...DEFAULT_PREFERENCE_OPTIONS, objective, shards: 'memory', ref: refDir, out: path.join(dir, objective),
    loss: lossConfig({ lossType: objective }), batchSize: BATCH, steps: 1000, warmupSteps: 0,
  }, shardSet);
  await t.useWorkers(extraThreads, backend);
  return t;
}

function median(list: number[]): number {
  const sorted = [...list].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

console.log(`Preference step benchmark — Node ${process.version}, ${os.cpus().length} cores (${os.cpus()[0]?.model}), ` +
  `backend ${backend}, load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
const dpo = await trainer('dpo');
const aspo = await trainer('aspo');
console.log(`model ${dpo.policy.parameterCount.toLocaleString('en-US')} parameters; batch ${BATCH} pairs × (${PROMPT} prompt + ` +
  `${SENTENCES * SENTENCE_TOKENS} chosen + ${SENTENCES * SENTENCE_TOKENS} rejected tokens); reference log-probs: ${dpo.refSource}`);
/** Wall-clock and CPU seconds of one step: on a shared machine the CPU time is what the step itself costs. */
const timed = async (t: PreferenceTrainer) => {
  const start = performance.now();
  const cpu = process.cpuUsage();
  await t.trainStep();
  const used = process.cpuUsage(cpu);
  return { wall: (performance.now() - start) / 1000, cpu: (used.user + used.system) / 1e6 };
};
const warm = [await timed(dpo), await timed(aspo)];
console.log(`first step (warm-up): DPO ${warm[0]!.wall.toFixed(2)} s, ASPO ${warm[1]!.wall.toFixed(2)} s`);
const times: Record<PreferenceObjective, Array<{ wall: number; cpu: number }>> = { dpo: [], aspo: [] };
for (let i = 0; i < steps; i++) {
  // Alternate which goes first, so drifting machine load falls on both alike.
  const order: PreferenceObjective[] = i % 2 === 0 ? ['dpo', 'aspo'] : ['aspo', 'dpo'];
  for (const objective of order) times[objective].push(await timed(objective === 'dpo' ? dpo : aspo));
}
for (const clock of ['wall', 'cpu'] as const) {
  console.log(`\n${clock === 'wall' ? 'wall-clock' : 'CPU time (user + system of this process)'}:`);
  const rate = (objective: PreferenceObjective) => BATCH / median(times[objective].map((t) => t[clock]));
  for (const objective of ['dpo', 'aspo'] as const) {
    const list = times[objective].map((t) => t[clock]);
    console.log(`  ${objective.toUpperCase().padEnd(4)} step median of ${steps}: ${median(list).toFixed(2)} s [${list.map((t) => t.toFixed(2)).join(', ')}]  ` +
      `${rate(objective).toFixed(1)} pairs/s  ${(rate(objective) / REFERENCE_PAIRS_PER_S).toFixed(3)}× the PyTorch reference (target ≥ 0.5×)`);
  }
  const ratios = times.aspo.map((t, i) => t[clock] / times.dpo[i]![clock]);
  console.log(`  ASPO/DPO step time: ratio of medians ${(rate('dpo') / rate('aspo')).toFixed(3)}, median of the ${steps} paired ratios ` +
    `${median(ratios).toFixed(3)} (target ≤ 1.05; PyTorch reference 1.01)`);
}
if (workers > 0) {
  // Data parallelism: the same steps with `workers` gradient workers, interleaved with one thread. CPU time now
  // sums every thread, so only the wall clock says how much sooner a step ends.
  const parallel = { dpo: await trainer('dpo', workers), aspo: await trainer('aspo', workers) };
  const parallelWarm = [await timed(parallel.dpo), await timed(parallel.aspo)];
  console.log(`\n${1 + workers} threads (${workers} gradient worker${workers > 1 ? 's' : ''}); first step (warm-up): ` +
    `DPO ${parallelWarm[0]!.wall.toFixed(2)} s, ASPO ${parallelWarm[1]!.wall.toFixed(2)} s`);
  const wall = { single: { dpo: [] as number[], aspo: [] as number[] }, parallel: { dpo: [] as number[], aspo: [] as number[] } };
  for (let i = 0; i < steps; i++) {
    for (const objective of ['dpo', 'aspo'] as const) {
      const order = i % 2 === 0 ? (['single', 'parallel'] as const) : (['parallel', 'single'] as const);
      for (const how of order) wall[how][objective].push((await timed(how === 'single' ? (objective === 'dpo' ? dpo : aspo) : parallel[objective])).wall);
    }
  }
  for (const objective of ['dpo', 'aspo'] as const) {
    const one = wall.single[objective];
    const many = wall.parallel[objective];
    const paired = one.map((t, i) => t / many[i]!);
    console.log(`  ${objective.toUpperCase().padEnd(4)} 1 thread ${median(one).toFixed(2)} s [${one.map((t) => t.toFixed(2)).join(', ')}], ` +
      `${1 + workers} threads ${median(many).toFixed(2)} s [${many.map((t) => t.toFixed(2)).join(', ')}]: ` +
      `${(BATCH / median(many)).toFixed(1)} pairs/s, speed-up ${(median(one) / median(many)).toFixed(2)}× (ratio of medians), ` +
      `${median(paired).toFixed(2)}× (median paired ratio; target ≥ 1.8× on 2 cores)`);
  }
  parallel.dpo.dispose();
  parallel.aspo.dispose();
}
console.log(`load average at the end ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
dpo.dispose();
aspo.dispose();
rmSync(dir, { recursive: true, force: true });
