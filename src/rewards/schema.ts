import { registerMigrations, type Migration } from '../store/migrations.js';

/**
 * Per-sentence implicit rewards of a trained policy against its reference (`aspo rewards`): the sentence's part of
 * the DPO/ASPO margin, so users can ask which sentences a trained policy penalises or favours.
 */
export const REWARDS_SCHEMA: Migration = {
  version: 5,
  name: 'rewards: sentence_rewards, sentence_rewards_text',
  sql: `
    CREATE TABLE sentence_rewards (
      policy_model    VARCHAR NOT NULL,  -- trained checkpoint: folder name @ content hash
      ref_model       VARCHAR NOT NULL,  -- reference checkpoint, same form
      pair_id         VARCHAR NOT NULL,
      side            VARCHAR NOT NULL,  -- chosen | rejected
      idx             INTEGER NOT NULL,  -- sentences.idx
      n_tokens        INTEGER NOT NULL,  -- the sentence's tokens (0: a token straddling its boundary took them all)
      policy_logp_sum DOUBLE NOT NULL,   -- sum of log pi_theta over those tokens
      ref_logp_sum    DOUBLE NOT NULL,   -- sum of log pi_ref over those tokens
      logratio_sum    DOUBLE NOT NULL,   -- policy_logp_sum - ref_logp_sum
      weight          DOUBLE,            -- ASPO sentence weight w_i (chosen sentences with tokens); NULL otherwise or for DPO
      multiplier      DOUBLE NOT NULL,   -- factor on the sentence's policy log-probs in the margin: N * (1 + scale * w_i); 1 for rejected
      ref_multiplier  DOUBLE NOT NULL,   -- factor on its reference log-probs; equals multiplier unless ref_weights is "own"
      reward          DOUBLE NOT NULL,   -- beta * (multiplier * policy_logp_sum - ref_multiplier * ref_logp_sum)
      beta            DOUBLE NOT NULL,
      alpha           DOUBLE NOT NULL,
      scale           DOUBLE NOT NULL,
      loss_config     JSON NOT NULL,     -- the run's whole loss configuration
      computed_at     TIMESTAMP NOT NULL DEFAULT current_timestamp,
      PRIMARY KEY (policy_model, pair_id, side, idx)
    );
    CREATE VIEW sentence_rewards_text AS
      SELECT r.*, s.start, s."end", s.text, s.shared  -- s.char_start, s.char_end since migration 6
      FROM sentence_rewards r LEFT JOIN sentences s USING (pair_id, side, idx);
  `,
};

registerMigrations(REWARDS_SCHEMA);
