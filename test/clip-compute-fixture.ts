/**
 * `clip-b32-compute`: a CLIP folder in the transformers.js layout with the tiny fixture's tokenizer and random weights
 * of about the compute of CLIP ViT-B/32 (32×32 patches of a 224×224 image, `layers` residual MLP blocks of width
 * 768→3072 for vision and 512→2048 for text), so that the model dominates a run as a real CLIP does. Used by the
 * score benchmarks and by the distributed tests, which need jobs that take a while.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { Rng } from '../src/util/random.js';
import { encodeOnnxModel, ONNX_FLOAT, ONNX_INT64, type OnnxNode, type OnnxTensor } from './onnx-writer.js';
import { VOCAB, writeTinyClip } from './clip-fixture.js';

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
export function writeComputeClip(dir: string, layers: number): string {
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
