import { withStore } from '../../store/store.js';
import { ClipEncoder, ClipModelError, type ClipDevice } from '../../score/clip.js';
import { DEFAULT_COMMIT_SENTENCES, DEFAULT_SCORE_BATCH_SIZE, scoreSimilarity } from '../../score/stage.js';
import { Progress } from '../progress.js';
import { DB_OPTION, numberOption, parse, UsageError, type Command } from '../command.js';

const DEVICES: readonly ClipDevice[] = ['auto', 'cpu', 'cuda'];

export const command: Command = {
  usage: 'aspo score --db PATH --clip MODEL [--device auto|cpu|cuda] [--batch-size N] [--commit-sentences N]\n\n' +
    '  Scores every sentence of every pair with an image (run `aspo segment --db` first) by the cosine similarity of\n' +
    '  the image and the sentence under a CLIP-style dual encoder, into `sentence_scores`; `sentence_weights` then\n' +
    '  gives the sentence-level (ASPO) weights. MODEL is a Hugging Face model id in transformers.js layout (e.g.\n' +
    '  Xenova/clip-vit-base-patch32; downloaded and cached where the network allows) or a local folder in that layout\n' +
    '  (config.json, preprocessor_config.json, tokenizer.json, tokenizer_config.json, onnx/vision_model.onnx,\n' +
    '  onnx/text_model.onnx). Incremental: sentences already scored with MODEL are skipped, and identical (image,\n' +
    `  sentence) pairs are computed once (similarity_cache). --batch-size: images and texts per model call (default ${DEFAULT_SCORE_BATCH_SIZE}).\n` +
    `  --commit-sentences: sentences per transaction (default ${DEFAULT_COMMIT_SENTENCES}); a killed run redoes at most these.\n` +
    '  --device auto uses CUDA when onnxruntime-node has it, else the CPU.',
  async run(argv) {
    const { values } = parse(argv, {
      ...DB_OPTION,
      clip: { type: 'string' },
      device: { type: 'string', default: 'auto' },
      'batch-size': { type: 'string' },
      'commit-sentences': { type: 'string' },
    });
    if (!values.clip) throw new UsageError('--clip MODEL is required (a Hugging Face model id or a local model folder)');
    const device = values.device as ClipDevice;
    if (!DEVICES.includes(device)) throw new UsageError(`--device must be one of ${DEVICES.join(', ')}, got "${values.device}"`);
    const batchSize = numberOption(values['batch-size'], 'batch-size', DEFAULT_SCORE_BATCH_SIZE);
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new UsageError('--batch-size must be a positive integer');
    const commitSentences = numberOption(values['commit-sentences'], 'commit-sentences', DEFAULT_COMMIT_SENTENCES);
    if (!Number.isInteger(commitSentences) || commitSentences < 1) throw new UsageError('--commit-sentences must be a positive integer');

    let encoder: ClipEncoder;
    try {
      encoder = await ClipEncoder.load(values.clip, { device });
    } catch (error) {
      if (error instanceof ClipModelError) throw new UsageError(error.message);
      throw error;
    }
    try {
      await withStore(values.db, async (store) => {
        let progress = new Progress({ label: 'score', unit: 'sentences' });
        let reported = 0;
        const s = await scoreSimilarity(store, encoder, {
          batchSize,
          commitSentences,
          onStart: ({ pending }) => { progress = new Progress({ label: 'score', unit: 'sentences', total: pending }); },
          onBatch: ({ sentences }) => {
            progress.tick(sentences - reported);
            reported = sentences;
          },
        });
        const rate = s.sentences / Math.max(s.seconds, 1e-9);
        progress.done(`${s.sentences} sentences scored with ${s.model} on ${s.device} in ${s.seconds.toFixed(1)} s ` +
          `(${rate.toFixed(1)} sentences/s, ${s.modelSeconds.toFixed(1)} s in the model): ${s.cacheHits} from the cache, ` +
          `${s.images} images and ${s.texts} distinct texts encoded, ${s.truncated} texts cut to the text encoder's ` +
          `${encoder.contextLength}-token context, ${s.imageErrors} with an undecodable image; ${s.alreadyDone} already ` +
          `scored; ${s.textOnlySentences} sentences of ${s.textOnlyPairs} text-only pairs skipped` +
          (s.unsegmentedPairs ? `; ${s.unsegmentedPairs} pairs not segmented yet (run \`aspo segment --db\`)` : ''));
      });
    } finally {
      await encoder.dispose();
    }
    return 0;
  },
};
