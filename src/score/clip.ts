import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { PreTrainedModel, PreTrainedTokenizer, Tensor as HfTensor } from '@huggingface/transformers';
import pLimit from 'p-limit';
import sharp from 'sharp';
import { checkModelFolder, isLocalModel, modelIdentity } from '../model/hf-folder.js';

/**
 * A CLIP-style dual encoder loaded through `@huggingface/transformers` (ONNX Runtime): the vision tower
 * (`CLIPVisionModelWithProjection`, onnx/vision_model.onnx) and the text tower (`CLIPTextModelWithProjection`,
 * onnx/text_model.onnx), each with its projection, so both embed into the same space. Embeddings come back
 * L2-normalised, so a dot product is the cosine similarity (the logit scale is irrelevant).
 */

export type ClipDevice = 'auto' | 'cpu' | 'cuda';

/** The files a CLIP model folder in transformers.js layout must hold (fp32 ONNX weights). */
export const CLIP_MODEL_FILES = [
  'config.json',
  'preprocessor_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'onnx/vision_model.onnx',
  'onnx/text_model.onnx',
] as const;

export interface ClipLoadOptions {
  device?: ClipDevice;
  /** Images decoded and preprocessed at once (default 4). */
  decodeConcurrency?: number;
  /** CPU threads of each model call (ONNX Runtime's intra-op threads; default: its own choice, all cores). */
  threads?: number;
}

/** Token ids of one batch of texts, fitted to the context (not padded: `embedTexts` pads them on the right). */
export interface TextBatch {
  ids: number[][];
  /** Per text: it was longer than the text encoder's context and was cut (see `fitToContext`). */
  truncated: boolean[];
}

export class ClipModelError extends Error {}

/**
 * Whether onnxruntime-node (the one transformers.js loads) has its CUDA provider library installed.
 * Checked on disk so that `--device auto` on a CPU-only machine does not make ONNX Runtime log a failed load.
 */
export function onnxRuntimeHasCuda(): boolean {
  try {
    const entry = createRequire(import.meta.url).resolve('onnxruntime-node');
    const bin = path.join(path.dirname(entry), '..', 'bin', 'napi-v6', process.platform, process.arch);
    return existsSync(path.join(bin, 'libonnxruntime_providers_cuda.so'));
  } catch {
    return false;
  }
}

/** Checks a local CLIP folder, naming what is missing and where a complete one comes from. */
function checkClipFolder(folder: string): void {
  checkModelFolder(folder, CLIP_MODEL_FILES, 'CLIP model',
    `A CLIP model folder needs ${CLIP_MODEL_FILES.join(', ')} ` +
    '(the layout of e.g. Xenova/clip-vit-base-patch32 on the Hugging Face Hub: copy that repository, e.g. ' +
    '`git clone https://huggingface.co/Xenova/clip-vit-base-patch32` on a machine with network access).',
    (message) => new ClipModelError(message));
}

/** The id and digest of a CLIP model without loading it (a local folder is checked first): what a queue job names. */
export async function clipIdentity(model: string): Promise<{ id: string; digest: string | null }> {
  if (isLocalModel(model)) checkClipFolder(model);
  return modelIdentity(model, CLIP_MODEL_FILES);
}

/**
 * Keeps a tokenised text within the encoder's context: longer texts keep their first `context − 1` tokens and
 * their last token (the end-of-text token, where CLIP pools the text). Plain truncation would drop that token.
 */
export function fitToContext(ids: readonly number[], context: number): { ids: number[]; truncated: boolean } {
  if (ids.length <= context) return { ids: [...ids], truncated: false };
  return { ids: [...ids.slice(0, context - 1), ids[ids.length - 1]!], truncated: true };
}

/** Rows scaled to unit L2 norm (a zero row stays zero), from a row-major [rows, dim] buffer. */
export function normalizeRows(data: ArrayLike<number>, rows: number, dim: number): Float32Array[] {
  const out: Float32Array[] = [];
  for (let r = 0; r < rows; r++) {
    const row = new Float32Array(dim);
    let norm = 0;
    for (let d = 0; d < dim; d++) {
      row[d] = data[r * dim + d]!;
      norm += row[d]! * row[d]!;
    }
    const scale = norm > 0 ? 1 / Math.sqrt(norm) : 0;
    for (let d = 0; d < dim; d++) row[d]! *= scale;
    out.push(row);
  }
  return out;
}

/** Dot product; the cosine similarity of two unit vectors. Accumulated in float64. */
export function dot(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new Error(`embedding sizes differ: image ${a.length}, text ${b.length}`);
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += a[i]! * b[i]!;
  return sum;
}

type Transformers = typeof import('@huggingface/transformers');
type ImageProcessor = Awaited<ReturnType<Transformers['AutoImageProcessor']['from_pretrained']>>;
type RawImage = InstanceType<Transformers['RawImage']>;

/** Decodes an image file (any format sharp reads) into the library's RGB RawImage, as its processors take it. */
export async function decodeRawImage(hf: Transformers, bytes: Uint8Array): Promise<RawImage> {
  const { data, info } = await sharp(bytes).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  return new hf.RawImage(new Uint8ClampedArray(data.buffer, data.byteOffset, data.length), info.width, info.height, 3);
}

export class ClipEncoder {
  private readonly limit: ReturnType<typeof pLimit>;

  private constructor(
    /** Cache key of the model: Hub id, or folder name @ content hash. */
    readonly modelId: string,
    /** sha256 over the model's files (null for a Hub id): what queue workers compare with a job's. */
    readonly digest: string | null,
    /** Execution device actually used. */
    readonly device: 'cpu' | 'cuda',
    /** Tokens the text encoder accepts, special tokens included. */
    readonly contextLength: number,
    private readonly hf: Transformers,
    private readonly tokenizer: PreTrainedTokenizer,
    private readonly processor: ImageProcessor,
    private readonly vision: PreTrainedModel,
    private readonly text: PreTrainedModel,
    decodeConcurrency: number,
  ) {
    this.limit = pLimit(decodeConcurrency);
  }

  /**
   * Loads `model`: a local folder (checked first, see CLIP_MODEL_FILES) or a Hugging Face Hub id, which the library
   * downloads into its cache where the network allows (offline, only an already cached copy loads).
   */
  static async load(model: string, options: ClipLoadOptions = {}): Promise<ClipEncoder> {
    const local = isLocalModel(model);
    if (local) checkClipFolder(model);
    const source = local ? path.resolve(model) : model;
    const hf = await import('@huggingface/transformers');
    hf.env.logLevel = hf.LogLevel.ERROR;
    const pretrained = { local_files_only: local };
    const fail = (error: unknown): never => {
      const reason = (error as Error).message;
      throw new ClipModelError(local
        ? `cannot load the CLIP model in ${source}: ${reason}`
        : `cannot load CLIP model "${model}" from the Hugging Face Hub or the cache (${hf.env.cacheDir}): ${reason}. ` +
          'Without network access, download the model repository elsewhere (config, preprocessor, tokenizer and ' +
          'onnx/vision_model.onnx + onnx/text_model.onnx) and pass its folder to --clip.');
    };
    const [tokenizer, processor, config] = await Promise.all([
      hf.AutoTokenizer.from_pretrained(source, pretrained),
      hf.AutoImageProcessor.from_pretrained(source, pretrained),
      hf.AutoConfig.from_pretrained(source, pretrained),
    ]).catch(fail);
    const session = options.threads ? { session_options: { intraOpNumThreads: options.threads, interOpNumThreads: 1 } } : {};
    const towers = async (device: 'cpu' | 'cuda') => Promise.all([
      hf.CLIPVisionModelWithProjection.from_pretrained(source, { ...pretrained, ...session, config, device, dtype: 'fp32' }),
      hf.CLIPTextModelWithProjection.from_pretrained(source, { ...pretrained, ...session, config, device, dtype: 'fp32' }),
    ]);
    const requested = options.device ?? 'auto';
    if (requested === 'cuda' && !onnxRuntimeHasCuda()) {
      throw new ClipModelError('--device cuda: onnxruntime-node here has no CUDA provider (libonnxruntime_providers_cuda.so ' +
        'is not installed: npm ci never downloads it). On a machine with CUDA, install it as the README\'s "GPU" ' +
        'section says, or use --device cpu or auto.');
    }
    let device: 'cpu' | 'cuda' = requested === 'auto' ? (onnxRuntimeHasCuda() ? 'cuda' : 'cpu') : requested;
    let models: [PreTrainedModel, PreTrainedModel];
    try {
      models = await towers(device);
    } catch (error) {
      if (requested !== 'auto' || device === 'cpu') fail(error);
      // auto: CUDA where onnxruntime has it, else the CPU.
      device = 'cpu';
      models = await towers(device).catch(fail);
    }
    const textConfig = (config as unknown as { text_config?: { max_position_embeddings?: number } }).text_config;
    const context = Math.min(
      textConfig?.max_position_embeddings ?? Infinity,
      Number(tokenizer.model_max_length) > 0 ? Number(tokenizer.model_max_length) : Infinity,
    );
    if (!Number.isFinite(context) || context < 2) {
      throw new ClipModelError(`cannot tell the text encoder's context length of ${source}: set text_config.max_position_embeddings in config.json`);
    }
    if (tokenizer.pad_token_id === undefined || tokenizer.pad_token_id === null) {
      throw new ClipModelError(`the tokenizer of ${source} has no pad_token (set it in tokenizer_config.json)`);
    }
    const identity = await modelIdentity(model, CLIP_MODEL_FILES);
    return new ClipEncoder(identity.id, identity.digest, device, context, hf, tokenizer, processor, models[0], models[1],
      options.decodeConcurrency ?? 4);
  }

  /** Tokenises texts, fitting each to the context (counted in `truncated`). */
  tokenize(texts: readonly string[]): TextBatch {
    const fitted = texts.map((text) => fitToContext(this.tokenizer.encode(text), this.contextLength));
    return { ids: fitted.map((f) => f.ids), truncated: fitted.map((f) => f.truncated) };
  }

  /** Unit-norm text embeddings of one batch (one text-tower call). */
  async embedTexts(batch: TextBatch): Promise<Float32Array[]> {
    const rows = batch.ids.length;
    if (rows === 0) return [];
    const length = Math.max(...batch.ids.map((ids) => ids.length));
    const ids = new BigInt64Array(rows * length).fill(BigInt(this.tokenizer.pad_token_id));
    const mask = new BigInt64Array(rows * length);
    batch.ids.forEach((row, r) => row.forEach((id, t) => {
      ids[r * length + t] = BigInt(id);
      mask[r * length + t] = 1n;
    }));
    const inputs = {
      input_ids: new this.hf.Tensor('int64', ids, [rows, length]),
      attention_mask: new this.hf.Tensor('int64', mask, [rows, length]),
    };
    const { text_embeds: embeds } = await this.text(inputs) as { text_embeds?: HfTensor };
    return this.unitRows(embeds, 'text_embeds', rows);
  }

  /**
   * Decodes image files (any format sharp reads, `decodeConcurrency` at a time) and runs the model's image processor
   * on those that decode: `pixelValues` [decoded.length, 3, H, W] (null when none decodes); `failures` names the rest.
   */
  async preprocessImages(files: readonly Uint8Array[]): Promise<PreprocessedImages> {
    const failures: PreprocessedImages['failures'] = [];
    const images = await Promise.all(files.map((bytes, index) => this.limit(async () => {
      try {
        return await decodeRawImage(this.hf, bytes);
      } catch (error) {
        failures.push({ index, reason: (error as Error).message });
        return null;
      }
    })));
    const decoded = images.flatMap((image, i) => (image ? [i] : []));
    if (decoded.length === 0) return { pixelValues: null, decoded, failures };
    const kept = decoded.map((i) => images[i]!);
    const pixelValues = this.plainProcessor() ? await this.processPlain(kept) : await this.processWithLibrary(kept);
    return { pixelValues, decoded, failures };
  }

  /** The library's image processor as is: pixel_values [n, 3, H, W]. */
  async processWithLibrary(images: InstanceType<Transformers['RawImage']>[]): Promise<HfTensor> {
    const { pixel_values: pixelValues } = await this.processor(images) as { pixel_values: HfTensor };
    return pixelValues;
  }

  /**
   * The same result as `processWithLibrary` for the usual CLIP processor (resize, centre crop, rescale, normalise):
   * the geometry through the library's own (sharp-based) resize and crop, the per-pixel arithmetic in one pass
   * straight into the batch tensor, with the library's float32 rounding at each step. The library's generic path
   * (float copy, three passes, a permutation, a concatenation) costs more than a small model's forward pass.
   */
  async processPlain(images: InstanceType<Transformers['RawImage']>[]): Promise<HfTensor> {
    const p = this.processor as unknown as PlainProcessorConfig & {
      resize(image: InstanceType<Transformers['RawImage']>): Promise<InstanceType<Transformers['RawImage']>>;
    };
    const cropped = await Promise.all(images.map(async (image) => {
      let out = p.do_resize ? await p.resize(image) : image;
      if (p.do_center_crop) {
        const [width, height] = typeof p.crop_size === 'number' ? [p.crop_size, p.crop_size] : [p.crop_size!.width, p.crop_size!.height];
        out = await out.center_crop(width, height);
      }
      return out;
    }));
    const { width, height } = cropped[0]!;
    if (cropped.some((image) => image.width !== width || image.height !== height || image.channels !== 3)) {
      return this.processWithLibrary(images); // sizes differ: let the library report it as it would
    }
    const plane = width * height;
    const out = new Float32Array(cropped.length * 3 * plane);
    const mean = typeof p.image_mean === 'number' ? [p.image_mean, p.image_mean, p.image_mean] : p.image_mean ?? [0, 0, 0];
    const std = typeof p.image_std === 'number' ? [p.image_std, p.image_std, p.image_std] : p.image_std ?? [1, 1, 1];
    const factor = p.do_rescale ? p.rescale_factor ?? 1 / 255 : 1;
    cropped.forEach((image, n) => {
      const data = image.data;
      for (let c = 0; c < 3; c++) {
        const base = (n * 3 + c) * plane;
        const m = mean[c]!;
        const sd = std[c]!;
        for (let i = 0; i < plane; i++) {
          let v = p.do_rescale ? Math.fround(factor * data[i * 3 + c]!) : data[i * 3 + c]!;
          if (p.do_normalize) v = Math.fround((v - m) / sd);
          out[base + i] = v;
        }
      }
    });
    return new this.hf.Tensor('float32', out, [cropped.length, 3, height, width]);
  }

  /** Whether the processor does nothing beyond RGB conversion, resize, centre crop, rescale and normalise. */
  private plainProcessor(): boolean {
    const p = this.processor as unknown as PlainProcessorConfig;
    return this.processor instanceof this.hf.CLIPImageProcessor && !p.do_crop_margin && !p.do_thumbnail && !p.do_pad &&
      !p.do_flip_channel_order && !p.do_convert_grayscale && p.do_convert_rgb !== false;
  }

  /** Unit-norm image embeddings of preprocessed images (one vision-tower call). */
  async embedImages(pixelValues: HfTensor): Promise<Float32Array[]> {
    const rows = pixelValues.dims[0]!;
    if (rows === 0) return [];
    const { image_embeds: embeds } = await this.vision({ pixel_values: pixelValues }) as { image_embeds?: HfTensor };
    return this.unitRows(embeds, 'image_embeds', rows);
  }

  private unitRows(embeds: HfTensor | undefined, name: string, rows: number): Float32Array[] {
    if (!embeds || embeds.dims.length !== 2 || embeds.dims[0] !== rows) {
      throw new ClipModelError(`the CLIP model's ${name} output is missing or not [${rows}, dim] (got ${embeds ? `[${embeds.dims}]` : 'none'})`);
    }
    return normalizeRows(embeds.data as Float32Array, rows, embeds.dims[1]!);
  }

  async dispose(): Promise<void> {
    await Promise.all([this.vision.dispose(), this.text.dispose()]);
  }
}

/** The image-processor settings the plain path reads (the library's ImageProcessor fields). */
interface PlainProcessorConfig {
  do_resize?: boolean;
  do_center_crop?: boolean;
  crop_size?: number | { width: number; height: number };
  do_rescale?: boolean;
  rescale_factor?: number;
  do_normalize?: boolean;
  image_mean?: number | number[];
  image_std?: number | number[];
  do_crop_margin?: boolean;
  do_thumbnail?: boolean;
  do_pad?: boolean;
  do_flip_channel_order?: boolean;
  do_convert_grayscale?: boolean;
  do_convert_rgb?: boolean;
}

export interface PreprocessedImages {
  pixelValues: HfTensor | null;
  /** Indices (into the files given) of the images in `pixelValues`, in order. */
  decoded: number[];
  failures: Array<{ index: number; reason: string }>;
}
