import { registerMigrations, type Migration } from '../store/migrations.js';

/**
 * Per-sentence signals of the score stage and the adaptive weights computed from them (spec steps 2–5).
 * The weights are a table macro over the stored signals, so trying another `alpha` or `scale` is a query,
 * not a re-scoring; the view of the same name applies the defaults (0.5, 1).
 */
export const SCORE_SCHEMA: Migration = {
  version: 4,
  name: 'score: similarity_cache, sentence_scores, sentence_weights',
  sql: `
    CREATE TABLE similarity_cache (
      model_id    VARCHAR NOT NULL,     -- Hub id, or local folder name @ content hash
      image_id    VARCHAR NOT NULL,     -- images.image_id (sha256 of the image)
      text_sha256 VARCHAR NOT NULL,     -- sha256 (hex) of the sentence text, UTF-8
      similarity  DOUBLE NOT NULL,      -- cosine of the unit image and text embeddings
      truncated   BOOLEAN NOT NULL,     -- the text was longer than the text encoder's context
      PRIMARY KEY (model_id, image_id, text_sha256)
    );
    CREATE TABLE sentence_scores (
      pair_id              VARCHAR NOT NULL,
      side                 VARCHAR NOT NULL,  -- chosen | rejected
      idx                  INTEGER NOT NULL,  -- sentences.idx
      similarity           DOUBLE,            -- S_i; NULL when not computed (see similarity_error)
      similarity_model     VARCHAR,           -- similarity_cache.model_id of the model that scored it
      similarity_truncated BOOLEAN,           -- the sentence was cut to the text encoder's context
      similarity_error     VARCHAR,           -- why similarity is NULL although the model ran (undecodable image)
      ppl                  DOUBLE,            -- PPL_i under the reference model (written by the perplexity scorer)
      ref_logp_sum         DOUBLE,            -- Σ log p_ref over the sentence's tokens
      n_tokens             INTEGER,           -- tokens of the sentence under that model's tokenizer
      ppl_model            VARCHAR,           -- the reference model
      PRIMARY KEY (pair_id, side, idx)
    );
    -- Inside the macro, a column reference named like a parameter (alpha, scale) would be replaced by its value,
    -- hence the *_value names until the final aliases.
    CREATE MACRO sentence_weights(alpha := 0.5, scale := 1.0) AS TABLE
      WITH signals AS (
        SELECT s.pair_id, s.side, s.idx, sc.similarity, sc.ppl,
               count(*) OVER response AS n_sentences,
               min(sc.similarity) OVER response AS s_min, max(sc.similarity) OVER response AS s_max,
               min(sc.ppl) OVER response AS p_min, max(sc.ppl) OVER response AS p_max
        FROM sentences s LEFT JOIN sentence_scores sc USING (pair_id, side, idx)
        WINDOW response AS (PARTITION BY s.pair_id, s.side)
      ), normalized AS (
        SELECT pair_id, side, idx, n_sentences, similarity, ppl,
               (similarity - s_min) / (s_max - s_min + 1e-6) AS s_norm,
               -- min-max of -PPL: low perplexity, high weight
               (p_max - ppl) / (p_max - p_min + 1e-6) AS p_norm,
               CASE WHEN alpha::DOUBLE BETWEEN 0 AND 1 THEN alpha::DOUBLE
                    ELSE error('sentence_weights: alpha must be between 0 and 1, got ' || alpha) END AS alpha_value,
               CASE WHEN scale::DOUBLE >= 0 THEN scale::DOUBLE
                    ELSE error('sentence_weights: scale must be >= 0, got ' || scale) END AS scale_value
        FROM signals
      ), fused AS (
        -- A signal absent for a sentence drops out and the other one carries its whole weight; none, weight 0.
        SELECT *,
               CASE WHEN s_norm IS NULL THEN 0 ELSE alpha_value END AS s_share,
               CASE WHEN p_norm IS NULL THEN 0 ELSE 1 - alpha_value END AS p_share
        FROM normalized
      ), weighted AS (
        SELECT pair_id, side, idx, n_sentences, similarity, ppl, s_norm, p_norm,
               CASE WHEN n_sentences = 1 OR s_share + p_share = 0 THEN 0.0
                    ELSE (s_share * coalesce(s_norm, 0) + p_share * coalesce(p_norm, 0)) / (s_share + p_share) END AS weight,
               alpha_value, scale_value
        FROM fused
      )
      SELECT pair_id, side, idx, n_sentences, similarity, ppl, s_norm, p_norm, weight,
             1 + scale_value * weight AS multiplier, alpha_value AS alpha, scale_value AS scale
      FROM weighted;
    CREATE VIEW sentence_weights AS SELECT * FROM sentence_weights();
  `,
};

registerMigrations(SCORE_SCHEMA);
