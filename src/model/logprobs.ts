/** The model's per-token log-probs as plain arrays: the one model pass that scoring, sharding and rewards share. */
import { tf } from './backend.js';
import { stackImages } from './images.js';
import type { VisionLanguageModel } from './model.js';

/** Responses per model call when scoring or sharding with the toolkit's model (memory grows with it). */
export const DEFAULT_REF_BATCH_SIZE = 16;

/** One response to run: its image's model input (null: none), prompt ids and response ids. */
export interface TokenRow {
  promptIds: number[];
  responseIds: number[];
  image: Float32Array | null;
}

/**
 * Per row, log p of each response token and then of EOS (length `responseIds.length + 1`), from one batched model
 * call without gradients. Rows longer than the model's text context are the caller's to skip (the model throws).
 */
export function tokenLogProbs(model: VisionLanguageModel, rows: readonly TokenRow[]): Float32Array[] {
  if (rows.length === 0) return [];
  const images = rows.some((r) => r.image) ? stackImages(rows.map((r) => r.image), model.config.imageSize) : null;
  try {
    const { logps, mask } = model.responseLogProbs({
      images, hasImage: rows.map((r) => r.image !== null),
      promptIds: rows.map((r) => r.promptIds), responseIds: rows.map((r) => r.responseIds),
    });
    const values = logps.dataSync() as Float32Array;
    const width = logps.shape[1];
    tf.dispose([logps, mask]);
    return rows.map((r, i) => values.slice(i * width, i * width + r.responseIds.length + 1));
  } finally {
    images?.dispose();
  }
}
