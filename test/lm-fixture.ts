/**
 * A tiny causal language model in the on-disk layout of a transformers.js GPT-2 export (config.json, tokenizer.json,
 * tokenizer_config.json, onnx/model.onnx), whose next-token logits the tests know exactly:
 *   logits[b, t, v] = (BIGRAM[ids[b, t]][v] + position_ids[b, t] · POSITION_BIAS[v]) · attention_mask[b, t]
 * so log p(token t | tokens < t) depends on the previous token and on its position (which catches wrong position ids).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { encodeOnnxModel, ONNX_FLOAT, ONNX_INT64 } from './onnx-writer.js';

/** Word-level vocabulary; id = index. "<s>" is prepended to every text by the tokenizer. */
export const LM_VOCAB = ['<s>', '</s>', '<unk>', 'the', 'a', 'cat', 'dog', 'sat', 'ran', '.', 'describe', 'it', ':'] as const;

/** Context length (config n_positions and tokenizer model_max_length). */
export const LM_CONTEXT = 16;

/** Deterministic, distinct bigram logits: BIGRAM[previous][next]. */
export const BIGRAM: number[][] = LM_VOCAB.map((_, i) => LM_VOCAB.map((__, j) => Math.sin(1.3 * i + 0.7 * j) * 2 + (i === j ? -1 : 0)));

export const POSITION_BIAS: number[] = LM_VOCAB.map((_, j) => 0.05 * (j % 4) - 0.07);

/** The fixture's tokenization, written independently of the library: "<s>" then words and punctuation, lower-cased. */
export function referenceTokenIds(text: string): number[] {
  const words = text.toLowerCase().match(/\w+|[^\w\s]+/g) ?? [];
  return [0, ...words.map((w) => {
    const id = (LM_VOCAB as readonly string[]).indexOf(w);
    return id < 0 ? 2 : id;
  })];
}

/** log p(ids[t] | ids[<t]) for t = 1..n−1, in float64 from the formula above. */
export function referenceLogProbs(ids: readonly number[]): number[] {
  const out: number[] = [];
  for (let t = 1; t < ids.length; t++) {
    const logits = BIGRAM[ids[t - 1]!]!.map((x, v) => x + (t - 1) * POSITION_BIAS[v]!);
    const max = Math.max(...logits);
    const lse = max + Math.log(logits.reduce((s, x) => s + Math.exp(x - max), 0));
    out.push(logits[ids[t]!]! - lse);
  }
  return out;
}

export function writeTinyLm(dir: string): string {
  mkdirSync(path.join(dir, 'onnx'), { recursive: true });
  const V = LM_VOCAB.length;
  const files: Record<string, string | Uint8Array> = {
    'config.json': JSON.stringify({
      model_type: 'gpt2', architectures: ['GPT2LMHeadModel'], vocab_size: V, n_positions: LM_CONTEXT, n_embd: 4,
      n_layer: 1, n_head: 1, bos_token_id: 0, eos_token_id: 1, use_cache: false,
    }),
    'tokenizer.json': JSON.stringify({
      version: '1.0', truncation: null, padding: null,
      added_tokens: LM_VOCAB.slice(0, 3).map((content, id) =>
        ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
      normalizer: { type: 'Lowercase' },
      pre_tokenizer: { type: 'Whitespace' },
      post_processor: {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [],
        special_tokens: { '<s>': { id: '<s>', ids: [0], tokens: ['<s>'] } },
      },
      decoder: null,
      model: { type: 'WordLevel', unk_token: '<unk>', vocab: Object.fromEntries(LM_VOCAB.map((token, i) => [token, i])) },
    }),
    'tokenizer_config.json': JSON.stringify({
      tokenizer_class: 'PreTrainedTokenizer', model_max_length: LM_CONTEXT,
      bos_token: '<s>', eos_token: '</s>', pad_token: '</s>', unk_token: '<unk>',
    }),
    'onnx/model.onnx': encodeOnnxModel({
      name: 'tiny_bigram_lm',
      inputs: [
        { name: 'input_ids', elemType: ONNX_INT64, shape: ['batch_size', 'sequence_length'] },
        { name: 'attention_mask', elemType: ONNX_INT64, shape: ['batch_size', 'sequence_length'] },
        { name: 'position_ids', elemType: ONNX_INT64, shape: ['batch_size', 'sequence_length'] },
      ],
      outputs: [{ name: 'logits', elemType: ONNX_FLOAT, shape: ['batch_size', 'sequence_length', V] }],
      initializers: [
        { name: 'bigram', dims: [V, V], data: Float32Array.from(BIGRAM.flat()) },
        { name: 'position_bias', dims: [V], data: Float32Array.from(POSITION_BIAS) },
      ],
      nodes: [
        { op: 'Gather', inputs: ['bigram', 'input_ids'], outputs: ['next_logits'], attributes: { axis: 0 } },
        { op: 'Cast', inputs: ['position_ids'], outputs: ['position_float'], attributes: { to: ONNX_FLOAT } },
        { op: 'Unsqueeze', inputs: ['position_float'], outputs: ['position_3d'], attributes: { axes: [2] } },
        { op: 'Mul', inputs: ['position_3d', 'position_bias'], outputs: ['position_logits'] },
        { op: 'Add', inputs: ['next_logits', 'position_logits'], outputs: ['unmasked_logits'] },
        { op: 'Cast', inputs: ['attention_mask'], outputs: ['mask_float'], attributes: { to: ONNX_FLOAT } },
        { op: 'Unsqueeze', inputs: ['mask_float'], outputs: ['mask_3d'], attributes: { axes: [2] } },
        { op: 'Mul', inputs: ['unmasked_logits', 'mask_3d'], outputs: ['logits'] },
      ],
    }),
  };
  for (const [file, content] of Object.entries(files)) writeFileSync(path.join(dir, file), content);
  return dir;
}
