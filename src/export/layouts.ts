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

/** A conversational message list: `[{content: [{text, type}], role}]`, fields in the order TRL's datasets have. */
const messages: Feature = [{ content: [{ text: value('string'), type: value('string') }], role: value('string') }];

/** TRL's two preference layouts: messages (its vision datasets, e.g. trl-lib/rlaif-v) or plain strings. */
export const TRL_LAYOUTS = ['conversational', 'plain'] as const;
export type TrlLayout = (typeof TRL_LAYOUTS)[number];

/**
 * The Hugging Face `datasets` features of a TRL shard. A one-element list is a list feature (read as Sequence by
 * datasets 2–3 and List by 4); `{_type: Image}` marks `{bytes, path}` structs as images.
 */
export function trlFeatures(layout: TrlLayout, withRewards: boolean): Record<string, Feature> {
  const text = layout === 'plain' ? value('string') : messages;
  return {
    pair_id: value('string'),
    prompt: text,
    chosen: text,
    rejected: text,
    images: [{ _type: 'Image' }],
    chosen_sentence_spans: span,
    rejected_sentence_spans: span,
    chosen_sentence_weights: [value('float64')],
    ...(withRewards ? { chosen_sentence_rewards: [value('float64')] } : {}),
  };
}

export interface TrlSqlOptions {
  layout?: TrlLayout;
  alpha?: number;
  scale?: number;
  policy?: string;
}

/** The conversational prompt (an image part first when the pair has an image) and responses, as TRL's vision
 *  preference datasets have them. The image part has a NULL text, as there. */
const conversationalColumns = `
           [{'content': CASE WHEN i.image_id IS NULL THEN [{'text': p.prompt, 'type': 'text'}]
                             ELSE [{'text': NULL::VARCHAR, 'type': 'image'}, {'text': p.prompt, 'type': 'text'}] END,
             'role': 'user'}] AS prompt,
           [{'content': [{'text': p.chosen, 'type': 'text'}], 'role': 'assistant'}] AS chosen,
           [{'content': [{'text': p.rejected, 'type': 'text'}], 'role': 'assistant'}] AS rejected`;

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
    SELECT p.pair_id, ${options.layout === 'plain' ? 'p.prompt, p.chosen, p.rejected' : conversationalColumns},
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

/** How `--format aspo-reference` writes the sentence scores: min–max normalised per response, as the authors'
 *  scripts/4_normalize.py does before training, or the stored similarities. */
export const ASPO_REFERENCE_SCORES = ['normalized', 'raw'] as const;
export type AspoReferenceScores = (typeof ASPO_REFERENCE_SCORES)[number];

/** Each response's sentences with their raw and min–max normalised similarity, and whether every sentence has one. */
const ASPO_REFERENCE_SPLITS = `
    scored AS (
      SELECT s.pair_id, s.side, s.idx, s.text, sc.similarity AS raw,
             (sc.similarity - min(sc.similarity) OVER response)
               / (max(sc.similarity) OVER response - min(sc.similarity) OVER response + 1e-6) AS normalized
      FROM sentences s LEFT JOIN sentence_scores sc USING (pair_id, side, idx)
      WINDOW response AS (PARTITION BY s.pair_id, s.side)),
    splits AS (
      SELECT pair_id, side, list(text ORDER BY idx) AS texts, list(raw ORDER BY idx) AS raw,
             list(normalized ORDER BY idx) AS normalized, count(raw) = count(*) AS complete
      FROM scored GROUP BY pair_id, side),
    candidates AS (
      SELECT p.pair_id, p.prompt, p.chosen, p.rejected, p.image_id, c.texts AS chosen_split, r.texts AS reject_split,
             c.raw AS chosen_raw, r.raw AS reject_raw, c.normalized AS chosen_normalized, r.normalized AS reject_normalized,
             c.pair_id IS NOT NULL AND r.pair_id IS NOT NULL AS segmented, coalesce(c.complete AND r.complete, false) AS scored
      FROM pairs p
      LEFT JOIN splits c ON c.pair_id = p.pair_id AND c.side = 'chosen'
      LEFT JOIN splits r ON r.pair_id = p.pair_id AND r.side = 'rejected')`;

/**
 * The ASPO authors' per-pair objects, ordered by pair_id: the pairs their trainer can use, i.e. with an image, both
 * responses segmented, and a score for every sentence (the trainer opens the image and does arithmetic on scores).
 */
export function aspoReferenceSql(scores: AspoReferenceScores): string {
  return `
    WITH ${ASPO_REFERENCE_SPLITS}
    SELECT c.pair_id AS id, ${imageFileName('i')} AS image_id, c.prompt AS question, c.chosen, c.rejected AS reject,
           c.chosen_split, c.reject_split, c.chosen_${scores} AS chosen_clip_score, c.reject_${scores} AS reject_clip_score
    FROM candidates c JOIN images i ON i.image_id = c.image_id
    WHERE c.segmented AND c.scored
    ORDER BY c.pair_id`;
}

/** How many pairs the reference layout leaves out, by reason (each pair counted under the first that applies). */
export function aspoReferenceLeftOutSql(): string {
  return `
    WITH ${ASPO_REFERENCE_SPLITS}
    SELECT count(*) FILTER (image_id IS NULL) AS text_only,
           count(*) FILTER (image_id IS NOT NULL AND NOT segmented) AS no_sentences,
           count(*) FILTER (image_id IS NOT NULL AND segmented AND NOT scored) AS unscored
    FROM candidates`;
}
