import { registerMigrations, type Migration } from '../store/migrations.js';

/** Training runs and their metrics, long format so any metric of any objective can be logged. */
export const TRAIN_SCHEMA: Migration = {
  version: 3,
  name: 'train: runs, train_metrics',
  sql: `
    CREATE TABLE runs (
      run_id      VARCHAR PRIMARY KEY,  -- <objective>-<UTC time>-<random>
      objective   VARCHAR NOT NULL,     -- sft, dpo, aspo
      config      JSON NOT NULL,        -- every option of the run, model configuration included
      backend     VARCHAR,              -- TensorFlow.js backend used
      checkpoint  VARCHAR,              -- output checkpoint folder
      status      VARCHAR NOT NULL,     -- running, finished, failed
      started_at  TIMESTAMP NOT NULL,
      finished_at TIMESTAMP,
      summary     JSON                  -- final metrics
    );
    CREATE TABLE train_metrics (
      run_id    VARCHAR NOT NULL,
      step      INTEGER NOT NULL,       -- optimizer steps done when measured
      split     VARCHAR NOT NULL,       -- train, eval
      name      VARCHAR NOT NULL,       -- loss, tokens_per_s, sentence_accuracy, ...
      value     DOUBLE NOT NULL,
      logged_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
      PRIMARY KEY (run_id, step, split, name)
    );
  `,
};

registerMigrations(TRAIN_SCHEMA);
