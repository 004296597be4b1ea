/**
 * A small vision-language model written with TensorFlow.js ops on tf.variable weights:
 * the image is cut into patches, each patch is projected linearly to a visual token,
 * and a causal (GPT-style, pre-LayerNorm) transformer reads
 *
 *     [visual tokens] <bos> prompt response <eos>
 *
 * Rows without an image get a learned "no image" prefix in place of the visual tokens,
 * so images and text-only rows mix in one batch. The token embedding doubles as the
 * output projection (weight tying).
 */
import { tf } from './backend.js';
import { BOS_ID, EOS_ID, PAD_ID } from './tokenizer.js';
import { Rng } from '../util/random.js';

export interface ModelConfig {
  vocabSize: number;
  /** Embedding width d. */
  width: number;
  layers: number;
  heads: number;
  /** Hidden width of the MLP is mlpRatio · width. */
  mlpRatio: number;
  /** Positions in total: visual tokens + text tokens (BOS, prompt, response; EOS is predicted, not read). */
  context: number;
  /** Images are square, imageSize × imageSize pixels, cut into patchSize × patchSize patches. */
  imageSize: number;
  patchSize: number;
  channels: number;
  /**
   * 0: each patch is projected linearly to its visual token. > 0: a small convolutional stem first —
   * a 4×4 stride-4 convolution to this many channels, a 3×3 convolution with a residual connection
   * (GELU after each), then each patch of the resulting map is projected to its token.
   */
  stemChannels: number;
  /**
   * 0: the patch features are projected linearly to the token. > 0: the patch features, with the patch's grid row and
   * column appended as one-hot features, go through a hidden layer of this width (GELU) first — so a token can state
   * where its patch is and how much of it an object fills in the token's direction, which LayerNorm keeps (it divides
   * out the scale a linear projection of an object's pixels would carry its size in). Absent in older configs: 0.
   */
  patchHidden?: number;
  /**
   * The first this-many heads of every layer attend to the visual tokens only (text positions cannot see text in
   * them), so those heads can only look things up in the image. Absent in older configs: 0.
   */
  imageHeads?: number;
}

/** The benchmark configuration of the model issue (≈0.97 M parameters with a 512-token vocabulary). */
export const DEFAULT_MODEL_CONFIG: Omit<ModelConfig, 'vocabSize'> = {
  width: 128, layers: 4, heads: 4, mlpRatio: 4, context: 96, imageSize: 64, patchSize: 16, channels: 3, stemChannels: 0,
};

/** Side of the stem's first (stride) convolution. */
export const STEM_STRIDE = 4;

export function validateModelConfig(input: ModelConfig): ModelConfig {
  // checkpoints written before the stem existed have no stemChannels: a linear patch projection
  // patchHidden stays absent when absent (0), so configs written before it round-trip unchanged
  const config = { ...input, stemChannels: input.stemChannels ?? 0 };
  if (config.patchHidden !== undefined && (!Number.isInteger(config.patchHidden) || config.patchHidden < 0)) {
    throw new Error(`model config: patchHidden must be an integer ≥ 0, got ${config.patchHidden}`);
  }
  if (config.imageHeads !== undefined && (!Number.isInteger(config.imageHeads) || config.imageHeads < 0 || config.imageHeads > config.heads)) {
    throw new Error(`model config: imageHeads must be an integer from 0 to heads (${config.heads}), got ${config.imageHeads}`);
  }
  if (!Number.isInteger(config.stemChannels) || config.stemChannels < 0) {
    throw new Error(`model config: stemChannels must be an integer ≥ 0, got ${config.stemChannels}`);
  }
  if (config.stemChannels > 0 && config.patchSize % STEM_STRIDE !== 0) {
    throw new Error(`model config: with a convolutional stem, patchSize (${config.patchSize}) must be divisible by ${STEM_STRIDE}`);
  }
  const positive = ['vocabSize', 'width', 'layers', 'heads', 'mlpRatio', 'context', 'imageSize', 'patchSize', 'channels'] as const;
  for (const field of positive) {
    const value = config[field];
    if (!Number.isInteger(value) || value <= 0) throw new Error(`model config: ${field} must be a positive integer, got ${value}`);
  }
  if (config.width % config.heads !== 0) throw new Error(`model config: width (${config.width}) must be divisible by heads (${config.heads})`);
  if (config.imageSize % config.patchSize !== 0) {
    throw new Error(`model config: imageSize (${config.imageSize}) must be divisible by patchSize (${config.patchSize})`);
  }
  if (config.context <= visualTokenCount(config) + 1) {
    throw new Error(`model config: context (${config.context}) must exceed the ${visualTokenCount(config)} visual tokens plus BOS`);
  }
  return config;
}

export function visualTokenCount(config: ModelConfig): number {
  return (config.imageSize / config.patchSize) ** 2;
}

/** Text positions available: BOS + prompt + response tokens must fit (the final EOS is only predicted). */
export function textContext(config: ModelConfig): number {
  return config.context - visualTokenCount(config);
}

/** Inputs of the log-prob interface: token ids as the tokenizer gives them (no BOS/EOS). */
export interface ResponseBatch {
  /** [B, imageSize, imageSize, channels], pixel values scaled to [-1, 1] (see images.ts); null: no images. */
  images?: tf.Tensor4D | null;
  /** Per row, whether its image is real; rows marked false use the "no image" prefix. Default: all true when images are given. */
  hasImage?: boolean[];
  promptIds: number[][];
  responseIds: number[][];
}

export interface ResponseLogProbs {
  /** [B, R] log p(response token j | image, prompt, response tokens < j); column responseIds[b].length is EOS. */
  logps: tf.Tensor2D;
  /** [B, R] 1 for real tokens (response + EOS), 0 for padding. */
  mask: tf.Tensor2D;
}

export interface GenerateOptions {
  images?: tf.Tensor4D | null;
  hasImage?: boolean[];
  promptIds: number[][];
  maxTokens: number;
  /** 0 (default) is greedy decoding; otherwise sample from softmax(logits / temperature). */
  temperature?: number;
  /** Keep only the k most likely tokens when sampling (default: all). */
  topK?: number;
  /** Nucleus sampling: keep the most likely tokens whose probabilities first reach p together (default 1: all). */
  topP?: number;
  seed?: number;
}

/** Token layout of a batch, computed without tensors (pure). */
export interface BatchLayout {
  batchSize: number;
  /** Text input length L (BOS + longest prompt+response in the batch). */
  length: number;
  /** [B·L] input ids: BOS, prompt, response, then PAD. */
  inputs: Int32Array;
  /** [B·L] id each position must predict (the next token; EOS after the response; PAD beyond). */
  targets: Int32Array;
  /** Longest response + 1 (EOS). */
  responseWidth: number;
  /** [B·R·L] one-hot: response column j of row b reads input position promptLength_b + j. */
  select: Float32Array;
  /** [B·R] 1 on real response columns. */
  mask: Float32Array;
}

export function layoutBatch(promptIds: number[][], responseIds: number[][], maxLength: number): BatchLayout {
  const batchSize = promptIds.length;
  if (responseIds.length !== batchSize) throw new Error(`batch: ${batchSize} prompts but ${responseIds.length} responses`);
  if (batchSize === 0) throw new Error('batch: no rows');
  const rowLength = promptIds.map((p, b) => 1 + p.length + responseIds[b]!.length);
  const length = Math.max(...rowLength);
  const over = rowLength.findIndex((n) => n > maxLength);
  if (over >= 0) {
    throw new Error(`batch row ${over}: BOS + ${promptIds[over]!.length} prompt + ${responseIds[over]!.length} response tokens ` +
      `= ${rowLength[over]} exceed the model's ${maxLength} text positions`);
  }
  const responseWidth = Math.max(...responseIds.map((r) => r.length)) + 1;
  const inputs = new Int32Array(batchSize * length).fill(PAD_ID);
  const targets = new Int32Array(batchSize * length).fill(PAD_ID);
  const select = new Float32Array(batchSize * responseWidth * length);
  const mask = new Float32Array(batchSize * responseWidth);
  for (let b = 0; b < batchSize; b++) {
    const sequence = [BOS_ID, ...promptIds[b]!, ...responseIds[b]!, EOS_ID];
    for (let t = 0; t < sequence.length - 1; t++) {
      inputs[b * length + t] = sequence[t]!;
      targets[b * length + t] = sequence[t + 1]!;
    }
    const p = promptIds[b]!.length;
    for (let j = 0; j <= responseIds[b]!.length; j++) {
      select[(b * responseWidth + j) * length + p + j] = 1;
      mask[b * responseWidth + j] = 1;
    }
  }
  return { batchSize, length, inputs, targets, responseWidth, select, mask };
}

type Weights = Record<string, tf.Variable>;

/** Parameter names and shapes, in a fixed order (the checkpoint order). */
export function parameterShapes(config: ModelConfig): Array<[string, number[]]> {
  const { width: d, vocabSize, context, layers, mlpRatio, patchSize, channels, stemChannels: c } = config;
  const shapes: Array<[string, number[]]> = [['tok_emb', [vocabSize, d]], ['pos_emb', [context, d]]];
  let features = patchSize * patchSize * channels;
  if (c > 0) {
    const q = patchSize / STEM_STRIDE;
    shapes.push(['stem.w1', [STEM_STRIDE * STEM_STRIDE * channels, c]], ['stem.b1', [c]], ['stem.w2', [9 * c, c]], ['stem.b2', [c]]);
    features = q * q * c;
  }
  const hidden = config.patchHidden ?? 0;
  if (hidden > 0) {
    shapes.push(['patch.hidden.w', [features + 2 * (config.imageSize / patchSize), hidden]], ['patch.hidden.b', [hidden]]);
    features = hidden;
  }
  shapes.push(['patch.w', [features, d]], ['patch.b', [d]]);
  shapes.push(['no_image', [visualTokenCount(config), d]]);
  for (let l = 0; l < layers; l++) {
    shapes.push(
      [`h${l}.ln1.g`, [d]], [`h${l}.ln1.b`, [d]],
      [`h${l}.attn.wq`, [d, d]], [`h${l}.attn.bq`, [d]],
      [`h${l}.attn.wk`, [d, d]], [`h${l}.attn.bk`, [d]],
      [`h${l}.attn.wv`, [d, d]], [`h${l}.attn.bv`, [d]],
      [`h${l}.attn.wo`, [d, d]], [`h${l}.attn.bo`, [d]],
      [`h${l}.ln2.g`, [d]], [`h${l}.ln2.b`, [d]],
      [`h${l}.mlp.w1`, [d, mlpRatio * d]], [`h${l}.mlp.b1`, [mlpRatio * d]],
      [`h${l}.mlp.w2`, [mlpRatio * d, d]], [`h${l}.mlp.b2`, [d]],
    );
  }
  shapes.push(['ln_f.g', [d]], ['ln_f.b', [d]]);
  return shapes;
}

/**
 * GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/√(2·layers), LayerNorm gain 1, biases 0;
 * the stem's convolutions N(0, 1/fan-in) so that pixel features keep their scale through it.
 */
export function initialValues(config: ModelConfig, seed: number): Record<string, Float32Array> {
  const rng = new Rng(seed);
  const values: Record<string, Float32Array> = {};
  for (const [name, shape] of parameterShapes(config)) {
    const size = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(size);
    const leaf = name.slice(name.lastIndexOf('.') + 1);
    if (name.endsWith('.g')) data.fill(1);
    else if (shape.length > 1 || name === 'no_image') {
      const std = name.startsWith('stem.') || name.startsWith('patch.hidden.') ? 1 / Math.sqrt(shape[0]!)
        : leaf === 'wo' || leaf === 'w2' ? 0.02 / Math.sqrt(2 * config.layers) : 0.02;
      for (let i = 0; i < size; i++) data[i] = std * rng.normal();
    }
    values[name] = data;
  }
  return values;
}

export class VisionLanguageModel {
  private readonly causalMasks = new Map<number, tf.Tensor>();

  private constructor(readonly config: ModelConfig, readonly weights: Weights) {}

  /** A freshly initialised model; the same seed gives the same weights on every backend. */
  static init(config: ModelConfig, seed: number): VisionLanguageModel {
    const valid = validateModelConfig(config);
    return VisionLanguageModel.fromValues(valid, initialValues(valid, seed));
  }

  static fromValues(input: ModelConfig, values: Record<string, Float32Array>): VisionLanguageModel {
    const config = validateModelConfig(input);
    const weights: Weights = {};
    for (const [name, shape] of parameterShapes(config)) {
      const data = values[name];
      if (!data) throw new Error(`model weights: missing ${name}`);
      const size = shape.reduce((a, b) => a * b, 1);
      if (data.length !== size) throw new Error(`model weights: ${name} has ${data.length} values, expected ${size} (shape ${shape.join('×')})`);
      weights[name] = tf.variable(tf.tensor(data, shape, 'float32'), true, `${name}_${nextId++}`);
    }
    return new VisionLanguageModel(config, weights);
  }

  get parameterCount(): number {
    return Object.values(this.weights).reduce((n, w) => n + w.size, 0);
  }

  /** Copies of the weights as Float32Arrays, in parameterShapes order. */
  async values(): Promise<Record<string, Float32Array>> {
    const values: Record<string, Float32Array> = {};
    for (const [name, w] of Object.entries(this.weights)) values[name] = (await w.data()) as Float32Array;
    return values;
  }

  /** `loss()` and its gradient with respect to every weight, keyed by weight name (as `weights` and the optimizer are). */
  gradients(loss: () => tf.Scalar): { value: tf.Scalar; grads: Record<string, tf.Tensor> } {
    const names = new Map(Object.entries(this.weights).map(([name, w]) => [w.name, name]));
    const { value, grads } = tf.variableGrads(loss, Object.values(this.weights));
    const byName: Record<string, tf.Tensor> = {};
    for (const [tfName, g] of Object.entries(grads)) byName[names.get(tfName)!] = g;
    return { value, grads: byName };
  }

  dispose(): void {
    for (const w of Object.values(this.weights)) w.dispose();
    for (const m of this.causalMasks.values()) m.dispose();
    this.causalMasks.clear();
  }

  private w(name: string): tf.Variable {
    return this.weights[name]!;
  }

  /**
   * 0 on and below the diagonal, -1e9 above: position t attends to positions ≤ t. [T, T], or with image heads
   * [heads, T, T], where the first imageHeads heads also get -1e9 on every key past the visual tokens.
   */
  private causalMask(length: number): tf.Tensor {
    let mask = this.causalMasks.get(length);
    if (!mask) {
      const data = new Float32Array(length * length);
      for (let i = 0; i < length; i++) for (let j = i + 1; j < length; j++) data[i * length + j] = -1e9;
      const imageHeads = this.config.imageHeads ?? 0;
      if (imageHeads === 0) mask = tf.keep(tf.tensor2d(data, [length, length]));
      else {
        const n = visualTokenCount(this.config);
        const image = data.slice();
        for (let i = 0; i < length; i++) for (let j = n; j < length; j++) image[i * length + j] = -1e9;
        const all = new Float32Array(this.config.heads * length * length);
        for (let h = 0; h < this.config.heads; h++) all.set(h < imageHeads ? image : data, h * length * length);
        mask = tf.keep(tf.tensor3d(all, [this.config.heads, length, length]));
      }
      this.causalMasks.set(length, mask);
    }
    return mask;
  }

  /** Visual features [B·patches, features] to project to tokens: raw patches, or patches of the stem's map. */
  private patchFeatures(images: tf.Tensor4D): tf.Tensor2D {
    const { imageSize: s, patchSize: p, channels, stemChannels: c } = this.config;
    const batch = images.shape[0];
    if (images.shape[1] !== s || images.shape[2] !== s || images.shape[3] !== channels) {
      throw new Error(`images: expected [B, ${s}, ${s}, ${channels}], got [${images.shape.join(', ')}]`);
    }
    if (c === 0) return tf.reshape(patchify(images, p), [-1, p * p * channels]);
    const m = s / STEM_STRIDE;
    const first = gelu(dense(tf.reshape(patchify(images, STEM_STRIDE), [-1, STEM_STRIDE * STEM_STRIDE * channels]),
      this.w('stem.w1') as tf.Tensor as tf.Tensor2D, this.w('stem.b1') as tf.Tensor as tf.Tensor1D));
    const map = tf.reshape(first, [batch, m, m, c]) as tf.Tensor4D;
    const second = gelu(dense(tf.reshape(neighbourhoods3x3(map), [-1, 9 * c]),
      this.w('stem.w2') as tf.Tensor as tf.Tensor2D, this.w('stem.b2') as tf.Tensor as tf.Tensor1D));
    const features = tf.add(map, tf.reshape(second, [batch, m, m, c])) as tf.Tensor4D;
    const q = p / STEM_STRIDE;
    return tf.reshape(patchify(features, q), [-1, q * q * c]);
  }

  /** Patch features [B·patches, F] → the hidden layer's output [B·patches, patchHidden] (grid row and column appended). */
  private patchHiddenLayer(features: tf.Tensor2D, batch: number): tf.Tensor2D {
    const g = this.config.imageSize / this.config.patchSize;
    const coordinates = new Float32Array(g * g * 2 * g);
    for (let k = 0; k < g * g; k++) {
      coordinates[k * 2 * g + Math.floor(k / g)] = 1;
      coordinates[k * 2 * g + g + (k % g)] = 1;
    }
    const grid = tf.tile(tf.tensor2d(coordinates, [g * g, 2 * g]), [batch, 1]);
    return gelu(dense(tf.concat([features, grid], 1), this.w('patch.hidden.w') as tf.Tensor as tf.Tensor2D,
      this.w('patch.hidden.b') as tf.Tensor as tf.Tensor1D)) as tf.Tensor2D;
  }

  private visualPrefix(batch: number, images: tf.Tensor4D | null | undefined, hasImage?: boolean[]): tf.Tensor3D {
    const d = this.config.width;
    const n = visualTokenCount(this.config);
    const empty = tf.broadcastTo(tf.expandDims(this.w('no_image'), 0), [batch, n, d]) as tf.Tensor3D;
    if (!images) {
      if (hasImage?.some(Boolean)) throw new Error('batch: hasImage marks rows with images, but no images were given');
      return empty;
    }
    if (images.shape[0] !== batch) throw new Error(`batch: ${batch} rows but ${images.shape[0]} images`);
    if (hasImage && hasImage.length !== batch) throw new Error(`batch: hasImage has ${hasImage.length} entries for ${batch} rows`);
    const features = this.patchFeatures(images);
    const patches = this.config.patchHidden ? this.patchHiddenLayer(features, batch) : features;
    const visual = tf.reshape(dense(patches, this.w('patch.w') as tf.Tensor as tf.Tensor2D, this.w('patch.b') as tf.Tensor as tf.Tensor1D), [batch, n, d]) as tf.Tensor3D;
    if (!hasImage || hasImage.every(Boolean)) return visual;
    const keep = tf.tensor3d(hasImage.map((h) => (h ? 1 : 0)), [batch, 1, 1]);
    return tf.add(tf.mul(visual, keep), tf.mul(empty, tf.sub(1, keep)));
  }

  private layerNorm(x: tf.Tensor2D, prefix: string): tf.Tensor2D {
    return layerNorm(x, this.w(`${prefix}.g`) as tf.Tensor as tf.Tensor1D, this.w(`${prefix}.b`) as tf.Tensor as tf.Tensor1D);
  }

  /** x: [B·T, d] → [B·T, out] */
  private linear(x: tf.Tensor2D, weight: string, bias: string): tf.Tensor2D {
    return dense(x, this.w(weight) as tf.Tensor as tf.Tensor2D, this.w(bias) as tf.Tensor as tf.Tensor1D);
  }

  private attention(x: tf.Tensor2D, batch: number, length: number, l: number): tf.Tensor2D {
    const { width: d, heads } = this.config;
    const dh = d / heads;
    const split = (t: tf.Tensor2D) => tf.transpose(tf.reshape(t, [batch, length, heads, dh]), [0, 2, 1, 3]) as tf.Tensor4D;
    const q = split(this.linear(x, `h${l}.attn.wq`, `h${l}.attn.bq`));
    const k = split(this.linear(x, `h${l}.attn.wk`, `h${l}.attn.bk`));
    const v = split(this.linear(x, `h${l}.attn.wv`, `h${l}.attn.bv`));
    const weights = causalSoftmax(tf.matMul(q, k, false, true), 1 / Math.sqrt(dh), this.causalMask(length));
    const mixed = tf.matMul(weights, v);
    const merged = tf.reshape(tf.transpose(mixed, [0, 2, 1, 3]), [batch * length, d]) as tf.Tensor2D;
    return this.linear(merged, `h${l}.attn.wo`, `h${l}.attn.bo`);
  }

  /**
   * Final hidden states of the text positions, [B·L, d] (row b, position t at b·L + t).
   * `inputs` is [B·L] token ids.
   */
  private textHidden(inputs: Int32Array, batch: number, length: number,
    images: tf.Tensor4D | null | undefined, hasImage: boolean[] | undefined): tf.Tensor2D {
    const { width: d, vocabSize, layers } = this.config;
    const n = visualTokenCount(this.config);
    const total = n + length;
    if (total > this.config.context) throw new Error(`sequence of ${total} positions exceeds the model context ${this.config.context}`);
    // One-hot × embedding instead of gather: the wasm backend has no kernel for gather's gradient.
    // (Its OneHot kernel ignores a float32 dtype and writes integer bits, hence the cast.)
    const oneHot = tf.cast(tf.oneHot(tf.tensor1d(inputs, 'int32'), vocabSize), 'float32') as tf.Tensor2D;
    const text = tf.reshape(matMulFast(oneHot, this.w('tok_emb') as tf.Tensor as tf.Tensor2D), [batch, length, d]);
    const sequence = tf.concat([this.visualPrefix(batch, images, hasImage), text], 1);
    let h = tf.reshape(tf.add(sequence, tf.slice(this.w('pos_emb'), [0, 0], [total, d])), [batch * total, d]) as tf.Tensor2D;
    for (let l = 0; l < layers; l++) {
      h = tf.add(h, this.attention(this.layerNorm(h, `h${l}.ln1`) as tf.Tensor2D, batch, total, l));
      const hidden = gelu(this.linear(this.layerNorm(h, `h${l}.ln2`) as tf.Tensor2D, `h${l}.mlp.w1`, `h${l}.mlp.b1`));
      h = tf.add(h, this.linear(hidden as tf.Tensor2D, `h${l}.mlp.w2`, `h${l}.mlp.b2`));
    }
    const textPart = tf.slice(tf.reshape(h, [batch, total, d]), [0, n, 0], [batch, length, d]);
    return this.layerNorm(tf.reshape(textPart, [batch * length, d]), 'ln_f') as tf.Tensor2D;
  }

  /** Next-token logits [B·L, V] from hidden states (tied output projection). */
  private logitsOf(hidden: tf.Tensor2D): tf.Tensor2D {
    return matMulFast(hidden, tf.transpose(this.w('tok_emb') as tf.Tensor as tf.Tensor2D));
  }

  /**
   * Per-token log-probs of each response given (image or none, prompt), batched and
   * right-padded. Padding never changes a row's values: attention is causal and
   * padding comes after every real token. Differentiable; call inside tf.tidy or dispose the results.
   */
  responseLogProbs(batch: ResponseBatch): ResponseLogProbs {
    const layout = layoutBatch(batch.promptIds, batch.responseIds, textContext(this.config));
    return tf.tidy(() => {
      const { batchSize: B, length: L, responseWidth: R } = layout;
      const logits = this.logitsOf(this.textHidden(layout.inputs, B, L, batch.images, batch.hasImage));
      const targets = tf.cast(tf.oneHot(tf.tensor1d(layout.targets, 'int32'), this.config.vocabSize), 'float32');
      const tokenLogps = tf.reshape(tf.sum(tf.mul(tf.logSoftmax(logits), targets), -1), [B, L, 1]) as tf.Tensor3D;
      const select = tf.tensor3d(layout.select, [B, R, L]);
      const logps = tf.reshape(tf.matMul(select, tokenLogps), [B, R]) as tf.Tensor2D;
      return { logps, mask: tf.tensor2d(layout.mask, [B, R]) };
    });
  }

  /** Greedy (temperature 0) or sampled continuations of each prompt, as token ids without EOS. */
  async generate(options: GenerateOptions): Promise<number[][]> {
    const { promptIds, maxTokens, temperature = 0, topK, topP } = options;
    const rng = new Rng(options.seed ?? 0);
    const batch = promptIds.length;
    const limit = textContext(this.config);
    const outputs: number[][] = promptIds.map(() => []);
    const active = promptIds.map((p) => 1 + p.length < limit);
    for (let step = 0; step < maxTokens && active.some(Boolean); step++) {
      const rows = promptIds.map((p, b) => [BOS_ID, ...p, ...outputs[b]!]);
      const length = Math.max(...rows.map((r) => r.length));
      const inputs = new Int32Array(batch * length).fill(PAD_ID);
      rows.forEach((row, b) => inputs.set(row, b * length));
      const last = tf.tidy(() => {
        const hidden = this.textHidden(inputs, batch, length, options.images, options.hasImage);
        const at = tf.tensor1d(rows.map((row, b) => b * length + row.length - 1), 'int32');
        return this.logitsOf(tf.gather(hidden, at));
      });
      const logits = (await last.data()) as Float32Array;
      last.dispose();
      for (let b = 0; b < batch; b++) {
        if (!active[b]) continue;
        const row = logits.subarray(b * this.config.vocabSize, (b + 1) * this.config.vocabSize);
        const next = temperature > 0 ? sampleToken(row, { temperature, topK, topP }, rng) : argmax(row);
        if (next === EOS_ID) active[b] = false;
        else {
          outputs[b]!.push(next);
          if (rows[b]!.length + 1 >= limit) active[b] = false;
        }
      }
    }
    return outputs;
  }
}

let nextId = 0;

/** [B, S, S, C] → [B, patches, p·p·C]: non-overlapping p × p patches in row-major order, features (dy, dx, c). */
export function patchify(images: tf.Tensor4D, p: number): tf.Tensor3D {
  const [batch, s, , c] = images.shape;
  const g = s / p;
  const blocks = tf.transpose(tf.reshape(images, [batch * g, p, g, p * c]), [0, 2, 1, 3]);
  return tf.reshape(blocks, [batch, g * g, p * p * c]);
}

/**
 * [B, H, W, C] → [B, H, W, 9·C]: each position's 3×3 neighbourhood (zero-padded), features (dy, dx, c) —
 * a 3×3 "same" convolution is this times a [9·C, C'] matrix. Built from pad and slices because the
 * wasm backend has no kernel for the filter gradient of conv2d.
 */
export function neighbourhoods3x3(map: tf.Tensor4D): tf.Tensor4D {
  const [batch, h, w, c] = map.shape;
  const padded = tf.pad(map, [[0, 0], [1, 1], [1, 1], [0, 0]]);
  const shifted: tf.Tensor4D[] = [];
  for (let dy = 0; dy < 3; dy++) for (let dx = 0; dx < 3; dx++) shifted.push(tf.slice(padded, [0, dy, dx, 0], [batch, h, w, c]));
  return tf.concat(shifted, 3);
}

/*
 * The wasm backend multiplies untransposed 2-D matrices with XNNPACK (≈15 GFLOP/s here) but
 * falls back to a loop 10–30× slower whenever an operand is transposed — which is what the
 * built-in gradient of matMul asks for. These ops transpose explicitly (a cheap copy) so that
 * every product, forward and backward, takes the fast path; the bias gradient is a product too.
 */
export const matMulFast = tf.customGrad(((a: tf.Tensor2D, b: tf.Tensor2D, save: tf.GradSaveFunc) => {
  save([a, b]);
  return {
    value: tf.matMul(a, b),
    gradFunc: (dy: tf.Tensor2D, [sa, sb]: tf.Tensor2D[]) => [tf.matMul(dy, tf.transpose(sb!)), tf.matMul(tf.transpose(sa!), dy)],
  };
}) as never) as (a: tf.Tensor2D, b: tf.Tensor2D) => tf.Tensor2D;

/**
 * GELU, tanh approximation (GPT-2): ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³), with its derivative
 * written out — autodiff of the composite would also differentiate every constant it multiplies by,
 * each a reduction over the whole [tokens, 4·width] activation.
 */
export const gelu = tf.customGrad(((x: tf.Tensor, save: tf.GradSaveFunc) => {
  const c = Math.sqrt(2 / Math.PI);
  const x2 = tf.square(x);
  const t = tf.tanh(tf.mul(x, tf.add(tf.mul(x2, 0.044715 * c), c)));
  save([x, x2, t]);
  return {
    value: tf.mul(tf.mul(x, 0.5), tf.add(t, 1)),
    gradFunc: (dy: tf.Tensor, [sx, sx2, st]: tf.Tensor[]) => {
      // d/dx = ½(1 + t) + ½x(1 − t²)·c(1 + 3·0.044715x²)
      const sech2 = tf.sub(1, tf.square(st!));
      const du = tf.add(tf.mul(sx2!, 3 * 0.044715 * c), c);
      return [tf.mul(dy, tf.add(tf.mul(tf.add(st!, 1), 0.5), tf.mul(tf.mul(tf.mul(sx!, 0.5), sech2), du)))];
    },
  };
}) as never) as (x: tf.Tensor) => tf.Tensor;

/**
 * LayerNorm over the last axis of x [N, d] (ε = 1e-5), with its gradient written out:
 * dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂)), dx̂ = dy · g; the gain and bias gradients are
 * column sums, done as products with a row of ones (fast path, no transposes).
 */
export const layerNorm = tf.customGrad(((x: tf.Tensor2D, g: tf.Tensor1D, b: tf.Tensor1D, save: tf.GradSaveFunc) => {
  const centred = tf.sub(x, tf.mean(x, -1, true));
  const rstd = tf.rsqrt(tf.add(tf.mean(tf.square(centred), -1, true), 1e-5));
  const normalised = tf.mul(centred, rstd);
  save([normalised, rstd, g]);
  return {
    value: tf.add(tf.mul(normalised, g), b),
    gradFunc: (dy: tf.Tensor2D, [xhat, sr, sg]: tf.Tensor[]) => {
      const dxhat = tf.mul(dy, sg!);
      const dx = tf.mul(sr!, tf.sub(tf.sub(dxhat, tf.mean(dxhat, -1, true)), tf.mul(xhat!, tf.mean(tf.mul(dxhat, xhat!), -1, true))));
      const ones = tf.ones([1, dy.shape[0]]);
      const d = dy.shape[1];
      return [dx, tf.reshape(tf.matMul(ones, tf.mul(dy, xhat!)), [d]), tf.reshape(tf.matMul(ones, dy), [d])];
    },
  };
}) as never) as (x: tf.Tensor2D, g: tf.Tensor1D, b: tf.Tensor1D) => tf.Tensor2D;

/**
 * softmax(scores · scale + mask) over the last axis, differentiated with respect to the scores only:
 * d scores = scale · p · (dp − Σ dp·p). Autodiff would also reduce the gradient onto the constant
 * scale and the mask, two passes over the largest activation of the step.
 */
export function causalSoftmax(scores: tf.Tensor4D, scale: number, mask: tf.Tensor): tf.Tensor4D {
  const op = tf.customGrad(((raw: tf.Tensor4D, save: tf.GradSaveFunc) => {
    const p = tf.softmax(tf.add(tf.mul(raw, scale), mask));
    save([p]);
    return {
      value: p,
      gradFunc: (dp: tf.Tensor4D, [sp]: tf.Tensor[]) => [tf.mul(tf.mul(sp!, tf.sub(dp, tf.sum(tf.mul(dp, sp!), -1, true))), scale)],
    };
  }) as never) as (raw: tf.Tensor4D) => tf.Tensor4D;
  return op(scores);
}

/** x·W + b for x [N, in], W [in, out], b [out]. */
export const dense = tf.customGrad(((x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D, save: tf.GradSaveFunc) => {
  save([x, w]);
  return {
    value: tf.add(tf.matMul(x, w), b),
    gradFunc: (dy: tf.Tensor2D, [sx, sw]: tf.Tensor2D[]) => [
      tf.matMul(dy, tf.transpose(sw!)),
      tf.matMul(tf.transpose(sx!), dy),
      tf.reshape(tf.matMul(tf.ones([1, dy.shape[0]]), dy), [dy.shape[1]]),
    ],
  };
}) as never) as (x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D) => tf.Tensor2D;

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

/** Draws a token from softmax(logits / temperature), optionally restricted to the top k and to the nucleus of mass p. */
export function sampleToken(logits: Float32Array, options: { temperature: number; topK?: number; topP?: number }, rng: Rng): number {
  const { temperature, topK, topP = 1 } = options;
  // most likely first; ties by token id, so the order (and the draw) is reproducible
  let candidates = Array.from(logits.keys()).sort((a, b) => logits[b]! - logits[a]! || a - b);
  if (topK && topK < candidates.length) candidates = candidates.slice(0, topK);
  const max = logits[candidates[0]!]!;
  let weights = candidates.map((i) => Math.exp((logits[i]! - max) / temperature));
  if (topP < 1) {
    const total = weights.reduce((a, b) => a + b, 0);
    let kept = 0;
    for (let mass = 0; kept < weights.length && mass < topP * total; kept++) mass += weights[kept]!;
    candidates = candidates.slice(0, Math.max(1, kept));
    weights = weights.slice(0, candidates.length);
  }
  let r = rng.next() * weights.reduce((a, b) => a + b, 0);
  for (let k = 0; k < candidates.length; k++) {
    r -= weights[k]!;
    if (r < 0) return candidates[k]!;
  }
  return candidates[candidates.length - 1]!;
}
