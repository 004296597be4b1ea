/**
 * Score-stage benchmark: sentences/s of `scoreSimilarity` (DuckDB reads and writes, cache, image decoding and
 * preprocessing, tokenisation, model calls) against the bare model calls on the very same batches, replayed in the
 * same run (the ceiling). Two models, both written on the fly in the transformers.js CLIP layout:
 *  - tiny: the 4-dimensional test fixture (8×8 input): the model costs next to nothing, so this measures overhead;
 *  - clip-b32-compute: random weights with about the compute of CLIP ViT-B/32 (32×32 patches of a 224×224 image,
 *    `--layers` residual MLP blocks of width 768→3072 for vision and 512→2048 for text), so the model dominates
 *    as it does with a real CLIP.
 *
 *   npx tsc -p . && node dist/bench/score.js [--images 32] [--sentences 8] [--layers 12] [--batch-size 32] [--rounds 3]
 *
 * Each round builds a fresh store, runs the stage, then replays its model calls; medians over the rounds.
 */
import { Rng } from '../src/util/random.js';
import '../src/schema.js'; // every stage's tables, for the store
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import type { Tensor as HfTensor } from '@huggingface/transformers';
import { withStore, type Store } from '../src/store/store.js';
import { segmentStage } from '../src/segment/stage.js';
import { ClipEncoder, type TextBatch } from '../src/score/clip.js';
import { scoreSimilarity } from '../src/score/stage.js';
import { writeTinyClip } from '../test/clip-fixture.js';
import { writeComputeClip } from '../test/clip-compute-fixture.js';


const COLORS = ['red', 'green', 'blue', 'yellow', 'dark'];
const NOUNS = ['car', 'dog', 'bench', 'tree', 'lamp', 'cup', 'kite', 'bus', 'sign', 'boat'];

/** A store with `images` JPEG photos-sized images (512×384 noise) and one pair each, segmented. */
async function buildStore(store: Store, images: number, sentences: number): Promise<void> {
  const rng = new Rng(42);
  const next = () => rng.next();
  const pick = <T>(items: T[]): T => items[Math.floor(next() * items.length)]!;
  const sentence = (i: number) => `A photo of a ${pick(COLORS)} ${pick(NOUNS)} number ${i} near the ${pick(COLORS)} square.`;
  for (let i = 0; i < images; i++) {
    const bytes = await sharp({ create: { width: 512, height: 384, channels: 3, background: { r: 0, g: 0, b: 0 }, noise: { type: 'gaussian', mean: 128, sigma: 40 } } })
      .jpeg({ quality: 85 }).toBuffer();
    const id = `${i.toString(16).padStart(8, '0')}${'0'.repeat(56)}`;
    await store.append('images', ['varchar', 'varchar', 'integer', 'integer', 'integer', 'integer', 'varchar', 'bigint', 'blob', 'varchar'],
      [[id, id, 512, 384, 512, 384, 'jpeg', bytes.length, bytes, '<bench>']]);
    const chosen = Array.from({ length: sentences }, (_, s) => sentence(i * 1000 + s)).join(' ');
    const rejected = Array.from({ length: sentences }, (_, s) => sentence(i * 1000 + 500 + s)).join(' ');
    await store.run(`INSERT INTO pairs (pair_id, source, source_row, format, prompt, chosen, rejected, image_id)
      VALUES (?, 'bench', ?, 'jsonl', 'Describe the image.', ?, ?, ?)`, [`pair-${i}`, i, chosen, rejected, id]);
  }
  await segmentStage(store);
}

interface Round { sentences: number; calls: number; stageSeconds: number; modelSecondsInStage: number; bareSeconds: number }

/** One round: a fresh store, the stage on it, then the bare model calls on the very batches the stage made. */
async function round(encoder: ClipEncoder, file: string, options: { images: number; sentences: number; batchSize: number }): Promise<Round> {
  return withStore(file, async (store) => {
    await buildStore(store, options.images, options.sentences);
    const calls: Array<{ kind: 'text'; batch: TextBatch } | { kind: 'image'; pixelValues: HfTensor }> = [];
    const summary = await scoreSimilarity(store, encoder, { batchSize: options.batchSize, onModelCall: (call) => calls.push(call) });
    const t0 = performance.now();
    for (const call of calls) {
      if (call.kind === 'text') await encoder.embedTexts(call.batch);
      else await encoder.embedImages(call.pixelValues);
    }
    return { sentences: summary.sentences, calls: calls.length, stageSeconds: summary.seconds, modelSecondsInStage: summary.modelSeconds, bareSeconds: (performance.now() - t0) / 1000 };
  });
}

async function measure(label: string, modelDir: string, options: { images: number; sentences: number; batchSize: number; rounds: number }, dir: string): Promise<Round[]> {
  const encoder = await ClipEncoder.load(modelDir, { device: 'cpu' });
  try {
    // Warm-up: first calls allocate ONNX Runtime's buffers.
    const warm = await encoder.preprocessImages([await sharp({ create: { width: 64, height: 64, channels: 3, background: { r: 128, g: 128, b: 128 } } }).png().toBuffer()]);
    await encoder.embedImages(warm.pixelValues!);
    await encoder.embedTexts(encoder.tokenize(['a red square']));
    const rounds: Round[] = [];
    for (let r = 0; r < options.rounds; r++) rounds.push(await round(encoder, path.join(dir, `${label}-${r}.duckdb`), options));
    return rounds;
  } finally {
    await encoder.dispose();
  }
}

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: {
    images: { type: 'string', default: '32' }, sentences: { type: 'string', default: '8' },
    layers: { type: 'string', default: '12' }, 'batch-size': { type: 'string', default: '32' }, rounds: { type: 'string', default: '3' },
  } });
  const options = { images: Number(values.images), sentences: Number(values.sentences), batchSize: Number(values['batch-size']), rounds: Number(values.rounds) };
  const dir = mkdtempSync(path.join(os.tmpdir(), 'aspo-bench-score-'));
  try {
    const tiny = writeTinyClip(path.join(dir, 'tiny'));
    const compute = writeComputeClip(path.join(dir, 'clip-b32-compute'), Number(values.layers));
    console.log(`${options.images} images (512×384 JPEG), ${options.sentences} sentences per response, batch ${options.batchSize}; ` +
      `Node ${process.version}, ${os.availableParallelism()} cores, load ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
    console.log('| model | sentences | model calls | stage sentences/s | bare model sentences/s | stage / bare, per round | median |');
    console.log('| --- | ---: | ---: | ---: | ---: | --- | ---: |');
    for (const [label, modelDir] of [['tiny', tiny], ['clip-b32-compute', compute]] as const) {
      const rounds = await measure(label, modelDir, options, dir);
      const stage = rounds.map((r) => r.sentences / r.stageSeconds);
      const bare = rounds.map((r) => r.sentences / r.bareSeconds);
      const ratios = rounds.map((r) => r.bareSeconds / r.stageSeconds);
      console.log(`| ${label} | ${rounds[0]!.sentences} | ${rounds[0]!.calls} | ${median(stage).toFixed(1)} | ${median(bare).toFixed(1)} | ` +
        `${ratios.map((x) => x.toFixed(2)).join(', ')} | ${median(ratios).toFixed(2)} |`);
      console.error(`${label}: seconds per round — stage ${rounds.map((r) => r.stageSeconds.toFixed(2)).join(', ')}; ` +
        `model calls inside the stage ${rounds.map((r) => r.modelSecondsInStage.toFixed(2)).join(', ')}; bare ${rounds.map((r) => r.bareSeconds.toFixed(2)).join(', ')}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
