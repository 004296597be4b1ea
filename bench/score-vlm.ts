/**
 * `aspo score --vlm` benchmark: the whole stage (DuckDB reads and writes, image decoding, chat template, processor,
 * tokenization with offsets, sentence sums) against the bare model calls it makes (vision encoder, embed_tokens +
 * image merge + decoder on the very same batches), replayed in the same run. The model is random, in the SmolVLM
 * layout of the test fixture, with about the compute of SmolVLM-256M:
 *  - vision: a 512×512 crop in 16×16 patches (1,024 tokens), `--vision-layers` residual MLP blocks of width 768→3072
 *    (the FLOPs of SigLIP-B/16's 12 layers with attention: 14 by default; shared weights, so the file stays small),
 *    the 1,024 tokens grouped 16 at a time into 64 image slots and projected to 576; one crop per image (512 px;
 *    SmolVLM's own 2,048-pixel resize would add a 4×4 grid of crops, 17× this vision work);
 *  - decoder: the fixture's transformer, 30 layers of width 576 (9 heads, 3 key/value heads of 64), MLP 2,304 (the
 *    multiply-adds of SmolLM2-135M's gated 1,536), an embedding and LM head of 49,152 rows.
 *
 *   npx tsc -p . && nice -n 5 node dist/bench/score-vlm.js [--pairs 6] [--sentences 5] [--batch-size 4] [--rounds 2]
 *
 * Rounds alternate: a fresh store scored by the stage, then its recorded calls replayed bare; medians over rounds.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { withStore } from '../src/store/store.js';
import { scoreVlm, VisionLanguageScorer, type VlmModelCall } from '../src/score/vlm.js';
import { Rng } from '../src/util/random.js';
import { encodeOnnxModel, ONNX_FLOAT, type OnnxTensor } from '../test/onnx-writer.js';
import { FIXTURE_WORDS, noisePng, writeTinySmolVlm, writeVlmStore, type FixturePair } from '../test/vlm-fixture.js';

const CROP = 512;
const PATCH = 16;
const SLOTS = 64;
const HIDDEN = 576;

function random(name: string, dims: number[], rng: Rng): OnnxTensor {
  const n = dims.reduce((a, b) => a * b, 1);
  const scale = 1 / Math.sqrt(dims[dims.length - 2] ?? dims[0]!);
  return { name, dims, data: Float32Array.from({ length: n }, () => (rng.next() * 2 - 1) * scale) };
}

/** The SmolVLM fixture with SmolVLM-256M's sizes, and a vision encoder of its compute. */
function writeComputeSmolVlm(dir: string, visionLayers: number): void {
  writeTinySmolVlm(dir, {
    dims: { hidden: HIDDEN, heads: 9, kvHeads: 3, headDim: 64, layers: 30, mlp: 2304, positions: 2048, imageSize: CROP, patch: PATCH, visionHidden: 768 },
    vocabSize: 49152,
  });
  const rng = new Rng(7);
  const n = CROP / PATCH;
  const nodes = [
    { op: 'Reshape', inputs: ['pixel_values', 'patch_shape'], outputs: ['grid'] },
    { op: 'Transpose', inputs: ['grid'], outputs: ['grid_t'], attributes: { perm: [0, 2, 4, 1, 3, 5] } },
    { op: 'Reshape', inputs: ['grid_t', 'token_shape'], outputs: ['patches'] },
    { op: 'MatMul', inputs: ['patches', 'patch_proj'], outputs: ['x0'] },
  ];
  for (let l = 0; l < visionLayers; l++) {
    nodes.push(
      { op: 'MatMul', inputs: [`x${l}`, 'w1'], outputs: [`h${l}`] },
      { op: 'Relu', inputs: [`h${l}`], outputs: [`r${l}`] },
      { op: 'MatMul', inputs: [`r${l}`, 'w2'], outputs: [`o${l}`] },
      { op: 'Add', inputs: [`x${l}`, `o${l}`], outputs: [`x${l + 1}`] },
    );
  }
  nodes.push(
    { op: 'Reshape', inputs: [`x${visionLayers}`, 'slot_shape'], outputs: ['grouped'] },
    { op: 'MatMul', inputs: ['grouped', 'projector'], outputs: ['image_features'] },
  );
  const i64 = (name: string, values: number[]): OnnxTensor => ({ name, dims: [values.length], data: BigInt64Array.from(values.map(BigInt)) });
  writeFileSync(path.join(dir, 'onnx', 'vision_encoder.onnx'), encodeOnnxModel({
    name: 'smolvlm_256m_compute_vision', opset: 12,
    inputs: [
      { name: 'pixel_values', elemType: ONNX_FLOAT, shape: ['batch_size', 'num_images', 3, CROP, CROP] },
      { name: 'pixel_attention_mask', elemType: 9, shape: ['batch_size', 'num_images', CROP, CROP] },
    ],
    outputs: [{ name: 'image_features', elemType: ONNX_FLOAT, shape: ['num_crops', SLOTS, HIDDEN] }],
    initializers: [
      i64('patch_shape', [-1, 3, n, PATCH, n, PATCH]), i64('token_shape', [-1, n * n, 3 * PATCH * PATCH]),
      i64('slot_shape', [-1, SLOTS, (n * n / SLOTS) * 768]),
      random('patch_proj', [3 * PATCH * PATCH, 768], rng), random('w1', [768, 3072], rng), random('w2', [3072, 768], rng),
      random('projector', [(n * n / SLOTS) * 768, HIDDEN], rng),
    ],
    nodes,
  }));
  writeFileSync(path.join(dir, 'processor_config.json'), JSON.stringify({ processor_class: 'SmolVLMProcessor', image_seq_len: SLOTS }));
  // One 512-pixel crop per image (SmolVLM's own size.longest_edge of 2048 would add a 4×4 grid of crops).
  writeFileSync(path.join(dir, 'preprocessor_config.json'), JSON.stringify({
    processor_class: 'SmolVLMProcessor', image_processor_type: 'SmolVLMImageProcessor',
    do_convert_rgb: true, do_image_splitting: true, do_normalize: true, do_pad: false, do_rescale: true, do_resize: true,
    image_mean: [0.5, 0.5, 0.5], image_std: [0.5, 0.5, 0.5], max_image_size: { longest_edge: CROP },
    resample: 1, rescale_factor: 1 / 255, size: { longest_edge: CROP },
  }));
}

interface Round {
  sentences: number; responses: number; stageSeconds: number; visionSeconds: number; decoderSeconds: number;
  bareSeconds: number; visionCalls: number; decoderCalls: number;
}

async function round(vlm: VisionLanguageScorer, file: string, pairs: FixturePair[], images: Record<string, Buffer>, batchSize: number): Promise<Round> {
  await writeVlmStore(file, images, pairs);
  return withStore(file, async (store) => {
    const calls: VlmModelCall[] = [];
    const s = await scoreVlm(store, vlm, { batchSize, onModelCall: (call) => calls.push(call) });
    const t0 = performance.now();
    for (const call of calls) {
      if (call.kind === 'vision') await vlm.imageFeatures(call.images);
      else await vlm.logits(call.rows);
    }
    return {
      sentences: s.sentences, responses: s.responses, stageSeconds: s.seconds, visionSeconds: s.visionSeconds,
      decoderSeconds: s.decoderSeconds, bareSeconds: (performance.now() - t0) / 1000, visionCalls: s.visionCalls, decoderCalls: s.decoderCalls,
    };
  });
}

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: {
    pairs: { type: 'string', default: '6' }, sentences: { type: 'string', default: '5' }, 'batch-size': { type: 'string', default: '4' },
    rounds: { type: 'string', default: '2' }, 'vision-layers': { type: 'string', default: '14' },
  } });
  const n = Number(values.pairs);
  const batchSize = Number(values['batch-size']);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'aspo-bench-vlm-'));
  try {
    const modelDir = path.join(dir, 'smolvlm-256m-compute');
    writeComputeSmolVlm(modelDir, Number(values['vision-layers']));
    const vlm = await VisionLanguageScorer.load(modelDir, { device: 'cpu' });
    const rng = new Rng(42);
    const words = FIXTURE_WORDS.filter((w) => /^[a-z]+$/.test(w));
    const sentence = () => `The ${Array.from({ length: 8 + rng.int(6) }, () => words[rng.int(words.length)]).join(' ')}.`;
    const response = () => Array.from({ length: Number(values.sentences) }, sentence).join(' ');
    const images: Record<string, Buffer> = {};
    for (let i = 0; i < n; i++) images[`img-${i}`] = await noisePng(CROP, CROP, i);
    const pairs: FixturePair[] = Array.from({ length: n }, (_, i) => [`pair-${i}`, `img-${i}`, 'Describe this image.', response(), response()]);
    // Warm-up: the first calls allocate ONNX Runtime's buffers.
    await round(vlm, path.join(dir, 'warm.duckdb'), pairs.slice(0, 1), images, batchSize);
    console.log(`${n} pairs (512×512 PNG each), ${values.sentences} sentences per response, batch ${batchSize}; Node ${process.version}, ` +
      `${os.availableParallelism()} cores, load ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
    const rounds: Round[] = [];
    for (let r = 0; r < Number(values.rounds); r++) rounds.push(await round(vlm, path.join(dir, `round-${r}.duckdb`), pairs, images, batchSize));
    await vlm.dispose();
    const r0 = rounds[0]!;
    console.log('| sentences | responses | vision calls | forward passes | stage sentences/s | bare sentences/s | stage / bare, per round | median | vision : decoder time | peak RSS |');
    console.log('| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: |');
    const vision = median(rounds.map((r) => r.visionSeconds / (r.visionSeconds + r.decoderSeconds)));
    console.log(`| ${r0.sentences} | ${r0.responses} | ${r0.visionCalls} | ${r0.decoderCalls} | ${median(rounds.map((r) => r.sentences / r.stageSeconds)).toFixed(2)} | ` +
      `${median(rounds.map((r) => r.sentences / r.bareSeconds)).toFixed(2)} | ${rounds.map((r) => (r.bareSeconds / r.stageSeconds).toFixed(2)).join(', ')} | ` +
      `${median(rounds.map((r) => r.bareSeconds / r.stageSeconds)).toFixed(2)} | ${(100 * vision).toFixed(0)}% : ${(100 - 100 * vision).toFixed(0)}% | ` +
      `${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MB |`);
    console.error(`seconds per round — stage ${rounds.map((r) => r.stageSeconds.toFixed(1)).join(', ')}; vision ${rounds.map((r) => r.visionSeconds.toFixed(1)).join(', ')}; ` +
      `decoder ${rounds.map((r) => r.decoderSeconds.toFixed(1)).join(', ')}; bare ${rounds.map((r) => r.bareSeconds.toFixed(1)).join(', ')}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
