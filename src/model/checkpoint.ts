/**
 * Checkpoint folders: model config, tokenizer, weights, and optionally the optimizer
 * state and trainer state, so that a run resumes exactly.
 *
 *   config.json      model configuration
 *   tokenizer.json   vocabulary
 *   weights.bin      float32 little-endian, tensors back to back in weights.json order
 *   weights.json     [{name, shape, offset}] (offset in values)
 *   optimizer.bin    m then v for each weight, same order (only when saved with an optimizer)
 *   trainer.json     optimizer step and the trainer's own state (only with an optimizer)
 *   manifest.json    format, sha256 of every other file — written last
 *
 * A save writes everything into a temporary sibling folder, fsyncs it, and renames it
 * into place, so a crash never leaves a folder that loads: a folder without a manifest,
 * or whose files do not match their sha256, is refused.
 */
import { randomBytes } from 'node:crypto';
import { sha256Hex } from '../util/hash.js';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Tokenizer, type TokenizerJSON } from './tokenizer.js';
import { parameterShapes, validateModelConfig, VisionLanguageModel, type ModelConfig } from './model.js';

export const CHECKPOINT_FORMAT = 'aspo-vlm-checkpoint/1';

/** AdamW's state as a checkpoint stores it (optimizer.bin and trainer.json's optimizer_step). */
export interface OptimizerState {
  step: number;
  /** first and second moments by weight name */
  m: Record<string, Float32Array>;
  v: Record<string, Float32Array>;
}

export interface CheckpointContents {
  config: ModelConfig;
  tokenizer: Tokenizer;
  weights: Record<string, Float32Array>;
  optimizer?: OptimizerState;
  /** Whatever the trainer needs to continue (step, seed, options); JSON. */
  trainer?: Record<string, unknown>;
}

interface Manifest {
  format: string;
  files: Record<string, string>;
  created_at: string;
}

interface WeightEntry { name: string; shape: number[]; offset: number }


function packTensors(config: ModelConfig, tensors: Record<string, Float32Array>, what: string): { index: WeightEntry[]; bytes: Buffer } {
  const index: WeightEntry[] = [];
  let offset = 0;
  for (const [name, shape] of parameterShapes(config)) {
    const size = shape.reduce((a, b) => a * b, 1);
    if (tensors[name]?.length !== size) throw new Error(`${what}: ${name} must have ${size} values`);
    index.push({ name, shape, offset });
    offset += size;
  }
  const packed = new Float32Array(offset);
  for (const entry of index) packed.set(tensors[entry.name]!, entry.offset);
  return { index, bytes: littleEndianBytes(packed) };
}

function littleEndianBytes(values: Float32Array): Buffer {
  const bytes = Buffer.alloc(values.length * 4);
  for (let i = 0; i < values.length; i++) bytes.writeFloatLE(values[i]!, i * 4);
  return bytes;
}

function fromLittleEndian(bytes: Buffer): Float32Array {
  if (bytes.length % 4 !== 0) throw new Error('tensor file length is not a multiple of 4');
  const values = new Float32Array(bytes.length / 4);
  for (let i = 0; i < values.length; i++) values[i] = bytes.readFloatLE(i * 4);
  return values;
}

async function writeSynced(file: string, data: Buffer | string): Promise<void> {
  const handle = await fs.open(file, 'w');
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function syncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } catch {
    // Some file systems refuse fsync on directories; the rename below is still atomic.
  } finally {
    await handle.close();
  }
}

/** Writes a checkpoint to `dir`, replacing any previous one there atomically. */
export async function saveCheckpoint(dir: string, contents: CheckpointContents): Promise<void> {
  const target = path.resolve(dir);
  const parent = path.dirname(target);
  await fs.mkdir(parent, { recursive: true });
  const suffix = `${process.pid}-${randomBytes(4).toString('hex')}`;
  const temp = path.join(parent, `.${path.basename(target)}.tmp-${suffix}`);
  await fs.mkdir(temp);
  try {
    const files: Record<string, Buffer> = {};
    const { index, bytes } = packTensors(contents.config, contents.weights, 'weights');
    files['config.json'] = Buffer.from(JSON.stringify(contents.config, null, 2));
    files['tokenizer.json'] = Buffer.from(JSON.stringify(contents.tokenizer.toJSON()));
    files['weights.json'] = Buffer.from(JSON.stringify(index));
    files['weights.bin'] = bytes;
    if (contents.optimizer) {
      const m = packTensors(contents.config, contents.optimizer.m, 'optimizer m');
      const v = packTensors(contents.config, contents.optimizer.v, 'optimizer v');
      files['optimizer.bin'] = Buffer.concat([m.bytes, v.bytes]);
      files['trainer.json'] = Buffer.from(JSON.stringify({ optimizer_step: contents.optimizer.step, ...contents.trainer }, null, 2));
    } else if (contents.trainer) {
      files['trainer.json'] = Buffer.from(JSON.stringify(contents.trainer, null, 2));
    }
    const manifest: Manifest = { format: CHECKPOINT_FORMAT, files: {}, created_at: new Date().toISOString() };
    for (const [name, data] of Object.entries(files)) {
      await writeSynced(path.join(temp, name), data);
      manifest.files[name] = sha256Hex(data);
    }
    await writeSynced(path.join(temp, 'manifest.json'), JSON.stringify(manifest, null, 2));
    await syncDir(temp);
    const old = path.join(parent, `.${path.basename(target)}.old-${suffix}`);
    const hadOld = await fs.rename(target, old).then(() => true, (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return false;
      throw error;
    });
    await fs.rename(temp, target);
    await syncDir(parent);
    if (hadOld) await fs.rm(old, { recursive: true, force: true });
  } catch (error) {
    await fs.rm(temp, { recursive: true, force: true });
    throw error;
  }
}

/** True when `dir` holds a complete checkpoint (manifest present); contents are verified on load. */
export async function hasCheckpoint(dir: string): Promise<boolean> {
  return fs.access(path.join(dir, 'manifest.json')).then(() => true, () => false);
}

/** Reads a checkpoint, verifying every file against the manifest. */
export async function loadCheckpoint(dir: string): Promise<CheckpointContents> {
  const fail = (why: string): never => { throw new Error(`${dir} is not a valid checkpoint: ${why}`); };
  const manifestText = await fs.readFile(path.join(dir, 'manifest.json'), 'utf8')
    .catch(() => fail('manifest.json is missing (an interrupted save, or not a checkpoint folder)'));
  let manifest: Manifest;
  try {
    manifest = JSON.parse(manifestText) as Manifest;
  } catch {
    return fail('manifest.json is not JSON');
  }
  if (manifest.format !== CHECKPOINT_FORMAT) fail(`format is ${JSON.stringify(manifest.format)}, expected ${CHECKPOINT_FORMAT}`);
  const files: Record<string, Buffer> = {};
  for (const [name, digest] of Object.entries(manifest.files ?? {})) {
    const data = await fs.readFile(path.join(dir, name)).catch(() => fail(`${name} is missing`));
    if (sha256Hex(data) !== digest) fail(`${name} does not match its sha256 in manifest.json`);
    files[name] = data;
  }
  for (const required of ['config.json', 'tokenizer.json', 'weights.json', 'weights.bin']) {
    if (!files[required]) fail(`manifest.json does not list ${required}`);
  }
  const config = validateModelConfig(JSON.parse(files['config.json']!.toString('utf8')) as ModelConfig);
  const tokenizer = Tokenizer.fromJSON(JSON.parse(files['tokenizer.json']!.toString('utf8')) as TokenizerJSON);
  if (tokenizer.vocabSize !== config.vocabSize) fail(`tokenizer has ${tokenizer.vocabSize} tokens, config says ${config.vocabSize}`);
  const index = JSON.parse(files['weights.json']!.toString('utf8')) as WeightEntry[];
  const unpack = (values: Float32Array, base: number): Record<string, Float32Array> => {
    const out: Record<string, Float32Array> = {};
    for (const { name, shape, offset } of index) {
      const size = shape.reduce((a, b) => a * b, 1);
      if (base + offset + size > values.length) fail(`tensor ${name} runs past the end of its file`);
      out[name] = values.slice(base + offset, base + offset + size);
    }
    return out;
  };
  const weightValues = fromLittleEndian(files['weights.bin']!);
  const contents: CheckpointContents = { config, tokenizer, weights: unpack(weightValues, 0) };
  // A diverged run can save NaN or infinite weights; scoring with them would give NaN for every sentence.
  for (const [name, values] of Object.entries(contents.weights)) {
    for (let i = 0; i < values.length; i++) {
      if (!Number.isFinite(values[i]!)) {
        fail(`weight ${name}[${i}] is ${values[i]} (weights.bin): the model would compute NaN; use a checkpoint saved before training diverged`);
      }
    }
  }
  if (files['trainer.json']) {
    const trainer = JSON.parse(files['trainer.json'].toString('utf8')) as Record<string, unknown>;
    if (files['optimizer.bin']) {
      const { optimizer_step: step, ...rest } = trainer;
      const moments = fromLittleEndian(files['optimizer.bin']);
      contents.optimizer = { step: Number(step), m: unpack(moments, 0), v: unpack(moments, weightValues.length) };
      contents.trainer = rest;
    } else {
      contents.trainer = trainer;
    }
  }
  return contents;
}

/** A model ready to run: the reference, a policy, or any checkpoint, with the id its outputs are stored under. */
export interface LoadedModel {
  model: VisionLanguageModel;
  tokenizer: Tokenizer;
  /** Folder name @ first 16 hex digits of the sha256 over the config, tokenizer and weights digests of the manifest. */
  modelId: string;
}

/**
 * The id of a checkpoint's model in the store (`ppl_model`, `policy_model`, …): it changes whenever the config,
 * tokenizer or weights do, and not when only the optimizer or trainer state does.
 */
export function checkpointModelId(dir: string, manifestFiles: Record<string, string>): string {
  const digest = sha256Hex(['config.json', 'tokenizer.json', 'weights.json', 'weights.bin']
    .map((f) => `${f}:${manifestFiles[f]}`).join('\n'));
  return `${path.basename(path.resolve(dir))}@${digest.slice(0, 16)}`;
}

/** Loads the model and tokenizer of a checkpoint folder (verified against its manifest) with its model id. */
export async function loadModel(dir: string): Promise<LoadedModel> {
  const contents = await loadCheckpoint(dir);
  const manifest = JSON.parse(await fs.readFile(path.join(dir, 'manifest.json'), 'utf8')) as Manifest;
  return {
    model: VisionLanguageModel.fromValues(contents.config, contents.weights),
    tokenizer: contents.tokenizer,
    modelId: checkpointModelId(dir, manifest.files),
  };
}

/**
 * The trainer state a checkpoint was saved with (trainer.json without the optimizer step), or undefined when it holds
 * none (saved without an optimizer, e.g. an exported model). Read without loading the weights.
 */
export async function readTrainerState(dir: string): Promise<Record<string, unknown> | undefined> {
  const file = path.join(dir, 'trainer.json');
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch {
    return undefined;
  }
  try {
    const { optimizer_step: _step, ...state } = JSON.parse(text) as Record<string, unknown>;
    return state;
  } catch {
    throw new Error(`${file} is not JSON`);
  }
}
