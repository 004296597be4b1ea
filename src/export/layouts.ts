/**
 * The SQL and metadata of the two trainer layouts: TRL preference rows (with ASPO sentence columns) and the ASPO
 * authors' JSON. See docs/export.md for the fields.
 */
import { quoteString } from './output.js';

/** The file name an image is exported under: its id and an extension from its format. */
export function imageFileName(alias: string): string {
  return `${alias}.image_id || '.' || CASE ${alias}.format WHEN 'jpeg' THEN 'jpg' ELSE coalesce(${alias}.format, 'bin') END`;
}

/** A half-open range of pair_ids, [from, to); an absent end is open. */
export interface ShardRange {
  from?: string;
  to?: string;
}

function inRange(range: ShardRange, column: string): string {
  const parts = [range.from !== undefined ? `${column} >= ${quoteString(range.from)}` : 'true'];
  if (range.to !== undefined) parts.push(`${column} < ${quoteString(range.to)}`);
  return parts.join(' AND ');
}

type Feature = Record<string, unknown> | Feature[];
const value = (dtype: string): Feature => ({ dtype, _type: 'Value' });
const span: Feature = [{ char_start: value('int32'), char_end: value('int32') }];

/**
 * The Hugging Face `datasets` features of a TRL shard. A one-element list is a list feature (read as Sequence by
 * datasets 2–3 and List by 4); `{_type: Image}` marks `{bytes, path}` structs as images.
 */
export function trlFeatures(withRewards: boolean): Record<string, Feature> {
  return {
    pair_id: value('string'),
    prompt: value('string'),
    chosen: value('string'),
    rejected: value('string'),
    images: [{ _type: 'Image' }],
    chosen_sentence_spans: span,
    rejected_sentence_spans: span,
    chosen_sentence_weights: [value('float64')],
    ...(withRewards ? { chosen_sentence_rewards: [value('float64')] } : {}),
  };
}

export interface TrlSqlOptions {
  alpha?: number;
  scale?: number;
  policy?: string;
}

/** The TRL rows of the pairs in `range`. Every CTE is filtered to the range, so a shard reads only its own pairs'
 *  sentences. Not sorted: DuckDB's sort would hold the image bytes of a whole shard; the shards themselves are
 *  pair_id ranges. */
export function trlShardSql(range: ShardRange, options: TrlSqlOptions): string {
  const macroArgs = [
    options.alpha !== undefined ? `alpha := ${options.alpha}` : '',
    options.scale !== undefined ? `scale := ${options.scale}` : '',
  ].filter(Boolean).join(', ');
  const rewards = options.policy === undefined ? '' : `,
    rewards AS (
      SELECT s.pair_id, list(r.reward::DOUBLE ORDER BY s.idx) AS rewards
      FROM sentences s LEFT JOIN sentence_rewards r
        ON r.pair_id = s.pair_id AND r.side = s.side AND r.idx = s.idx AND r.policy_model = ${quoteString(options.policy)}
      WHERE s.side = 'chosen' AND ${inRange(range, 's.pair_id')}
      GROUP BY s.pair_id)`;
  return `
    WITH p AS (SELECT pair_id, prompt, chosen, rejected, image_id FROM pairs WHERE ${inRange(range, 'pair_id')}),
    spans AS (
      SELECT pair_id, side, list({'char_start': char_start::INTEGER, 'char_end': char_end::INTEGER} ORDER BY idx) AS spans
      FROM sentences WHERE ${inRange(range, 'pair_id')}
      GROUP BY pair_id, side),
    weights AS (
      -- NULL for a sentence without any signal, and for a response none of whose sentences has one
      SELECT pair_id,
             CASE WHEN count(*) FILTER (similarity IS NOT NULL OR ppl IS NOT NULL) = 0 THEN NULL
                  ELSE list(CASE WHEN similarity IS NULL AND ppl IS NULL THEN NULL ELSE weight::DOUBLE END ORDER BY idx) END AS weights
      FROM sentence_weights(${macroArgs})
      WHERE side = 'chosen' AND ${inRange(range, 'pair_id')}
      GROUP BY pair_id)${rewards}
    SELECT p.pair_id, p.prompt, p.chosen, p.rejected,
           CASE WHEN i.image_id IS NULL THEN [] ELSE [{'bytes': i.bytes, 'path': ${imageFileName('i')}}] END AS images,
           cs.spans AS chosen_sentence_spans, rs.spans AS rejected_sentence_spans,
           w.weights AS chosen_sentence_weights${options.policy === undefined ? '' : ', r.rewards AS chosen_sentence_rewards'}
    FROM p
    LEFT JOIN images i ON i.image_id = p.image_id
    LEFT JOIN spans cs ON cs.pair_id = p.pair_id AND cs.side = 'chosen'
    LEFT JOIN spans rs ON rs.pair_id = p.pair_id AND rs.side = 'rejected'
    LEFT JOIN weights w ON w.pair_id = p.pair_id
    ${options.policy === undefined ? '' : 'LEFT JOIN rewards r ON r.pair_id = p.pair_id'}`;
}

/** The ASPO authors' per-pair objects, for the pairs that have sentences, ordered by pair_id. */
export function aspoReferenceSql(): string {
  return `
    WITH splits AS (
      SELECT s.pair_id, s.side, list(s.text ORDER BY s.idx) AS texts, list(sc.similarity ORDER BY s.idx) AS scores
      FROM sentences s LEFT JOIN sentence_scores sc USING (pair_id, side, idx)
      GROUP BY s.pair_id, s.side)
    SELECT p.pair_id AS id,
           CASE WHEN i.image_id IS NULL THEN NULL ELSE 'images/' || ${imageFileName('i')} END AS image,
           p.prompt AS question, p.chosen, p.rejected AS reject,
           coalesce(c.texts, []::VARCHAR[]) AS chosen_split, coalesce(r.texts, []::VARCHAR[]) AS reject_split,
           coalesce(c.scores, []::DOUBLE[]) AS chosen_clip_score, coalesce(r.scores, []::DOUBLE[]) AS reject_clip_score
    FROM pairs p
    LEFT JOIN splits c ON c.pair_id = p.pair_id AND c.side = 'chosen'
    LEFT JOIN splits r ON r.pair_id = p.pair_id AND r.side = 'rejected'
    LEFT JOIN images i ON i.image_id = p.image_id
    WHERE c.pair_id IS NOT NULL OR r.pair_id IS NOT NULL
    ORDER BY p.pair_id`;
}
