/**
 * The shard format's types: what `aspo shard` writes and what the preference trainer and `aspo rewards` read.
 * Declared once here; src/shard/write.ts and src/shard/read.ts implement them.
 */

export const SHARD_SPLITS = ['train', 'eval'] as const;
export type ShardSplit = (typeof SHARD_SPLITS)[number];

/** One preference pair, ready for a training step (token ids for the manifest's tokenizer). */
export interface ShardPair {
  pairId: string;
  /** `images.image_id` (sha256 of the image bytes); null for a text-only pair. */
  imageId: string | null;
  /** Prompt token ids, as `encodePromptResponse` splits `prompt + response` (no BOS). */
  promptIds: number[];
  /** Response token ids (no EOS; the model appends it). */
  chosenIds: number[];
  rejectedIds: number[];
  /** Per response token, its sentence `idx` in the `sentences` table, −1 outside any sentence. */
  chosenSentenceIds: number[];
  rejectedSentenceIds: number[];
  /** S_i per chosen sentence (indexed by sentence idx); null where not scored. Empty when the store has no similarity. */
  chosenSimilarity: Array<number | null>;
  /**
   * Reference log-probs per response token, EOS included (length = ids + 1), when the shard set was written with a
   * reference model; null otherwise (the trainer then runs the reference model).
   */
  chosenRefLogps: number[] | null;
  rejectedRefLogps: number[] | null;
  /** The response tail was cut to fit `maxLength` (only with `overLength: "truncate"`). */
  truncated: boolean;
}

export interface ShardFile {
  /** File name relative to the shard set folder. */
  file: string;
  split: ShardSplit;
  pairs: number;
  sha256: string;
}

export interface ShardManifest {
  format: 'aspo-shards/1';
  /** Checkpoint folder id whose tokenizer produced the ids (`<folder>@<digest>`, as `ppl_model`). */
  tokenizer: string;
  /** Reference model id whose log-probs the shards hold, or null. */
  referenceModel: string | null;
  /** Model that produced `chosenSimilarity`, or null. */
  similarityModel: string | null;
  options: Record<string, unknown>;
  counts: { train: number; eval: number; dropped: number; truncated: number; images: number };
  /** sha256 over the inputs (pairs, sentences, scores, tokenizer, options): an unchanged fingerprint makes a re-run a no-op. */
  fingerprint: string;
  shards: ShardFile[];
  /** File holding the image bytes (image_id → encoded bytes, never decoded pixels). */
  images: ShardFile | null;
  createdAt: string;
}

/** A shard set opened for reading. */
export interface ShardSet {
  dir: string;
  manifest: ShardManifest;
  /** Pairs of a split, shard by shard, in the order written (already shuffled by the seed). */
  pairs(split: ShardSplit): AsyncIterable<ShardPair>;
  /** Encoded bytes (PNG/JPEG/...) of every image the shards reference. */
  images(): Promise<Map<string, Uint8Array>>;
  /** Checks every file's sha256 against the manifest; throws naming the first file that differs. */
  verify(): Promise<void>;
}
