/**
 * Perplexity under a Hugging Face vision-language model (LLaVA, Idefics3/SmolVLM) through `@huggingface/transformers`
 * on ONNX Runtime: the paper's P term, each sentence's perplexity under the VLM itself given the image and the prompt.
 *
 * A response is fed as trainers feed it (TRL's DPO for vision-language models): the prompt as the model's chat template
 * renders the user turn (image + prompt) up to where the assistant's answer starts, through the model's own processor
 * (which expands the image token into the image's feature slots); then the response tokenized alone, as one string
 * (so its character offsets give each token's sentence); then the end of the assistant turn as the template writes it
 * (or EOS). One teacher-forced forward pass per response, no generation. Each image goes through the vision encoder
 * once; its features fill the image slots of both the chosen and the rejected response.
 */
import path from 'node:path';
import type { PreTrainedModel, PreTrainedTokenizer, Processor, Tensor as HfTensor } from '@huggingface/transformers';
import type { Store } from '../store/store.js';
import { encodeWithSentences, hfOffsetTokenizer, type OffsetTokenizer, type Span } from '../segment/align.js';
import { decodeRawImage, onnxRuntimeHasCuda } from './clip.js';
import { contextLength, rowTokenLogProbs } from './lm.js';
import { checkModelFolder, isLocalModel, modelId } from '../model/hf-folder.js';
import { perplexityRow, sentenceLogProbs } from './perplexity.js';
import { pendingResponses, type PendingResponse, type ResponseScoreSummary, type SentenceScoreRow } from './scorer.js';

export const DEFAULT_VLM_BATCH_SIZE = 4;
export const DEFAULT_VLM_COMMIT_RESPONSES = 64;

export const VLM_DEVICES = ['auto', 'cpu', 'cuda', 'webgpu'] as const;
export type VlmDevice = (typeof VLM_DEVICES)[number];

/** transformers.js weight variants and the suffix of their ONNX files (onnx/decoder_model_merged_q4.onnx, …). */
export const VLM_DTYPE_SUFFIX = {
  fp32: '', fp16: '_fp16', q8: '_quantized', int8: '_int8', uint8: '_uint8', q4: '_q4', q4f16: '_q4f16', bnb4: '_bnb4',
} as const;
export type VlmDtype = keyof typeof VLM_DTYPE_SUFFIX;

/** The families verified here (config.json `model_type`), and whether their processor takes (images, text) or (text, images). */
const FAMILIES: Record<string, 'images-first' | 'text-first'> = { llava: 'images-first', idefics3: 'text-first', smolvlm: 'text-first' };
export const VLM_FAMILIES = Object.keys(FAMILIES);

/** The files a local VLM folder needs for `dtype`: the layout of onnx-community/* and HuggingFaceTB/SmolVLM-* on the Hub. */
export function vlmModelFiles(dtype: VlmDtype = 'fp32'): string[] {
  const suffix = VLM_DTYPE_SUFFIX[dtype];
  return ['config.json', 'preprocessor_config.json', 'processor_config.json', 'tokenizer.json', 'tokenizer_config.json',
    ...['vision_encoder', 'embed_tokens', 'decoder_model_merged'].map((name) => `onnx/${name}${suffix}.onnx`)];
}

export class VlmModelError extends Error {}

export interface VlmLoadOptions {
  /** Execution device (default auto: CUDA when onnxruntime-node has its provider, else the CPU). */
  device?: VlmDevice;
  /** Weight variant (default fp32). */
  dtype?: VlmDtype;
  /** Load the ONNX sessions (default true); without them only the prompt and response encoding works (shards). */
  sessions?: boolean;
}

/** The vision encoder's inputs for one or more images (pixel_values and, for Idefics3, pixel_attention_mask). */
export type VisionInputs = Record<string, HfTensor>;

/** A prompt ready for the model: its token ids (image slots expanded) and the image's vision inputs, if any. */
export interface EncodedPrompt {
  ids: number[];
  vision: VisionInputs | null;
  /** Whitespace the template puts before the answer that is tokenized with the response (see `encodeResponse`). */
  lead: string;
  /** Tokens closing the assistant turn. */
  endIds: number[];
}

/** A response ready for the model: its tokens and each token's sentence (-1: none). */
export interface EncodedResponse { ids: number[]; sentenceIds: number[] }

/** One row of a forward pass: the whole token row, where the scored tokens start, the image features of its slots. */
export interface ForwardRow { ids: number[]; from: number; features: Float32Array | null }

/** A row to score and the image whose features fill its slots (`vision`: its inputs, for a row with an image). */
export interface RowToScore { row: ForwardRow; imageId: string | null; vision: VisionInputs | null }

/** Model work done, accumulated over calls. */
export interface VlmRunStats { images: number; visionCalls: number; decoderCalls: number; visionSeconds: number; decoderSeconds: number }

export type VlmModelCall = { kind: 'vision'; images: VisionInputs[] } | { kind: 'decoder'; rows: ForwardRow[] };

export interface ScoreRowsOptions {
  /** Rows per forward pass, and images per vision-encoder call. */
  batchSize: number;
  stats?: VlmRunStats;
  /** Sees every model call (the benchmark replays them as bare model calls). */
  onModelCall?: (call: VlmModelCall) => void;
}

type Transformers = typeof import('@huggingface/transformers');

const ANSWER = 'ASPO_ANSWER_SLOT_0f3a';

/** A loaded vision-language model, scoring token rows given images. */
export class VisionLanguageScorer {
  private constructor(
    /** Id in `ppl_model`: the Hub id, or folder name @ content hash; `:dtype` appended unless fp32. */
    readonly modelId: string,
    readonly family: string,
    readonly device: string,
    readonly dtype: VlmDtype,
    /** Longest token row (image slots and special tokens included) the model takes. */
    readonly maxLength: number,
    private readonly hf: Transformers,
    private readonly processor: Processor,
    private readonly tokenizer: PreTrainedTokenizer,
    private readonly loaded: PreTrainedModel | null,
    private readonly offsets: OffsetTokenizer,
    private readonly imageTokenId: number,
    private readonly padId: number,
    private readonly eosId: number,
    /** Whether the tokenizer puts a space before the first word itself (Metaspace, add_prefix_space). */
    private readonly prefixSpace: boolean,
  ) {}

  /**
   * Loads `model` (a local folder in the transformers.js layout, checked first, or a Hub id the library downloads
   * where the network allows) with AutoProcessor and AutoModelForImageTextToText.
   */
  static async load(model: string, options: VlmLoadOptions = {}): Promise<VisionLanguageScorer> {
    const dtype = options.dtype ?? 'fp32';
    if (!(dtype in VLM_DTYPE_SUFFIX)) throw new VlmModelError(`--dtype must be one of ${Object.keys(VLM_DTYPE_SUFFIX).join(', ')}, got "${dtype}"`);
    const files = vlmModelFiles(dtype);
    const local = isLocalModel(model);
    if (local) {
      checkModelFolder(model, files, 'vision-language model',
        `A ${dtype} vision-language model folder needs ${files.join(', ')} (the layout of e.g. ` +
        'HuggingFaceTB/SmolVLM-256M-Instruct or onnx-community/llava-1.5-7b-hf on the Hugging Face Hub; see docs/score.md).',
        (message) => new VlmModelError(`--vlm: ${message}`));
    }
    const source = local ? path.resolve(model) : model;
    const hf = await import('@huggingface/transformers');
    hf.env.logLevel = hf.LogLevel.ERROR;
    const pretrained = { local_files_only: local };
    const fail = (error: unknown): never => {
      if (error instanceof VlmModelError) throw error;
      const reason = (error as Error).message;
      throw new VlmModelError(local
        ? `--vlm: cannot load the vision-language model in ${source}: ${reason}`
        : `--vlm: cannot load "${model}" from the Hugging Face Hub or the cache (${hf.env.cacheDir}): ${reason}. ` +
          'Without network access, download the model repository elsewhere and pass its folder.');
    };
    const config = await hf.AutoConfig.from_pretrained(source, pretrained).catch(fail) as unknown as Record<string, unknown>;
    const family = String(config.model_type);
    if (!(family in FAMILIES)) {
      throw new VlmModelError(`--vlm: ${source} is a "${family}" model; the families supported are ${VLM_FAMILIES.join(', ')} ` +
        '(LLaVA-1.5, Idefics3, SmolVLM). See docs/score.md for what each needs.');
    }
    const requested = options.device ?? 'auto';
    if (requested === 'cuda' && !onnxRuntimeHasCuda()) {
      throw new VlmModelError('--device cuda: onnxruntime-node here has no CUDA provider (libonnxruntime_providers_cuda.so is not ' +
        'installed: package.json\'s allowScripts denies the download). Run (cd node_modules/onnxruntime-node && node script/install ' +
        '--onnxruntime-node-install=cuda12) on a CUDA 12 machine (docs/score.md, "On a GPU"), or use --device cpu or auto.');
    }
    const device = requested === 'auto' ? (onnxRuntimeHasCuda() ? 'cuda' : 'cpu') : requested;
    const [processor, vlm] = await Promise.all([
      hf.AutoProcessor.from_pretrained(source, pretrained),
      options.sessions === false ? null : hf.AutoModelForImageTextToText.from_pretrained(source, { ...pretrained, device, dtype }),
    ]).catch(fail);
    const tokenizer = processor.tokenizer;
    if (!tokenizer) throw new VlmModelError(`--vlm: the processor of ${source} has no tokenizer`);
    const textConfig = (config.text_config ?? {}) as Record<string, unknown>;
    const maxLength = contextLength(textConfig, tokenizer.model_max_length);
    if (!Number.isFinite(maxLength)) {
      throw new VlmModelError(`--vlm: cannot tell the context length of ${source}: set text_config.max_position_embeddings in config.json`);
    }
    const imageTokenId = Number(config.image_token_index ?? config.image_token_id);
    if (!Number.isInteger(imageTokenId)) throw new VlmModelError(`--vlm: config.json of ${source} names no image_token_index (or image_token_id)`);
    const eosId = Number(tokenizer.eos_token_id);
    try {
      processor.apply_chat_template([{ role: 'user', content: [{ type: 'text', text: 'x' }] }], {});
    } catch (error) {
      throw new VlmModelError(`--vlm: the tokenizer of ${source} has no usable chat template (chat_template in tokenizer_config.json): ${(error as Error).message}`);
    }
    const probe = tokenizer._tokenizer.encode('a', { add_special_tokens: false }).tokens[0] ?? '';
    const id = await modelId(model, files);
    return new VisionLanguageScorer(dtype === 'fp32' ? id : `${id}:${dtype}`, family, device, dtype, maxLength, hf, processor,
      tokenizer, vlm, hfOffsetTokenizer(tokenizer, { addSpecialTokens: false }), imageTokenId,
      Number(tokenizer.pad_token_id ?? eosId), eosId, /^[▁Ġ ]/.test(probe));
  }

  private get model(): PreTrainedModel {
    if (!this.loaded) throw new Error('the model was loaded without its ONNX sessions (sessions: false)');
    return this.loaded;
  }

  /** The chat template's rendering of a one-turn conversation, split where the answer goes. */
  private template(prompt: string, withImage: boolean): { prefix: string; suffix: string } {
    const user = withImage ? [{ type: 'image' }, { type: 'text', text: prompt }] : [{ type: 'text', text: prompt }];
    const text = this.processor.apply_chat_template([
      { role: 'user', content: user },
      { role: 'assistant', content: [{ type: 'text', text: ANSWER }] },
    ], {}) as string;
    const at = text.indexOf(ANSWER);
    if (at < 0 || text.indexOf(ANSWER, at + 1) >= 0) throw new VlmModelError('the chat template does not write the assistant turn once');
    return { prefix: text.slice(0, at), suffix: text.slice(at + ANSWER.length) };
  }

  /**
   * The prompt through the chat template and the model's processor (image decoded from its file bytes), or through
   * the tokenizer alone for a text-only pair. Whitespace ending the template's prefix goes with the response, where
   * tokenizing the whole conversation would put it (a word's leading space), unless the tokenizer adds that space
   * itself (SentencePiece's "▁"), in which case it is dropped.
   */
  async encodePrompt(prompt: string, image: Uint8Array | null): Promise<EncodedPrompt> {
    const { prefix: full, suffix } = this.template(prompt, image !== null);
    const trailing = /\s*$/.exec(full)![0];
    const prefix = full.slice(0, full.length - trailing.length);
    const lead = this.prefixSpace && trailing === ' ' ? '' : trailing;
    const endIds = suffix.trim() ? this.tokenizer._tokenizer.encode(suffix, { add_special_tokens: false }).ids : [this.eosId];
    if (image === null) {
      return { ids: this.tokenizer._tokenizer.encode(prefix, { add_special_tokens: true }).ids, vision: null, lead, endIds };
    }
    const raw = await decodeRawImage(this.hf, image);
    const processed = (FAMILIES[this.family] === 'images-first'
      ? await this.processor(raw, prefix)
      : await this.processor(prefix, raw)) as Record<string, HfTensor>;
    const ids = (processed.input_ids!.tolist() as Array<Array<bigint | number>>)[0]!.map(Number);
    const vision: VisionInputs = {};
    for (const name of ['pixel_values', 'pixel_attention_mask']) if (processed[name]) vision[name] = processed[name]!;
    return { ids, vision, lead, endIds };
  }

  /** The response tokenized alone (after the prompt's `lead` whitespace), each token labelled with its sentence. */
  encodeResponse(prompt: EncodedPrompt, response: string, sentences: readonly Span[]): EncodedResponse {
    const { ids, sentenceIds } = encodeWithSentences(this.offsets, prompt.lead, response, sentences);
    return { ids, sentenceIds };
  }

  /** Image slots in a token row. */
  imageSlots(ids: readonly number[]): number {
    return ids.reduce((n, id) => n + (id === this.imageTokenId ? 1 : 0), 0);
  }

  /**
   * One vision-encoder call for images whose inputs have the same shape (stacked along the first axis): per image,
   * its features as one row-major [slots, hidden] buffer.
   */
  async imageFeatures(images: readonly VisionInputs[]): Promise<Float32Array[]> {
    if (images.length === 0) return [];
    const inputs: VisionInputs = {};
    for (const name of Object.keys(images[0]!)) inputs[name] = this.hf.cat(images.map((image) => image[name]!), 0);
    const features = await this.model.encode_image(inputs) as HfTensor | undefined;
    if (!features) throw new VlmModelError('the vision encoder returned no image_features');
    const data = features.data as Float32Array;
    const per = data.length / images.length;
    return images.map((_, i) => data.slice(i * per, (i + 1) * per));
  }

  /** Width of the features: the decoder's hidden size. */
  private hidden(features: Float32Array, slots: number): number {
    return features.length / slots;
  }

  /**
   * One forward pass of a batch (embed_tokens, image features into their slots, decoder_model_merged with an empty
   * past), rows padded on the right: logits [rows, width, vocab].
   */
  async logits(rows: readonly ForwardRow[]): Promise<HfTensor> {
    const hf = this.hf;
    const width = Math.max(...rows.map((r) => r.ids.length));
    const ids = new BigInt64Array(rows.length * width).fill(BigInt(this.padId));
    const mask = new BigInt64Array(rows.length * width);
    rows.forEach((row, r) => row.ids.forEach((id, t) => {
      ids[r * width + t] = BigInt(id);
      mask[r * width + t] = 1n;
    }));
    const inputIds = new hf.Tensor('int64', ids, [rows.length, width]);
    const attentionMask = new hf.Tensor('int64', mask, [rows.length, width]);
    let inputsEmbeds = await this.model.encode_text({ input_ids: inputIds }) as HfTensor;
    const withImage = rows.filter((row) => row.features);
    if (withImage.length) {
      const slots = withImage.reduce((n, row) => n + this.imageSlots(row.ids), 0);
      const hidden = this.hidden(withImage[0]!.features!, this.imageSlots(withImage[0]!.ids));
      const all = new Float32Array(slots * hidden);
      let offset = 0;
      for (const row of withImage) {
        all.set(row.features!, offset);
        offset += row.features!.length;
      }
      if (offset !== all.length) throw new VlmModelError(`image features (${offset / hidden} vectors) do not fill the ${slots} image slots of the prompt`);
      const merged = (this.model as unknown as {
        _merge_input_ids_with_image_features(kwargs: Record<string, HfTensor>): { inputs_embeds: HfTensor };
      })._merge_input_ids_with_image_features({
        image_features: new hf.Tensor('float32', all, [slots, hidden]), inputs_embeds: inputsEmbeds, input_ids: inputIds,
        attention_mask: attentionMask,
      });
      inputsEmbeds = merged.inputs_embeds;
    }
    const { logits } = await this.model({ inputs_embeds: inputsEmbeds, attention_mask: attentionMask }) as { logits?: HfTensor };
    if (!logits || logits.dims.length !== 3 || logits.dims[0] !== rows.length || logits.dims[1] !== width) {
      throw new VlmModelError(`the decoder returned no logits [batch, ${width}, vocab] (got ${logits ? `[${logits.dims.join(', ')}]` : 'none'})`);
    }
    return logits;
  }

  /**
   * Per item, log p(ids[t] | ids[<t], image) for t = from..length−1 of its row. Each distinct image (by id) goes
   * through the vision encoder once, images whose inputs have the same shape `batchSize` per call, and its features
   * fill the slots of every row that shows it; then the rows, sorted by length, go `batchSize` per forward pass.
   */
  async scoreRows(items: readonly RowToScore[], options: ScoreRowsOptions): Promise<Float64Array[]> {
    const { batchSize, stats } = options;
    const distinct = new Map<string, VisionInputs>();
    for (const item of items) if (item.imageId !== null && item.vision) distinct.set(item.imageId, item.vision);
    const byShape = new Map<string, Array<[string, VisionInputs]>>();
    for (const entry of distinct) {
      const key = Object.values(entry[1]).map((t) => t.dims.slice(1).join('x')).join('/');
      byShape.set(key, [...(byShape.get(key) ?? []), entry]);
    }
    const features = new Map<string, Float32Array>();
    for (const group of byShape.values()) {
      for (let b = 0; b < group.length; b += batchSize) {
        const batch = group.slice(b, b + batchSize);
        options.onModelCall?.({ kind: 'vision', images: batch.map(([, v]) => v) });
        const t0 = performance.now();
        const out = await this.imageFeatures(batch.map(([, v]) => v));
        if (stats) {
          stats.visionSeconds += (performance.now() - t0) / 1000;
          stats.visionCalls++;
          stats.images += batch.length;
        }
        batch.forEach(([id], i) => features.set(id, out[i]!));
      }
    }
    const rows = items.map((item) => ({ ...item.row, features: item.imageId === null ? null : features.get(item.imageId) ?? null }));
    const order = rows.map((_, i) => i).sort((a, b) => rows[a]!.ids.length - rows[b]!.ids.length);
    const out: Float64Array[] = new Array(rows.length);
    for (let b = 0; b < order.length; b += batchSize) {
      const batch = order.slice(b, b + batchSize);
      const batchRows = batch.map((i) => rows[i]!);
      options.onModelCall?.({ kind: 'decoder', rows: batchRows });
      const t0 = performance.now();
      const logps = await this.tokenLogProbs(batchRows);
      if (stats) {
        stats.decoderSeconds += (performance.now() - t0) / 1000;
        stats.decoderCalls++;
      }
      batch.forEach((i, k) => { out[i] = logps[k]!; });
    }
    return out;
  }

  /** Per row, log p(ids[t] | ids[<t], image) for t = from..length−1 (one forward pass for the batch). */
  async tokenLogProbs(rows: readonly ForwardRow[]): Promise<Float64Array[]> {
    if (rows.length === 0) return [];
    const logits = await this.logits(rows);
    const [, width, vocab] = logits.dims as [number, number, number];
    const data = logits.data as Float32Array;
    return rows.map((row, r) => rowTokenLogProbs(data, r, width, vocab, row.ids, row.from));
  }

  async dispose(): Promise<void> {
    await this.loaded?.dispose();
  }
}

export interface VlmScoreOptions {
  /** Responses per forward pass, and images per vision-encoder call (default DEFAULT_VLM_BATCH_SIZE). */
  batchSize?: number;
  /** Responses per transaction, about (whole pairs; default DEFAULT_VLM_COMMIT_RESPONSES); a killed run redoes at most these. */
  commitResponses?: number;
  /** Skip pairs without an image instead of scoring them without one. */
  requireImage?: boolean;
  onStart?: (info: { pendingResponses: number }) => void;
  onBatch?: (progress: { responses: number; sentences: number; total: number }) => void;
  /** Sees every model call (the benchmark replays them as bare model calls). */
  onModelCall?: (call: VlmModelCall) => void;
}

export interface VlmScoreSummary extends ResponseScoreSummary, VlmRunStats {
  device: string;
  /** Responses of text-only pairs skipped with requireImage. */
  textOnlySkipped: number;
}

interface PreparedResponse extends RowToScore {
  response: PendingResponse;
  idxs: number[];
  sentenceIds: number[];
  responseTokens: number;
}

/**
 * Scores every response with a sentence whose ppl_model is not this model: per transaction (about `commitResponses`
 * responses, whole pairs), each distinct image is encoded once (images of the same input shape `batchSize` per call),
 * then the responses, sorted by length, go `batchSize` per forward pass. Responses longer than the model's context are
 * counted and skipped, never truncated.
 */
export async function scoreVlm(store: Store, vlm: VisionLanguageScorer, options: VlmScoreOptions = {}): Promise<VlmScoreSummary> {
  const started = performance.now();
  const batchSize = options.batchSize ?? DEFAULT_VLM_BATCH_SIZE;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`batchSize must be a positive integer, got ${batchSize}`);
  const commit = options.commitResponses ?? DEFAULT_VLM_COMMIT_RESPONSES;
  if (!Number.isInteger(commit) || commit < 1) throw new Error(`commitResponses must be a positive integer, got ${commit}`);
  const all = await pendingResponses(store, 'ppl_model', vlm.modelId);
  const textOnly = all.filter((r) => r.image_id === null).length;
  const pending = options.requireImage ? all.filter((r) => r.image_id !== null) : all;
  const summary: VlmScoreSummary = {
    signal: 'perplexity', model: vlm.modelId, device: vlm.device, responses: 0, sentences: 0, emptySentences: 0, tooLong: 0, unencodable: 0, modelSeconds: 0, seconds: 0,
    textOnlyResponses: textOnly, textOnlySkipped: options.requireImage ? textOnly : 0, imageErrors: 0,
    images: 0, visionCalls: 0, decoderCalls: 0, visionSeconds: 0, decoderSeconds: 0,
  };
  options.onStart?.({ pendingResponses: pending.length });
  let done = 0;
  for (const chunk of pairChunks(pending, commit)) {
    const prepared = await prepareChunk(store, vlm, chunk, summary);
    const logps = await vlm.scoreRows(prepared, { batchSize, stats: summary, onModelCall: options.onModelCall });
    const rows: SentenceScoreRow[] = [];
    prepared.forEach((p, i) => {
      // logps[i][j] belongs to token from + j: the response's tokens come first, then the turn's end.
      sentenceLogProbs(logps[i]!.subarray(0, p.responseTokens), p.sentenceIds, p.idxs.length).forEach((s, k) => {
        if (s.n === 0) summary.emptySentences++;
        rows.push(perplexityRow({ pairId: p.response.pair_id, side: p.response.side }, p.idxs[k]!, s, vlm.modelId));
      });
    });
    await store.upsert('sentence_scores', rows);
    summary.responses += prepared.length;
    summary.sentences += rows.length;
    done += chunk.length;
    options.onBatch?.({ responses: done, sentences: summary.sentences, total: pending.length });
  }
  summary.modelSeconds = summary.visionSeconds + summary.decoderSeconds;
  summary.seconds = (performance.now() - started) / 1000;
  return summary;
}

/** Consecutive responses, about `size` per chunk, never splitting a pair (pending responses come ordered by pair). */
function* pairChunks(pending: PendingResponse[], size: number): Generator<PendingResponse[]> {
  let start = 0;
  while (start < pending.length) {
    let end = Math.min(start + size, pending.length);
    while (end < pending.length && pending[end]!.pair_id === pending[end - 1]!.pair_id) end++;
    yield pending.slice(start, end);
    start = end;
  }
}

/** Encodes a chunk's prompts (once per pair, image processed) and responses; skipped responses are counted. */
async function prepareChunk(store: Store, vlm: VisionLanguageScorer, chunk: PendingResponse[],
  summary: VlmScoreSummary): Promise<PreparedResponse[]> {
  const prompts = new Map<string, Promise<EncodedPrompt>>();
  const encodedPrompt = (response: PendingResponse) => {
    let promise = prompts.get(response.pair_id);
    if (!promise) {
      promise = (async () => {
        let bytes: Uint8Array | null = null;
        if (response.image_id !== null) {
          bytes = await store.scalar('SELECT bytes FROM images WHERE image_id = $1', [response.image_id]) as Uint8Array | null;
          if (!bytes) throw new Error('image missing from the images table');
        }
        return vlm.encodePrompt(response.prompt, bytes);
      })();
      promise.catch(() => undefined); // awaited below; a failure is counted there
      prompts.set(response.pair_id, promise);
    }
    return promise;
  };
  const items: PreparedResponse[] = [];
  for (const response of chunk) {
    let prompt: EncodedPrompt;
    try {
      prompt = await encodedPrompt(response);
    } catch {
      summary.imageErrors++;
      continue;
    }
    const sentences = await store.all<Span & { idx: number }>(
      'SELECT idx, char_start AS start, char_end AS end FROM sentences WHERE pair_id = $1 AND side = $2 ORDER BY idx', [response.pair_id, response.side]);
    const encoded = vlm.encodeResponse(prompt, response.response, sentences);
    const ids = [...prompt.ids, ...encoded.ids, ...prompt.endIds];
    if (ids.length > vlm.maxLength) {
      summary.tooLong++;
      continue;
    }
    items.push({
      response, idxs: sentences.map((s) => s.idx), sentenceIds: encoded.sentenceIds, responseTokens: encoded.ids.length,
      imageId: response.image_id, vision: prompt.vision, row: { ids, from: prompt.ids.length, features: null },
    });
  }
  return items;
}
