/**
 * The columns of a shard file and of the images file, declared once for the writer and the reader of both formats
 * (Arrow IPC and Parquet). Column names are snake_case, as in the store.
 */
import type { ShardSplit } from './types.js';

export const SHARD_FORMATS = ['arrow', 'parquet'] as const;
export type ShardFormat = (typeof SHARD_FORMATS)[number];

/** Element type of a column: a scalar, or a list of it (`list`); Parquet gets the DuckDB type named here. */
export type ColumnType = 'utf8' | 'bool' | 'int32' | 'float32' | 'float64' | 'binary';

export interface ColumnSpec {
  name: string;
  type: ColumnType;
  list: boolean;
  /** The column (list) may be null; list elements may be null only where `nullItems`. */
  nullable: boolean;
  nullItems?: boolean;
}

export const PAIR_COLUMNS: readonly ColumnSpec[] = [
  { name: 'pair_id', type: 'utf8', list: false, nullable: false },
  { name: 'image_id', type: 'utf8', list: false, nullable: true },
  { name: 'prompt_ids', type: 'int32', list: true, nullable: false },
  { name: 'chosen_ids', type: 'int32', list: true, nullable: false },
  { name: 'rejected_ids', type: 'int32', list: true, nullable: false },
  { name: 'chosen_sentence_ids', type: 'int32', list: true, nullable: false },
  { name: 'rejected_sentence_ids', type: 'int32', list: true, nullable: false },
  { name: 'chosen_similarity', type: 'float64', list: true, nullable: false, nullItems: true },
  { name: 'chosen_ref_logps', type: 'float32', list: true, nullable: true },
  { name: 'rejected_ref_logps', type: 'float32', list: true, nullable: true },
  { name: 'truncated', type: 'bool', list: false, nullable: false },
];

export const IMAGE_COLUMNS: readonly ColumnSpec[] = [
  { name: 'image_id', type: 'utf8', list: false, nullable: false },
  { name: 'bytes', type: 'binary', list: false, nullable: false },
];

/** `train-00000.arrow`, `eval-00003.parquet`, ... */
export function shardFileName(split: ShardSplit, index: number, format: ShardFormat): string {
  return `${split}-${String(index).padStart(5, '0')}.${format}`;
}

export function imagesFileName(format: ShardFormat): string {
  return `images.${format}`;
}

/** Files `aspo shard` owns inside its output folder (others are never touched). */
export const SHARD_SET_FILE = /^(?:(?:train|eval)-\d{5}|images)\.(?:arrow|parquet)$/;

export function formatOf(file: string): ShardFormat {
  if (file.endsWith('.arrow')) return 'arrow';
  if (file.endsWith('.parquet')) return 'parquet';
  throw new Error(`shard file ${file}: expected a .arrow or .parquet file`);
}
