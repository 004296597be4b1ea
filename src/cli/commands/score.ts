import { withStore, type Store } from '../../store/store.js';
import { DEFAULT_QUEUE_NAME, type QueueLocation } from '../../distributed/connection.js';
import type { ModelRef } from '../../distributed/protocol.js';
import type { QueueScoreOptions } from '../../distributed/coordinator.js';
import { ClipEncoder, ClipModelError, type ClipDevice } from '../../score/clip.js';
import { DEFAULT_COMMIT_SENTENCES, DEFAULT_SCORE_BATCH_SIZE, scoreSimilarity } from '../../score/stage.js';
import { scoreReference, type ReferenceSignal } from '../../score/perplexity.js';
import { DEFAULT_REF_BATCH_SIZE } from '../../model/logprobs.js';
import { loadModel, type LoadedModel } from '../../model/checkpoint.js';
import { DEFAULT_LM_BATCH_SIZE, LmModelError, loadCausalLm, scoreLm, type CausalLm } from '../../score/lm.js';
import { DEFAULT_VLM_BATCH_SIZE, DEFAULT_VLM_COMMIT_RESPONSES, VisionLanguageScorer, VLM_DEVICES, VLM_DTYPE_SUFFIX, VLM_FAMILIES, VlmModelError,
  scoreVlm, type VlmDevice, type VlmDtype, type VlmScoreSummary } from '../../score/vlm.js';
import { initBackend } from '../../model/backend.js';
import { Progress } from '../progress.js';
import { DB_OPTION, JSON_OPTION, numberOption, parse, printJson, UsageError, type Command } from '../command.js';
import { backendOption } from '../model-options.js';
import { maxJobBytes, positiveInteger, QUEUE_OPTIONS, QUEUE_USAGE, queueFromFlags } from '../queue-options.js';
import { clipIdentity } from '../../score/clip.js';
import { scoreThroughQueue } from '../../distributed/coordinator.js';
import { DEFAULT_AHEAD } from '../../distributed/clip.js';
import { DEFAULT_ATTEMPTS } from '../../distributed/queue.js';

const DEVICES: readonly ClipDevice[] = ['auto', 'cpu', 'cuda'];
const SIMILARITIES = ['clip', 'grounding'] as const;

export const command: Command = {
  usage: 'aspo score --db PATH [--clip MODEL] [--ref CHECKPOINT] [--lm MODEL] [--vlm MODEL] [--similarity clip|grounding] [--json]\n' +
    '           [--device auto|cpu|cuda|webgpu] [--dtype fp32|fp16|q8|q4|...] [--require-image]\n' +
    '           [--backend auto|wasm|cpu|tensorflow|tensorflow-gpu] [--batch-size N] [--commit-sentences N] [--commit-responses N]\n' +
    '           [--queue URL [--queue-name NAME] [--attempts N] [--ahead N] [--max-job-mb MB] [--images-dir DIR]]\n\n' +
    '  Scores the sentences of every pair (run `aspo segment --db` first) into `sentence_scores`; `sentence_weights`\n' +
    '  then gives the sentence-level (ASPO) weights.\n' +
    '  --clip MODEL: similarity = cosine of the image and the sentence under a CLIP-style dual encoder (pairs with an\n' +
    '  image). MODEL is a Hugging Face model id in transformers.js layout (e.g. Xenova/clip-vit-base-patch32; downloaded\n' +
    '  and cached where the network allows) or a local folder in that layout (config.json, preprocessor_config.json,\n' +
    '  tokenizer.json, tokenizer_config.json, onnx/vision_model.onnx, onnx/text_model.onnx). Identical (image,\n' +
    '  sentence) pairs are computed once (similarity_cache). --device auto uses CUDA when onnxruntime-node has it.\n' +
    '  --ref CHECKPOINT: perplexity of each sentence in context (and the sums of reference log-probs per sentence)\n' +
    '  under the toolkit\'s own model (a checkpoint folder of `aspo train`), for every pair; text-only pairs run\n' +
    '  without an image. Responses longer than the model\'s context are counted and skipped, never truncated.\n' +
    '  --lm MODEL: perplexity (and reference log-prob sums) of each sentence in context under a Hugging Face causal LM\n' +
    '  (a model id in transformers.js layout, downloaded where the network allows, or a local folder with config.json,\n' +
    '  tokenizer.json, tokenizer_config.json, onnx/model.onnx), text only: prompt + response as one string, no chat\n' +
    '  template. Responses longer than its context are counted and skipped. Writes the same columns as --ref: give one.\n' +
    `  --vlm MODEL: perplexity (and reference log-prob sums) of each sentence under a Hugging Face vision-language model\n` +
    `  (${VLM_FAMILIES.join(', ')}; a model id in transformers.js layout or a local folder, see docs/score.md), given the\n` +
    '  image and the prompt in the model\'s chat template, one teacher-forced pass per response; each image is encoded once.\n' +
    '  Text-only pairs run without an image (counted), or are skipped with --require-image. --dtype picks the weight\n' +
    `  variant (default fp32), --device also takes webgpu. Same columns as --ref and --lm: give one of the three.\n` +
    '  --similarity grounding (needs --ref): similarity = mean per-token log-prob gain of the sentence with its image\n' +
    '  over without, under the --ref model (pairs with an image). --similarity clip (the default) needs --clip.\n' +
    '  Incremental: sentences already scored with the same model are skipped.\n' +
    `  --batch-size: images and texts (CLIP, default ${DEFAULT_SCORE_BATCH_SIZE}) or responses (--ref, default ${DEFAULT_REF_BATCH_SIZE}; --lm, default ${DEFAULT_LM_BATCH_SIZE};\n` +
    `  --vlm, default ${DEFAULT_VLM_BATCH_SIZE}, also images per vision-encoder call) per model call.\n` +
    `  --commit-sentences (CLIP): sentences per transaction (default ${DEFAULT_COMMIT_SENTENCES}); a killed run redoes at most these.\n` +
    `  --commit-responses (--vlm): responses per transaction (default ${DEFAULT_VLM_COMMIT_RESPONSES}, whole pairs).\n` +
    '  With --ref, each batch is one transaction. --backend: the TensorFlow.js backend for --ref (default auto).\n' +
    '  --queue (with --clip): this process becomes the coordinator: it sends the work to `aspo worker` processes on any\n' +
    '  machines through BullMQ on Redis and writes their results into the store (the same rows as without --queue; see\n' +
    '  docs/distributed.md). A job is one model call (--batch-size texts or images); --attempts: tries per job before\n' +
    `  its images go to rejects (default ${DEFAULT_ATTEMPTS}); --ahead: transactions queued while one is written (default ${DEFAULT_AHEAD}).\n` +
    QUEUE_USAGE,
  async run(argv) {
    const { values } = parse(argv, {
      ...DB_OPTION,
      clip: { type: 'string' },
      ref: { type: 'string' },
      lm: { type: 'string' },
      vlm: { type: 'string' },
      dtype: { type: 'string', default: 'fp32' },
      'require-image': { type: 'boolean', default: false },
      'commit-responses': { type: 'string' },
      similarity: { type: 'string' },
      ...JSON_OPTION,
      device: { type: 'string', default: 'auto' },
      backend: { type: 'string', default: 'auto' },
      'batch-size': { type: 'string' },
      'commit-sentences': { type: 'string' },
      ...QUEUE_OPTIONS,
      attempts: { type: 'string' },
      ahead: { type: 'string' },
    });
    const similarity = values.similarity ?? (values.clip ? 'clip' : undefined);
    if (similarity !== undefined && !(SIMILARITIES as readonly string[]).includes(similarity)) {
      throw new UsageError(`--similarity must be one of ${SIMILARITIES.join(', ')}, got "${similarity}"`);
    }
    if (similarity === 'clip' && !values.clip) throw new UsageError('--similarity clip needs --clip MODEL');
    if (similarity === 'grounding' && !values.ref) throw new UsageError('--similarity grounding needs --ref CHECKPOINT');
    if (!values.clip && !values.ref && !values.lm && !values.vlm) {
      throw new UsageError('--clip MODEL is required (a Hugging Face model id or a local model folder) unless --ref CHECKPOINT, --lm MODEL or --vlm MODEL is given');
    }
    if ([values.ref, values.lm, values.vlm].filter(Boolean).length > 1) {
      throw new UsageError('--ref, --lm and --vlm all write the perplexity columns; pick one');
    }
    if (similarity === 'grounding' && values.clip) throw new UsageError('--clip and --similarity grounding both write the similarity; pick one');
    const device = values.device as ClipDevice;
    const devices: readonly string[] = values.vlm && !values.clip ? VLM_DEVICES : DEVICES;
    if (!devices.includes(device)) throw new UsageError(`--device must be one of ${devices.join(', ')}, got "${values.device}"`);
    const dtype = values.dtype as VlmDtype;
    if (!(dtype in VLM_DTYPE_SUFFIX)) throw new UsageError(`--dtype must be one of ${Object.keys(VLM_DTYPE_SUFFIX).join(', ')}, got "${values.dtype}"`);
    const backend = backendOption(values.backend);
    const batchSize = numberOption(values['batch-size'], 'batch-size',
      values.clip ? DEFAULT_SCORE_BATCH_SIZE : values.lm ? DEFAULT_LM_BATCH_SIZE : values.vlm ? DEFAULT_VLM_BATCH_SIZE : DEFAULT_REF_BATCH_SIZE);
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new UsageError('--batch-size must be a positive integer');
    const commitSentences = numberOption(values['commit-sentences'], 'commit-sentences', DEFAULT_COMMIT_SENTENCES);
    if (!Number.isInteger(commitSentences) || commitSentences < 1) throw new UsageError('--commit-sentences must be a positive integer');
    const commitResponses = numberOption(values['commit-responses'], 'commit-responses', DEFAULT_VLM_COMMIT_RESPONSES);
    if (!Number.isInteger(commitResponses) || commitResponses < 1) throw new UsageError('--commit-responses must be a positive integer');
    if (values.queue) {
      if (!values.clip || values.ref || values.lm || values.vlm) throw new UsageError('--queue runs the --clip scorer through workers; give --clip MODEL (and no --ref, --lm or --vlm)');
      const location = queueFromFlags(values);
      let model;
      try {
        model = await clipIdentity(values.clip);
      } catch (error) {
        if (error instanceof ClipModelError) throw new UsageError(error.message);
        throw error;
      }
      const options = {
        batchSize, commitSentences, ahead: positiveInteger(values.ahead, 'ahead', DEFAULT_AHEAD), attempts: positiveInteger(values.attempts, 'attempts', DEFAULT_ATTEMPTS), maxJobBytes: maxJobBytes(values['max-job-mb']),
        imagesDir: values['images-dir'],
      };
      const clip = await withStore(values.db, (store) => coordinate(store, location, model, options));
      if (values.json) printJson({ clip });
      return 0;
    }

    let ref: LoadedModel | undefined;
    if (values.ref) {
      await initBackend(backend);
      try {
        ref = await loadModel(values.ref);
      } catch (error) {
        throw new UsageError(`--ref: ${(error as Error).message}`);
      }
    }
    let lm: CausalLm | undefined;
    if (values.lm) {
      try {
        lm = await loadCausalLm(values.lm);
      } catch (error) {
        if (error instanceof LmModelError) throw new UsageError(error.message);
        throw error;
      }
    }
    let vlm: VisionLanguageScorer | undefined;
    if (values.vlm) {
      try {
        vlm = await VisionLanguageScorer.load(values.vlm, { device: device as VlmDevice, dtype });
      } catch (error) {
        if (error instanceof VlmModelError) throw new UsageError(error.message);
        throw error;
      }
    }
    let encoder: ClipEncoder | undefined;
    if (values.clip) {
      try {
        encoder = await ClipEncoder.load(values.clip, { device });
      } catch (error) {
        if (error instanceof ClipModelError) throw new UsageError(error.message);
        throw error;
      }
    }
    // One summary per scorer that ran, keyed by what it computed.
    const summary: Record<string, object> = {};
    try {
      await withStore(values.db, async (store) => {
        if (encoder) summary.clip = await scoreClip(store, encoder, batchSize, commitSentences);
        if (lm) summary.perplexity = await scoreWithLm(store, lm, batchSize);
        if (vlm) summary.perplexity = await scoreWithVlm(store, vlm, batchSize, commitResponses, values['require-image']!);
        if (ref) {
          summary.perplexity = await scoreWithReference(store, ref, 'perplexity', batchSize);
          if (similarity === 'grounding') summary.grounding = await scoreWithReference(store, ref, 'grounding', batchSize);
        }
      });
    } finally {
      await encoder?.dispose();
      ref?.model.dispose();
      await lm?.dispose();
      await vlm?.dispose();
    }
    if (values.json) printJson(summary);
    return 0;
  },
};

async function scoreClip(store: Store, encoder: ClipEncoder, batchSize: number, commitSentences: number): Promise<object> {
  const progress = new Progress({ label: 'score', unit: 'sentences' });
  const s = await scoreSimilarity(store, encoder, {
    batchSize,
    commitSentences,
    onStart: ({ pending }) => progress.setTotal(pending),
    onBatch: ({ sentences }) => progress.at(sentences),
  });
  const rate = s.sentences / Math.max(s.seconds, 1e-9);
  progress.done(`${s.sentences} sentences scored with ${s.model} on ${s.device} in ${s.seconds.toFixed(1)} s ` +
    `(${rate.toFixed(1)} sentences/s, ${s.modelSeconds.toFixed(1)} s in the model): ${s.cacheHits} from the cache, ` +
    `${s.images} images and ${s.texts} distinct texts encoded, ${s.truncated} texts cut to the text encoder's ` +
    `${encoder.contextLength}-token context, ${s.imageErrors} with an undecodable image; ${s.alreadyDone} already ` +
    `scored; ${s.textOnlySentences} sentences of ${s.textOnlyPairs} text-only pairs skipped` +
    (s.unsegmentedPairs ? `; ${s.unsegmentedPairs} pairs not segmented yet (run \`aspo segment --db\`)` : ''));
  return s;
}

async function coordinate(store: Store, location: QueueLocation, model: ModelRef, options: QueueScoreOptions): Promise<object> {
  const progress = new Progress({ label: 'score', unit: 'sentences' });
  process.stderr.write(`score: coordinating ${model.id} through ${location.redacted} (queue ${location.name}); start workers with ` +
    `\`aspo worker --clip MODEL --queue URL${location.name === DEFAULT_QUEUE_NAME ? '' : ` --queue-name ${location.name}`}\`\n`);
  let jobs = 0;
  const s = await scoreThroughQueue(store, location, model, {
    ...options,
    log: (line) => process.stderr.write(`score: ${line}\n`),
    onStart: ({ pending }) => progress.setTotal(pending),
    onBatch: ({ sentences, total }) => {
      progress.at(sentences);
      // A line per transaction in logs (the bar is for terminals).
      if (!process.stderr.isTTY) process.stderr.write(`score: ${sentences} of ${total} sentences stored (${jobs} jobs done)\n`);
    },
    onJob: (job) => {
      jobs++;
      progress.tick(0, `(${jobs} jobs done)`);
      if (job.failed) process.stderr.write(`score: ${job.failed}\n`);
    },
  });
  const rate = s.sentences / Math.max(s.seconds, 1e-9);
  progress.done(`${s.sentences} sentences scored with ${s.model} through ${location.redacted} in ${s.seconds.toFixed(1)} s ` +
    `(${rate.toFixed(1)} sentences/s; workers spent ${s.modelSeconds.toFixed(1)} s in the model): ${s.jobs} jobs, ${s.cacheHits} ` +
    `from the cache, ${s.imageErrors} with an undecodable image, ${s.rejectedImages} images rejected after ${options.attempts} ` +
    `attempts (see the rejects table), ${s.lostJobs} jobs added again after vanishing from Redis; ${s.alreadyDone} already scored; ` +
    `${s.textOnlySentences} sentences of ${s.textOnlyPairs} text-only pairs skipped` +
    (s.unsegmentedPairs ? `; ${s.unsegmentedPairs} pairs not segmented yet (run \`aspo segment --db\`)` : ''));
  return s;
}

async function scoreWithReference(store: Store, ref: LoadedModel, signal: ReferenceSignal, batchSize: number): Promise<object> {
  const progress = new Progress({ label: signal === 'grounding' ? 'grounding' : 'perplexity', unit: 'responses' });
  const s = await scoreReference(store, ref, signal, {
    batchSize,
    onProgress: progress.report,
  });
  const rate = s.sentences / Math.max(s.seconds, 1e-9);
  progress.done(`${s.sentences} sentences of ${s.responses} responses scored with ${s.model} in ` +
    `${s.seconds.toFixed(1)} s (${rate.toFixed(1)} sentences/s, ${s.modelSeconds.toFixed(1)} s in the model); skipped: ` +
    `${s.tooLong} longer than the model's context, ${s.unencodable} unencodable, ${s.imageErrors} with an undecodable ` +
    `image; ${s.emptySentences} sentences without a token of their own; ${s.textOnlyResponses} text-only responses ` +
    (signal === 'grounding' ? 'not scored (no image)' : 'run without an image'));
  return s;
}

async function scoreWithLm(store: Store, lm: CausalLm, batchSize: number): Promise<object> {
  const progress = new Progress({ label: 'perplexity', unit: 'responses' });
  const s = await scoreLm(store, lm, {
    batchSize,
    onProgress: progress.report,
  });
  const rate = s.sentences / Math.max(s.seconds, 1e-9);
  progress.done(`${s.sentences} sentences of ${s.responses} responses scored with ${s.model} in ${s.seconds.toFixed(1)} s ` +
    `(${rate.toFixed(1)} sentences/s, ${s.modelSeconds.toFixed(1)} s in the model); skipped: ${s.tooLong} longer than ` +
    `the model's context (${lm.maxLength} tokens); ${s.emptySentences} sentences without a token of their own`);
  return s;
}

async function scoreWithVlm(store: Store, vlm: VisionLanguageScorer, batchSize: number, commitResponses: number,
  requireImage: boolean): Promise<VlmScoreSummary> {
  const progress = new Progress({ label: 'perplexity', unit: 'responses' });
  const s = await scoreVlm(store, vlm, {
    batchSize,
    commitResponses,
    requireImage,
    onStart: ({ pendingResponses }) => progress.setTotal(pendingResponses),
    onBatch: ({ responses }) => progress.at(responses),
  });
  const rate = s.sentences / Math.max(s.seconds, 1e-9);
  progress.done(`${s.sentences} sentences of ${s.responses} responses scored with ${s.model} (${vlm.family}) on ${s.device} in ` +
    `${s.seconds.toFixed(1)} s (${rate.toFixed(1)} sentences/s; ${s.visionSeconds.toFixed(1)} s in the vision encoder for ` +
    `${s.images} images in ${s.visionCalls} calls, ${s.decoderSeconds.toFixed(1)} s in ${s.decoderCalls} forward passes); ` +
    `${s.textOnlyResponses} text-only responses ${requireImage ? 'skipped (--require-image)' : 'scored without an image'}; ` +
    `skipped: ${s.tooLong} longer than the model's context (${vlm.maxLength} tokens), ${s.imageErrors} with an undecodable image; ` +
    `${s.emptySentences} sentences without a token of their own`);
  return s;
}
