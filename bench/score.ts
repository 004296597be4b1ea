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
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import type { Tensor as HfTensor } from '@huggingface/transformers';
import { withStore, type Store } from '../src/store/store.js';
import { segmentStage } from '../src/segment/stage.js';
import { ClipEncoder, type TextBatch } from '../src/score/clip.js';
import { scoreSimilarity } from '../src/score/stage.js';
import { encodeOnnxModel, ONNX_FLOAT, ONNX_INT64, type OnnxNode, type OnnxTensor } from '../test/onnx-writer.js';
import { VOCAB, writeTinyClip } from '../test/clip-fixture.js';


function weights(name: string, dims: number[], next: () => number): OnnxTensor {
  const n = dims.reduce((a, b) => a * b, 1);
  const scale = 1 / Math.sqrt(dims[dims.length - 2] ?? dims[0]!);
  return { name, dims, data: Float32Array.from({ length: n }, () => (next() * 2 - 1) * scale) };
}

/** Residual MLP blocks sharing one pair of weight matrices (the compute of `layers` blocks, the file of one). */
function mlpBlocks(input: string, prefix: string, layers: number): { nodes: OnnxNode[]; output: string } {
  const nodes: OnnxNode[] = [];
  let x = input;
  for (let l = 0; l < layers; l++) {
    nodes.push(
      { op: 'MatMul', inputs: [x, `${prefix}_w1`], outputs: [`${prefix}${l}_h`] },
      { op: 'Relu', inputs: [`${prefix}${l}_h`], outputs: [`${prefix}${l}_r`] },
      { op: 'MatMul', inputs: [`${prefix}${l}_r`, `${prefix}_w2`], outputs: [`${prefix}${l}_o`] },
      { op: 'Add', inputs: [x, `${prefix}${l}_o`], outputs: [`${prefix}${l}_x`] },
    );
    x = `${prefix}${l}_x`;
  }
  return { nodes, output: x };
}

/** The tiny fixture's tokenizer and configs, with CLIP-B/32-sized graphs and preprocessing. */
function writeComputeClip(dir: string, layers: number): string {
  writeTinyClip(dir);
  const rng = new Rng(1234);
  const next = () => rng.next();
  const vision = mlpBlocks('patches', 'v', layers);
  writeFileSync(path.join(dir, 'onnx', 'vision_model.onnx'), encodeOnnxModel({
    name: 'clip_b32_compute_vision',
    inputs: [{ name: 'pixel_values', elemType: ONNX_FLOAT, shape: ['batch_size', 3, 224, 224] }],
    outputs: [{ name: 'image_embeds', elemType: ONNX_FLOAT, shape: ['batch_size', 512] }],
    initializers: [
      weights('patch_embedding', [768, 3, 32, 32], next),
      { name: 'tokens_shape', dims: [3], data: BigInt64Array.from([0n, 768n, -1n]) },
      weights('v_w1', [768, 3072], next), weights('v_w2', [3072, 768], next), weights('visual_projection', [768, 512], next),
    ],
    nodes: [
      { op: 'Conv', inputs: ['pixel_values', 'patch_embedding'], outputs: ['grid'], attributes: { kernel_shape: [32, 32], strides: [32, 32] } },
      { op: 'Reshape', inputs: ['grid', 'tokens_shape'], outputs: ['channels_first'] },
      { op: 'Transpose', inputs: ['channels_first'], outputs: ['patches'], attributes: { perm: [0, 2, 1] } },
      ...vision.nodes,
      { op: 'ReduceMean', inputs: [vision.output], outputs: ['pooled'], attributes: { axes: [1], keepdims: 0 } },
      { op: 'MatMul', inputs: ['pooled', 'visual_projection'], outputs: ['image_embeds'] },
    ],
  }));
  const text = mlpBlocks('token_vectors', 't', layers);
  writeFileSync(path.join(dir, 'onnx', 'text_model.onnx'), encodeOnnxModel({
    name: 'clip_b32_compute_text',
    inputs: [
      { name: 'input_ids', elemType: ONNX_INT64, shape: ['batch_size', 'sequence_length'] },
      { name: 'attention_mask', elemType: ONNX_INT64, shape: ['batch_size', 'sequence_length'] },
    ],
    outputs: [{ name: 'text_embeds', elemType: ONNX_FLOAT, shape: ['batch_size', 512] }],
    initializers: [
      weights('token_embedding', [VOCAB.length, 512], next),
      weights('t_w1', [512, 2048], next), weights('t_w2', [2048, 512], next), weights('text_projection', [512, 512], next),
    ],
    nodes: [
      { op: 'Gather', inputs: ['token_embedding', 'input_ids'], outputs: ['token_vectors'], attributes: { axis: 0 } },
      ...text.nodes,
      { op: 'Cast', inputs: ['attention_mask'], outputs: ['mask_float'], attributes: { to: ONNX_FLOAT } },
      { op: 'Unsqueeze', inputs: ['mask_float'], outputs: ['mask_3d'], attributes: { axes: [2] } },
      { op: 'Mul', inputs: [text.output, 'mask_3d'], outputs: ['masked'] },
      { op: 'ReduceSum', inputs: ['masked'], outputs: ['pooled'], attributes: { axes: [1], keepdims: 0 } },
      { op: 'MatMul', inputs: ['pooled', 'text_projection'], outputs: ['text_embeds'] },
    ],
  }));
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify({
    model_type: 'clip', projection_dim: 512,
    text_config: { model_type: 'clip_text_model', hidden_size: 512, max_position_embeddings: 77, vocab_size: VOCAB.length },
    vision_config: { model_type: 'clip_vision_model', hidden_size: 768, image_size: 224, patch_size: 32 },
  }));
  writeFileSync(path.join(dir, 'preprocessor_config.json'), JSON.stringify({
    image_processor_type: 'CLIPImageProcessor', do_resize: true, size: { shortest_edge: 224 }, resample: 3,
    do_center_crop: true, crop_size: { height: 224, width: 224 }, do_rescale: true, rescale_factor: 1 / 255,
    do_normalize: true, image_mean: [0.48145466, 0.4578275, 0.40821073], image_std: [0.26862954, 0.26130258, 0.27577711],
    do_convert_rgb: true,
  }));
  writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({
    tokenizer_class: 'CLIPTokenizer', model_max_length: 77,
    bos_token: '<|startoftext|>', eos_token: '<|endoftext|>', pad_token: '<|endoftext|>', unk_token: '[UNK]',
  }));
  return dir;
}

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
