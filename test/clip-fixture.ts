/**
 * A tiny CLIP model in the on-disk layout of a real one (Xenova/clip-vit-base-patch32): config.json,
 * preprocessor_config.json, tokenizer.json + tokenizer_config.json, onnx/vision_model.onnx, onnx/text_model.onnx.
 * Its behaviour is chosen by the test: the embedding space is (red, green, blue, other); an image embeds as its mean
 * colour, a text as the sum of its (unmasked) token vectors, so colour words point at their colour.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { encodeOnnxModel, ONNX_FLOAT, ONNX_INT64 } from './onnx-writer.js';

export const EMBED_DIM = 4;
/** Side of the processor's square crop. */
export const IMAGE_SIZE = 8;
/** Text context of the tiny model (special tokens included). */
export const CONTEXT = 8;

/** Token vectors; the special tokens and fillers are non-zero so that wrong masking or pooling shows. */
export const VOCAB: ReadonlyArray<[string, number[]]> = [
  ['<|startoftext|>', [0, 0, 0, 0.3]],
  ['<|endoftext|>', [0.1, 0.1, 0.1, 0.2]], // also the padding token, as in CLIP: must be masked out
  ['[UNK]', [0, 0, 0, 0.5]],
  ['a', [0, 0, 0, 0.2]],
  ['photo', [0, 0, 0, 0.4]],
  ['of', [0, 0, 0, 0.1]],
  ['square', [0, 0, 0, 0.4]],
  ['.', [0, 0, 0, 0.1]],
  ['red', [1, 0, 0, 0]],
  ['green', [0, 1, 0, 0]],
  ['blue', [0, 0, 1, 0]],
  ['yellow', [0.7, 0.7, 0, 0]],
  ['dark', [-0.2, -0.2, -0.2, 0.3]],
];

/** Text projection [EMBED_DIM, EMBED_DIM] (row-major): mostly identity, the "other" axis scaled down. */
export const TEXT_PROJECTION = [
  [1, 0, 0, 0],
  [0, 1, 0, 0],
  [0, 0, 1, 0],
  [0, 0, 0, 0.5],
];
/** Vision projection [3, EMBED_DIM]: channel means to (r, g, b, other). */
export const VISION_PROJECTION = [
  [1, 0, 0, 0.05],
  [0, 1, 0, 0.05],
  [0, 0, 1, 0.05],
];

const tokenId = (token: string): number => VOCAB.findIndex(([t]) => t === token);

/** The tokens the fixture's tokenizer produces for a text (lower-cased words and punctuation, BOS/EOS around). */
export function referenceTokens(text: string): string[] {
  const words = (text.toLowerCase().match(/\w+|[^\w\s]+/g) ?? []).map((w) => (tokenId(w) >= 0 ? w : '[UNK]'));
  return ['<|startoftext|>', ...words, '<|endoftext|>'];
}

/** Float64 reference of the text tower, with the context rule of fitToContext (first CONTEXT−1 tokens + EOS). */
export function referenceTextEmbedding(text: string): number[] {
  let tokens = referenceTokens(text);
  if (tokens.length > CONTEXT) tokens = [...tokens.slice(0, CONTEXT - 1), tokens[tokens.length - 1]!];
  const sum = [0, 0, 0, 0];
  for (const token of tokens) VOCAB[tokenId(token)]![1].forEach((v, d) => { sum[d]! += v; });
  return TEXT_PROJECTION[0]!.map((_, j) => sum.reduce((acc, v, d) => acc + v * TEXT_PROJECTION[d]![j]!, 0));
}

/** Float64 reference of the vision tower for a solid colour (0–255 per channel). */
export function referenceImageEmbedding(rgb: [number, number, number]): number[] {
  const means = rgb.map((c) => c / 255);
  return VISION_PROJECTION[0]!.map((_, j) => means.reduce((acc, v, c) => acc + v * VISION_PROJECTION[c]![j]!, 0));
}

export function cosine(a: number[], b: number[]): number {
  const dotAB = a.reduce((s, v, i) => s + v * b[i]!, 0);
  return dotAB / Math.sqrt(a.reduce((s, v) => s + v * v, 0) * b.reduce((s, v) => s + v * v, 0));
}

const flat = (rows: number[][]): Float32Array => Float32Array.from(rows.flat());

/** Writes the model folder; `omit` leaves files out (to test the error for an incomplete folder). */
export function writeTinyClip(dir: string, omit: string[] = []): string {
  mkdirSync(path.join(dir, 'onnx'), { recursive: true });
  const files: Record<string, string | Uint8Array> = {
    'config.json': JSON.stringify({
      model_type: 'clip',
      architectures: ['CLIPModel'],
      projection_dim: EMBED_DIM,
      text_config: { model_type: 'clip_text_model', hidden_size: EMBED_DIM, max_position_embeddings: CONTEXT, vocab_size: VOCAB.length },
      vision_config: { model_type: 'clip_vision_model', hidden_size: 3, image_size: IMAGE_SIZE, patch_size: IMAGE_SIZE },
    }),
    'preprocessor_config.json': JSON.stringify({
      image_processor_type: 'CLIPImageProcessor',
      do_resize: true, size: { shortest_edge: IMAGE_SIZE }, resample: 3,
      do_center_crop: true, crop_size: { height: IMAGE_SIZE, width: IMAGE_SIZE },
      do_rescale: true, rescale_factor: 1 / 255,
      do_normalize: true, image_mean: [0, 0, 0], image_std: [1, 1, 1],
      do_convert_rgb: true,
    }),
    'tokenizer.json': JSON.stringify({
      version: '1.0', truncation: null, padding: null,
      added_tokens: VOCAB.slice(0, 3).map(([content], id) =>
        ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
      normalizer: { type: 'Lowercase' },
      pre_tokenizer: { type: 'Whitespace' },
      post_processor: {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: '<|startoftext|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
          { SpecialToken: { id: '<|endoftext|>', type_id: 0 } }],
        pair: [],
        special_tokens: {
          '<|startoftext|>': { id: '<|startoftext|>', ids: [0], tokens: ['<|startoftext|>'] },
          '<|endoftext|>': { id: '<|endoftext|>', ids: [1], tokens: ['<|endoftext|>'] },
        },
      },
      decoder: null,
      model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100,
        vocab: Object.fromEntries(VOCAB.map(([token], i) => [token, i])) },
    }),
    'tokenizer_config.json': JSON.stringify({
      tokenizer_class: 'CLIPTokenizer', model_max_length: CONTEXT,
      bos_token: '<|startoftext|>', eos_token: '<|endoftext|>', pad_token: '<|endoftext|>', unk_token: '[UNK]',
    }),
    'onnx/vision_model.onnx': encodeOnnxModel({
      name: 'tiny_clip_vision',
      inputs: [{ name: 'pixel_values', elemType: ONNX_FLOAT, shape: ['batch_size', 3, 'height', 'width'] }],
      outputs: [{ name: 'image_embeds', elemType: ONNX_FLOAT, shape: ['batch_size', EMBED_DIM] }],
      initializers: [{ name: 'visual_projection', dims: [3, EMBED_DIM], data: flat(VISION_PROJECTION) }],
      nodes: [
        { op: 'ReduceMean', inputs: ['pixel_values'], outputs: ['channel_means'], attributes: { axes: [2, 3], keepdims: 0 } },
        { op: 'MatMul', inputs: ['channel_means', 'visual_projection'], outputs: ['image_embeds'] },
      ],
    }),
    'onnx/text_model.onnx': encodeOnnxModel({
      name: 'tiny_clip_text',
      inputs: [
        { name: 'input_ids', elemType: ONNX_INT64, shape: ['batch_size', 'sequence_length'] },
        { name: 'attention_mask', elemType: ONNX_INT64, shape: ['batch_size', 'sequence_length'] },
      ],
      outputs: [{ name: 'text_embeds', elemType: ONNX_FLOAT, shape: ['batch_size', EMBED_DIM] }],
      initializers: [
        { name: 'token_embedding', dims: [VOCAB.length, EMBED_DIM], data: flat(VOCAB.map(([, v]) => v)) },
        { name: 'text_projection', dims: [EMBED_DIM, EMBED_DIM], data: flat(TEXT_PROJECTION) },
      ],
      nodes: [
        { op: 'Gather', inputs: ['token_embedding', 'input_ids'], outputs: ['token_vectors'], attributes: { axis: 0 } },
        { op: 'Cast', inputs: ['attention_mask'], outputs: ['mask_float'], attributes: { to: ONNX_FLOAT } },
        { op: 'Unsqueeze', inputs: ['mask_float'], outputs: ['mask_3d'], attributes: { axes: [2] } },
        { op: 'Mul', inputs: ['token_vectors', 'mask_3d'], outputs: ['masked_vectors'] },
        { op: 'ReduceSum', inputs: ['masked_vectors'], outputs: ['pooled'], attributes: { axes: [1], keepdims: 0 } },
        { op: 'MatMul', inputs: ['pooled', 'text_projection'], outputs: ['text_embeds'] },
      ],
    }),
  };
  for (const [file, content] of Object.entries(files)) {
    if (!omit.includes(file)) writeFileSync(path.join(dir, file), content);
  }
  return dir;
}
