/**
 * Tiny vision-language models with random weights, in the exact on-disk layout transformers.js loads for two
 * families, and a float64 forward of the same graphs to check them against:
 *
 * - LLaVA (`LlavaForConditionalGeneration`, as llava-hf/llava-1.5-7b-hf exported by onnx-community): config.json
 *   (model_type "llava", image_token_index, text_config "llama"), preprocessor_config.json (CLIPImageProcessor,
 *   processor_class LlavaProcessor), processor_config.json (image_token, patch_size, num_additional_image_tokens),
 *   a LLaMA-style SentencePiece tokenizer (BPE, Metaspace, byte fallback) with a chat template,
 *   onnx/vision_encoder.onnx, onnx/embed_tokens.onnx, onnx/decoder_model_merged.onnx.
 * - SmolVLM (`SmolVLMForConditionalGeneration` = Idefics3, as HuggingFaceTB/SmolVLM-256M-Instruct): model_type
 *   "smolvlm", Idefics3ImageProcessor with image splitting, processor_config.json (image_seq_len), a byte-level BPE
 *   tokenizer (GPT-2/SmolLM style) with the row/column and image marker tokens, the same three graphs; the vision
 *   encoder takes pixel_values [batch, crops, 3, H, W] and pixel_attention_mask.
 *
 * The decoder is a real (small) transformer: learned positions gathered by position_ids, causal attention with
 * grouped key/value heads over past_key_values ++ current keys (past of length 0 when scoring), padding masked by
 * attention_mask, a tanh MLP, and an LM head; `present.*` outputs as exported decoders have.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import sharp from 'sharp';
import { segmentStage } from '../src/segment/stage.js';
import { withStore } from '../src/store/store.js';
import { Rng } from '../src/util/random.js';
import { encodeOnnxModel, ONNX_FLOAT, ONNX_INT64, type OnnxNode, type OnnxTensor } from './onnx-writer.js';

const ONNX_BOOL = 9;

/** Sizes of a tiny model. */
export interface VlmDims {
  /** Text hidden size, attention heads, key/value heads (grouped), head size, layers, MLP width, positions. */
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  layers: number;
  mlp: number;
  positions: number;
  /** Square crop side the vision encoder takes, and its patch side (tokens per crop = (side / patch)²). */
  imageSize: number;
  patch: number;
  visionHidden: number;
}

export const TINY_DIMS: VlmDims = {
  hidden: 8, heads: 4, kvHeads: 2, headDim: 2, layers: 2, mlp: 12, positions: 96, imageSize: 8, patch: 4, visionHidden: 6,
};

/** Row-major float64 weights of a tiny model (the ONNX files hold them as float32; the reference uses the float32 values). */
export interface VlmWeights {
  dims: VlmDims;
  vocab: number;
  embed: Float32Array; // [vocab, hidden]
  positions: Float32Array; // [positions, hidden]
  layers: Array<{ q: Float32Array; k: Float32Array; v: Float32Array; o: Float32Array; up: Float32Array; down: Float32Array }>;
  lmHead: Float32Array; // [hidden, vocab]
  patchProj: Float32Array; // [3·patch², visionHidden]
  patchBias: Float32Array; // [visionHidden]
  projector: Float32Array; // [visionHidden, hidden]
}

function randomWeights(dims: VlmDims, vocab: number, seed: number): VlmWeights {
  const rng = new Rng(seed);
  const init = (n: number, scale: number) => Float32Array.from({ length: n }, () => (rng.next() * 2 - 1) * scale);
  const { hidden, heads, kvHeads, headDim, mlp, positions, patch, visionHidden } = dims;
  return {
    dims, vocab,
    embed: init(vocab * hidden, 1),
    positions: init(positions * hidden, 0.3),
    layers: Array.from({ length: dims.layers }, () => ({
      q: init(hidden * heads * headDim, 0.6), k: init(hidden * kvHeads * headDim, 0.6), v: init(hidden * kvHeads * headDim, 0.6),
      o: init(heads * headDim * hidden, 0.4), up: init(hidden * mlp, 0.5), down: init(mlp * hidden, 0.4),
    })),
    lmHead: init(hidden * vocab, 0.8),
    patchProj: init(3 * patch * patch * visionHidden, 0.3),
    patchBias: init(visionHidden, 0.1),
    projector: init(visionHidden * hidden, 2),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Tokenizers

interface TokenizerSpec {
  /** Added (special) tokens first, in id order. */
  specials: string[];
  /** Whole words (with their space marker) that merge into one token; other text falls back to characters/bytes. */
  words: string[];
}

/** Merges building each word left to right (prefix + next character), and the vocabulary they need. */
function wordMerges(words: readonly string[], base: readonly string[]): { vocab: string[]; merges: string[] } {
  const vocab = new Set(base);
  const merges: string[] = [];
  const seen = new Set<string>();
  for (const word of words) {
    const chars = [...word];
    chars.forEach((c) => vocab.add(c));
    let prefix = chars[0]!;
    for (const c of chars.slice(1)) {
      const merge = `${prefix} ${c}`;
      if (!seen.has(merge)) {
        seen.add(merge);
        merges.push(merge);
      }
      prefix += c;
      vocab.add(prefix);
    }
  }
  return { vocab: [...vocab], merges };
}

function addedToken(content: string, id: number) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
}

/** A LLaMA-style SentencePiece BPE: Metaspace (prepend "▁" to the first word), byte fallback, BOS added. */
function llamaTokenizer(spec: TokenizerSpec): { json: object; vocab: string[] } {
  const bytes = Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  const { vocab: learned, merges } = wordMerges(spec.words, ['▁']);
  const vocab = [...spec.specials, ...bytes, ...learned.filter((t) => !spec.specials.includes(t))];
  return {
    vocab,
    json: {
      version: '1.0', truncation: null, padding: null,
      added_tokens: spec.specials.map((t, i) => addedToken(t, i)),
      normalizer: null,
      pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
      post_processor: {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
        special_tokens: { '<s>': { id: '<s>', ids: [vocab.indexOf('<s>')], tokens: ['<s>'] } },
      },
      decoder: {
        type: 'Sequence', decoders: [
          { type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' },
          { type: 'Strip', content: ' ', start: 1, stop: 0 },
        ],
      },
      model: {
        type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
        fuse_unk: true, byte_fallback: true, ignore_merges: false,
        vocab: Object.fromEntries(vocab.map((t, i) => [t, i])), merges,
      },
    },
  };
}

/** GPT-2's byte alphabet: the printable character standing for each byte. */
function byteAlphabet(): string[] {
  const out: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    out.push(String.fromCodePoint(printable ? b : 256 + extra++));
  }
  return out;
}

/** A byte-level BPE (GPT-2 / SmolLM style): no prefix space, no BOS. Words use "Ġ" for their leading space. */
function byteLevelTokenizer(spec: TokenizerSpec): { json: object; vocab: string[] } {
  const { vocab: learned, merges } = wordMerges(spec.words, byteAlphabet());
  const vocab = [...spec.specials, ...learned.filter((t) => !spec.specials.includes(t))];
  return {
    vocab,
    json: {
      version: '1.0', truncation: null, padding: null,
      added_tokens: spec.specials.map((t, i) => addedToken(t, i)),
      normalizer: null,
      pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
      post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
      decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
      model: {
        type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '',
        fuse_unk: false, byte_fallback: false, ignore_merges: false,
        vocab: Object.fromEntries(vocab.map((t, i) => [t, i])), merges,
      },
    },
  };
}

/** Words of the tests' prompts and responses that get a token of their own (others split into characters). */
export const FIXTURE_WORDS = ['the', 'a', 'cat', 'dog', 'sat', 'ran', 'red', 'blue', 'square', 'on', 'is', 'what', 'describe',
  'image', 'this', 'there', 'mat', 'The', 'A', 'What', 'Describe', 'There', 'It', 'it', 'and'];

// ---------------------------------------------------------------------------------------------------------------
// Graphs

const f32 = (name: string, dims: number[], data: Float32Array): OnnxTensor => ({ name, dims, data });
const i64 = (name: string, values: number[], dims = [values.length]): OnnxTensor =>
  ({ name, dims, data: BigInt64Array.from(values.map(BigInt)) });

/** embed_tokens: input_ids [batch, seq] → inputs_embeds [batch, seq, hidden]. */
function embedGraph(w: VlmWeights) {
  return encodeOnnxModel({
    name: 'tiny_embed_tokens', opset: 12,
    inputs: [{ name: 'input_ids', elemType: ONNX_INT64, shape: ['batch_size', 'sequence_length'] }],
    outputs: [{ name: 'inputs_embeds', elemType: ONNX_FLOAT, shape: ['batch_size', 'sequence_length', w.dims.hidden] }],
    initializers: [f32('embed', [w.vocab, w.dims.hidden], w.embed)],
    nodes: [{ op: 'Gather', inputs: ['embed', 'input_ids'], outputs: ['inputs_embeds'], attributes: { axis: 0 } }],
  });
}

/**
 * vision_encoder: pixel_values [batch, 3, S, S] (LLaVA) or [batch, crops, 3, S, S] (Idefics3) → image_features
 * [images or crops, (S/patch)², hidden]: non-overlapping patches, a linear map, tanh, the projector.
 */
function visionGraph(w: VlmWeights, crops: boolean) {
  const { imageSize: S, patch: p, visionHidden, hidden } = w.dims;
  const n = S / p;
  return encodeOnnxModel({
    name: 'tiny_vision_encoder', opset: 12,
    inputs: crops
      ? [{ name: 'pixel_values', elemType: ONNX_FLOAT, shape: ['batch_size', 'num_images', 3, S, S] },
        { name: 'pixel_attention_mask', elemType: ONNX_BOOL, shape: ['batch_size', 'num_images', S, S] }]
      : [{ name: 'pixel_values', elemType: ONNX_FLOAT, shape: ['batch_size', 3, S, S] }],
    outputs: [{ name: 'image_features', elemType: ONNX_FLOAT, shape: ['num_crops', n * n, hidden] }],
    initializers: [
      i64('patch_shape', [-1, 3, n, p, n, p]), i64('token_shape', [-1, n * n, 3 * p * p]),
      f32('patch_proj', [3 * p * p, visionHidden], w.patchProj), f32('patch_bias', [visionHidden], w.patchBias),
      f32('projector', [visionHidden, hidden], w.projector),
    ],
    nodes: [
      { op: 'Reshape', inputs: ['pixel_values', 'patch_shape'], outputs: ['grid'] },
      { op: 'Transpose', inputs: ['grid'], outputs: ['grid_t'], attributes: { perm: [0, 2, 4, 1, 3, 5] } },
      { op: 'Reshape', inputs: ['grid_t', 'token_shape'], outputs: ['patches'] },
      { op: 'MatMul', inputs: ['patches', 'patch_proj'], outputs: ['patch_lin'] },
      { op: 'Add', inputs: ['patch_lin', 'patch_bias'], outputs: ['patch_pre'] },
      { op: 'Tanh', inputs: ['patch_pre'], outputs: ['patch_act'] },
      { op: 'MatMul', inputs: ['patch_act', 'projector'], outputs: ['image_features'] },
    ],
  });
}

/** decoder_model_merged: inputs_embeds, attention_mask, position_ids, past_key_values.* → logits, present.*. */
function decoderGraph(w: VlmWeights) {
  const { hidden, heads, kvHeads, headDim, mlp, positions } = w.dims;
  const nodes: OnnxNode[] = [];
  const init: OnnxTensor[] = [
    f32('positions_table', [positions, hidden], w.positions), f32('lm_head', [hidden, w.vocab], w.lmHead),
    i64('one', [1], []), i64('axis1', [1], []), i64('zero_i', [0], []),
    f32('zero_f', [], Float32Array.of(0)), f32('neg_f', [], Float32Array.of(-1e9)),
    f32('scale', [], Float32Array.of(1 / Math.sqrt(headDim))),
    i64('q_shape', [0, 0, heads, headDim]), i64('kv_shape', [0, 0, kvHeads, headDim]), i64('merge_shape', [0, 0, heads * headDim]),
    i64('group', [1, 1, heads / kvHeads, 1, 1]), i64('heads_shape', [0, heads, -1, headDim]),
  ];
  const op = (opName: string, inputs: string[], output: string, attributes?: OnnxNode['attributes']) => {
    nodes.push({ op: opName, inputs, outputs: [output], attributes });
    return output;
  };
  // Mask [batch, 1, seq, total]: key j visible to query i iff j ≤ past + i and attention_mask[j] = 1.
  op('Shape', ['attention_mask'], 'mask_shape');
  op('Gather', ['mask_shape', 'axis1'], 'total', { axis: 0 });
  op('Shape', ['inputs_embeds'], 'embeds_shape');
  op('Gather', ['embeds_shape', 'axis1'], 'seq', { axis: 0 });
  op('Sub', ['total', 'seq'], 'past');
  op('Range', ['past', 'total', 'one'], 'query_pos');
  op('Range', ['zero_i', 'total', 'one'], 'key_pos');
  op('Unsqueeze', ['query_pos'], 'query_col', { axes: [1] });
  op('Unsqueeze', ['key_pos'], 'key_row', { axes: [0] });
  op('LessOrEqual', ['key_row', 'query_col'], 'causal');
  op('Cast', ['attention_mask'], 'mask_bool', { to: ONNX_BOOL });
  op('Unsqueeze', ['mask_bool'], 'mask_4d', { axes: [1, 2] });
  op('And', ['causal', 'mask_4d'], 'visible');
  op('Where', ['visible', 'zero_f', 'neg_f'], 'bias');

  op('Gather', ['positions_table', 'position_ids'], 'position_vectors', { axis: 0 });
  let x = op('Add', ['inputs_embeds', 'position_vectors'], 'x0');
  w.layers.forEach((layer, l) => {
    init.push(f32(`q${l}`, [hidden, heads * headDim], layer.q), f32(`k${l}`, [hidden, kvHeads * headDim], layer.k),
      f32(`v${l}`, [hidden, kvHeads * headDim], layer.v), f32(`o${l}`, [heads * headDim, hidden], layer.o),
      f32(`up${l}`, [hidden, mlp], layer.up), f32(`down${l}`, [mlp, hidden], layer.down));
    const heads4 = (name: string, weight: string, shape: string) => {
      op('MatMul', [x, weight], `${name}_lin`);
      op('Reshape', [`${name}_lin`, shape], `${name}_split`);
      return op('Transpose', [`${name}_split`], `${name}_heads`, { perm: [0, 2, 1, 3] });
    };
    const q = heads4(`q${l}`, `q${l}`, 'q_shape');
    const k = heads4(`k${l}`, `k${l}`, 'kv_shape');
    const v = heads4(`v${l}`, `v${l}`, 'kv_shape');
    const keys = op('Concat', [`past_key_values.${l}.key`, k], `present.${l}.key`, { axis: 2 });
    const values = op('Concat', [`past_key_values.${l}.value`, v], `present.${l}.value`, { axis: 2 });
    // Grouped heads: key/value head g serves query heads g·G … g·G + G − 1 (repeat_interleave).
    const repeat = (name: string, input: string) => {
      op('Unsqueeze', [input], `${name}_5d`, { axes: [2] });
      op('Expand', [`${name}_5d`, 'group'], `${name}_groups`);
      return op('Reshape', [`${name}_groups`, 'heads_shape'], name);
    };
    const keysAll = repeat(`keys_all${l}`, keys);
    const valuesAll = repeat(`values_all${l}`, values);
    op('Transpose', [keysAll], `keys_t${l}`, { perm: [0, 1, 3, 2] });
    op('MatMul', [q, `keys_t${l}`], `scores_raw${l}`);
    op('Mul', [`scores_raw${l}`, 'scale'], `scores_scaled${l}`);
    op('Add', [`scores_scaled${l}`, 'bias'], `scores${l}`);
    op('Softmax', [`scores${l}`], `attn${l}`, { axis: -1 });
    op('MatMul', [`attn${l}`, valuesAll], `context${l}`);
    op('Transpose', [`context${l}`], `context_t${l}`, { perm: [0, 2, 1, 3] });
    op('Reshape', [`context_t${l}`, 'merge_shape'], `context_m${l}`);
    op('MatMul', [`context_m${l}`, `o${l}`], `attn_out${l}`);
    x = op('Add', [x, `attn_out${l}`], `x_attn${l}`);
    op('MatMul', [x, `up${l}`], `up_lin${l}`);
    op('Tanh', [`up_lin${l}`], `up_act${l}`);
    op('MatMul', [`up_act${l}`, `down${l}`], `mlp_out${l}`);
    x = op('Add', [x, `mlp_out${l}`], `x${l + 1}`);
  });
  op('MatMul', [x, 'lm_head'], 'logits');
  const kvShape = ['batch_size', kvHeads, 'past_sequence_length', headDim];
  const presentShape = ['batch_size', kvHeads, 'total_sequence_length', headDim];
  return encodeOnnxModel({
    name: 'tiny_decoder_model_merged', opset: 12, nodes, initializers: init,
    inputs: [
      { name: 'inputs_embeds', elemType: ONNX_FLOAT, shape: ['batch_size', 'sequence_length', hidden] },
      { name: 'attention_mask', elemType: ONNX_INT64, shape: ['batch_size', 'total_sequence_length'] },
      { name: 'position_ids', elemType: ONNX_INT64, shape: ['batch_size', 'sequence_length'] },
      ...w.layers.flatMap((_, l) => ['key', 'value'].map((kind) =>
        ({ name: `past_key_values.${l}.${kind}`, elemType: ONNX_FLOAT, shape: kvShape }))),
    ],
    outputs: [
      { name: 'logits', elemType: ONNX_FLOAT, shape: ['batch_size', 'sequence_length', w.vocab] },
      ...w.layers.flatMap((_, l) => ['key', 'value'].map((kind) =>
        ({ name: `present.${l}.${kind}`, elemType: ONNX_FLOAT, shape: presentShape }))),
    ],
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Float64 reference forward

/** image_features of one crop [3, S, S] (row-major), in float64: [(S/patch)², hidden]. */
export function referenceCropFeatures(w: VlmWeights, crop: ArrayLike<number>): number[][] {
  const { imageSize: S, patch: p, visionHidden: vh, hidden } = w.dims;
  const n = S / p;
  const out: number[][] = [];
  for (let gy = 0; gy < n; gy++) {
    for (let gx = 0; gx < n; gx++) {
      const patch: number[] = [];
      for (let c = 0; c < 3; c++) for (let y = 0; y < p; y++) for (let x = 0; x < p; x++) patch.push(crop[(c * S + gy * p + y) * S + gx * p + x]!);
      const act = Array.from({ length: vh }, (_, j) => Math.tanh(patch.reduce((s, v, i) => s + v * w.patchProj[i * vh + j]!, w.patchBias[j]!)));
      out.push(Array.from({ length: hidden }, (_, d) => act.reduce((s, v, j) => s + v * w.projector[j * hidden + d]!, 0)));
    }
  }
  return out;
}

const matVec = (x: readonly number[], m: Float32Array, cols: number): number[] =>
  Array.from({ length: cols }, (_, j) => x.reduce((s, v, i) => s + v * m[i * cols + j]!, 0));

/**
 * log p(ids[t] | ids[<t], image) for every t ≥ 1 of one unpadded row, in float64: image tokens (id `imageToken`)
 * take the rows of `imageFeatures` in order, positions count from 0.
 */
export function referenceLogProbs(w: VlmWeights, ids: readonly number[], imageToken: number, imageFeatures: number[][] = []): number[] {
  const { hidden, heads, kvHeads, headDim } = w.dims;
  let image = 0;
  let xs = ids.map((id, t) => {
    const base = id === imageToken ? imageFeatures[image++]! : Array.from(w.embed.subarray(id * hidden, (id + 1) * hidden));
    if (!base) throw new Error('more image tokens than image features');
    return base.map((v, d) => v + w.positions[t * hidden + d]!);
  });
  if (image !== imageFeatures.length) throw new Error(`${imageFeatures.length} image features for ${image} image tokens`);
  for (const layer of w.layers) {
    const q = xs.map((x) => matVec(x, layer.q, heads * headDim));
    const k = xs.map((x) => matVec(x, layer.k, kvHeads * headDim));
    const v = xs.map((x) => matVec(x, layer.v, kvHeads * headDim));
    xs = xs.map((x, i) => {
      const context: number[] = [];
      for (let h = 0; h < heads; h++) {
        const g = Math.floor(h / (heads / kvHeads));
        const scores = k.slice(0, i + 1).map((kj) => {
          let s = 0;
          for (let d = 0; d < headDim; d++) s += q[i]![h * headDim + d]! * kj[g * headDim + d]!;
          return s / Math.sqrt(headDim);
        });
        const max = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - max));
        const z = e.reduce((a, b) => a + b, 0);
        for (let d = 0; d < headDim; d++) context.push(e.reduce((s, ej, j) => s + (ej / z) * v[j]![g * headDim + d]!, 0));
      }
      const attended = matVec(context, layer.o, hidden).map((a, d) => a + x[d]!);
      const up = matVec(attended, layer.up, w.dims.mlp).map(Math.tanh);
      return matVec(up, layer.down, hidden).map((m, d) => m + attended[d]!);
    });
  }
  const out: number[] = [];
  for (let t = 1; t < ids.length; t++) {
    const logits = matVec(xs[t - 1]!, w.lmHead, w.vocab);
    const max = Math.max(...logits);
    const lse = max + Math.log(logits.reduce((s, l) => s + Math.exp(l - max), 0));
    out.push(logits[ids[t]!]! - lse);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Model folders

export interface TinyVlm {
  dir: string;
  weights: VlmWeights;
  vocab: string[];
  imageTokenId: number;
  /** Image tokens per crop. */
  tokensPerCrop: number;
}

function writeFiles(dir: string, files: Record<string, string | Uint8Array>): void {
  mkdirSync(path.join(dir, 'onnx'), { recursive: true });
  for (const [file, content] of Object.entries(files)) writeFileSync(path.join(dir, file), content);
}

export interface WriterOptions {
  dims?: VlmDims;
  seed?: number;
  /** Words that get a token of their own (default FIXTURE_WORDS). */
  words?: string[];
  /** Rows of the embedding and the LM head, when more than the tokenizer's vocabulary (as many real models have). */
  vocabSize?: number;
}

/** config.json's text_config: a LLaMA decoder of these sizes (the library reads the cache layout from it). */
function llamaTextConfig(dims: VlmDims, vocab: number) {
  return {
    model_type: 'llama', hidden_size: dims.hidden, num_attention_heads: dims.heads, num_key_value_heads: dims.kvHeads,
    head_dim: dims.headDim, num_hidden_layers: dims.layers, intermediate_size: dims.mlp,
    max_position_embeddings: dims.positions, vocab_size: vocab, bos_token_id: 1, eos_token_id: 2,
  };
}

/** The chat template of llava-hf/llava-1.5-*-hf (images first, then text; the assistant's turn ends with a space). */
export const LLAVA_CHAT_TEMPLATE = "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}" +
  "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}" +
  "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}" +
  "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";

/** A LLaVA-1.5-style model. */
export function writeTinyLlava(dir: string, options: WriterOptions = {}): TinyVlm {
  const dims = options.dims ?? TINY_DIMS;
  const specials = ['<unk>', '<s>', '</s>', '<image>', '<pad>'];
  const words = ['USER', 'ASSISTANT', ...(options.words ?? FIXTURE_WORDS)].map((word) => `▁${word}`);
  const { json, vocab } = llamaTokenizer({ specials, words });
  const weights = randomWeights(dims, Math.max(vocab.length, options.vocabSize ?? 0), options.seed ?? 11);
  const imageTokenId = vocab.indexOf('<image>');
  const tokensPerCrop = (dims.imageSize / dims.patch) ** 2;
  writeFiles(dir, {
    'config.json': JSON.stringify({
      model_type: 'llava', architectures: ['LlavaForConditionalGeneration'], image_token_index: imageTokenId,
      vision_feature_select_strategy: 'full', vision_feature_layer: -1, projector_hidden_act: 'gelu',
      pad_token_id: vocab.indexOf('<pad>'),
      text_config: llamaTextConfig(dims, weights.vocab),
      vision_config: { model_type: 'clip_vision_model', image_size: dims.imageSize, patch_size: dims.patch, hidden_size: dims.visionHidden },
    }),
    'generation_config.json': JSON.stringify({ bos_token_id: 1, eos_token_id: 2, pad_token_id: vocab.indexOf('<pad>') }),
    'preprocessor_config.json': JSON.stringify({
      processor_class: 'LlavaProcessor', image_processor_type: 'CLIPImageProcessor',
      do_resize: true, size: { shortest_edge: dims.imageSize }, resample: 3,
      do_center_crop: true, crop_size: { height: dims.imageSize, width: dims.imageSize },
      do_rescale: true, rescale_factor: 1 / 255,
      do_normalize: true, image_mean: [0.48145466, 0.4578275, 0.40821073], image_std: [0.26862954, 0.26130258, 0.27577711],
      do_convert_rgb: true,
    }),
    'processor_config.json': JSON.stringify({
      processor_class: 'LlavaProcessor', image_token: '<image>', patch_size: dims.patch, num_additional_image_tokens: 0,
      vision_feature_select_strategy: 'full',
    }),
    'tokenizer.json': JSON.stringify(json),
    'tokenizer_config.json': JSON.stringify({
      tokenizer_class: 'LlamaTokenizer', model_max_length: dims.positions, add_bos_token: true, add_eos_token: false,
      bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', pad_token: '<pad>', legacy: false,
      chat_template: LLAVA_CHAT_TEMPLATE,
    }),
    'onnx/vision_encoder.onnx': visionGraph(weights, false),
    'onnx/embed_tokens.onnx': embedGraph(weights),
    'onnx/decoder_model_merged.onnx': decoderGraph(weights),
  });
  return { dir, weights, vocab, imageTokenId, tokensPerCrop };
}

/** The chat template of HuggingFaceTB/SmolVLM-*-Instruct. */
export const SMOLVLM_CHAT_TEMPLATE = "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}" +
  "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}" +
  "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}" +
  "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

/** A SmolVLM-style (Idefics3) model: images wider or taller than `imageSize` are split into crops plus a global view. */
export function writeTinySmolVlm(dir: string, options: WriterOptions = {}): TinyVlm {
  const dims = options.dims ?? TINY_DIMS;
  const rowCol = [1, 2].flatMap((r) => [1, 2].map((c) => `<row_${r}_col_${c}>`));
  const specials = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<fake_token_around_image>', '<image>', '<global-img>',
    '<end_of_utterance>', ...rowCol];
  const words = ['User', 'Assistant', ...(options.words ?? FIXTURE_WORDS).map((word) => `Ġ${word}`)];
  const { json, vocab } = byteLevelTokenizer({ specials, words });
  const weights = randomWeights(dims, Math.max(vocab.length, options.vocabSize ?? 0), options.seed ?? 12);
  const imageTokenId = vocab.indexOf('<image>');
  const tokensPerCrop = (dims.imageSize / dims.patch) ** 2;
  writeFiles(dir, {
    'config.json': JSON.stringify({
      model_type: 'smolvlm', architectures: ['SmolVLMForConditionalGeneration'], image_token_id: imageTokenId, scale_factor: 1,
      pad_token_id: 2,
      text_config: llamaTextConfig(dims, weights.vocab),
      vision_config: { model_type: 'smolvlm_vision', image_size: dims.imageSize, patch_size: dims.patch, hidden_size: dims.visionHidden },
    }),
    'generation_config.json': JSON.stringify({ bos_token_id: 1, eos_token_id: [2, 6], pad_token_id: 2 }),
    'preprocessor_config.json': JSON.stringify({
      processor_class: 'SmolVLMProcessor', image_processor_type: 'SmolVLMImageProcessor',
      do_convert_rgb: true, do_image_splitting: true, do_normalize: true, do_pad: false, do_rescale: true, do_resize: true,
      image_mean: [0.5, 0.5, 0.5], image_std: [0.5, 0.5, 0.5], max_image_size: { longest_edge: dims.imageSize },
      resample: 1, rescale_factor: 1 / 255, size: { longest_edge: 2 * dims.imageSize },
    }),
    'processor_config.json': JSON.stringify({ processor_class: 'SmolVLMProcessor', image_seq_len: tokensPerCrop }),
    'tokenizer.json': JSON.stringify(json),
    'tokenizer_config.json': JSON.stringify({
      tokenizer_class: 'GPT2Tokenizer', model_max_length: dims.positions, add_prefix_space: false,
      bos_token: '<|im_start|>', eos_token: '<end_of_utterance>', pad_token: '<|im_end|>', unk_token: '<|endoftext|>',
      chat_template: SMOLVLM_CHAT_TEMPLATE,
    }),
    'onnx/vision_encoder.onnx': visionGraph(weights, true),
    'onnx/embed_tokens.onnx': embedGraph(weights),
    'onnx/decoder_model_merged.onnx': decoderGraph(weights),
  });
  return { dir, weights, vocab, imageTokenId, tokensPerCrop };
}

// ---------------------------------------------------------------------------------------------------------------
// Stores

/** A PNG of deterministic noise (lossless, so the test knows every pixel). */
export async function noisePng(width: number, height: number, seed: number): Promise<Buffer> {
  const pixels = Buffer.from(Array.from({ length: width * height * 3 }, (_, i) => (Math.imul(i + 1, 2654435761 + seed) >>> 13) & 255));
  return sharp(pixels, { raw: { width, height, channels: 3 } }).png().toBuffer();
}

/** [pair id, image id or null, prompt, chosen, rejected]. */
export type FixturePair = [string, string | null, string, string, string];

/** A segmented store holding `images` (id → PNG) and `pairs`. */
export async function writeVlmStore(db: string, images: Record<string, Buffer>, pairs: readonly FixturePair[]): Promise<string> {
  await withStore(db, async (store) => {
    for (const [id, bytes] of Object.entries(images)) {
      const { width, height } = await sharp(bytes).metadata();
      await store.append('images', ['varchar', 'varchar', 'integer', 'integer', 'integer', 'integer', 'varchar', 'bigint', 'blob', 'varchar'],
        [[id, createHash('sha256').update(bytes).digest('hex'), width, height, width, height, 'png', bytes.length, new Uint8Array(bytes), 'test']]);
    }
    for (const [pairId, image, prompt, chosen, rejected] of pairs) {
      await store.run(`INSERT INTO pairs (pair_id, source, source_row, format, prompt, chosen, rejected, image_id)
        VALUES (?, 'test.jsonl', ?, 'jsonl', ?, ?, ?, ?)`, [pairId, pairs.findIndex((p) => p[0] === pairId), prompt, chosen, rejected, image]);
    }
    await segmentStage(store);
  });
  return db;
}
