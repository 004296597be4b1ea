import { registerMigrations, type Migration } from '../store/migrations.js';

export const SEGMENT_SCHEMA: Migration = {
  version: 2,
  name: 'segment: sentences, segmented_pairs',
  sql: `
    CREATE TABLE sentences (
      pair_id     VARCHAR NOT NULL,
      side        VARCHAR NOT NULL,     -- chosen | rejected
      idx         INTEGER NOT NULL,     -- 0-based sentence number within the response
      start       INTEGER NOT NULL,     -- UTF-16 offsets into the response (char_start, char_end since migration 6)
      "end"       INTEGER NOT NULL,
      text        VARCHAR NOT NULL,     -- response[start:end]
      match_idx   INTEGER,              -- idx of the aligned sentence on the other side, NULL when none is similar
      match_score DOUBLE,               -- similarity to it in [0, 1] (1 = identical), NULL with match_idx
      shared      BOOLEAN NOT NULL,     -- a (near-)identical sentence is on the other side
      PRIMARY KEY (pair_id, side, idx)
    );
    CREATE TABLE segmented_pairs (
      pair_id            VARCHAR PRIMARY KEY,  -- every pair the segment stage has done, even with empty responses
      chosen_sentences   INTEGER NOT NULL,
      rejected_sentences INTEGER NOT NULL,
      shared_sentences   INTEGER NOT NULL      -- chosen sentences with shared = true
    );
  `,
};

/**
 * The offset columns renamed to char_start/char_end (`end` is an SQL keyword), in sentences and in ingest's labels,
 * and the rewards view that shows them.
 */
export const SEGMENT_OFFSETS_SCHEMA: Migration = {
  // `SELECT start, end FROM sentences` was a parser error. Both tables with UTF-16 offsets, and the view that shows
  // them, take the names the export uses.
  version: 6,
  name: 'offset columns: char_start, char_end in sentences, labels, sentence_rewards_text',
  sql: `
    ALTER TABLE sentences RENAME COLUMN start TO char_start;
    ALTER TABLE sentences RENAME COLUMN "end" TO char_end;
    ALTER TABLE labels RENAME COLUMN start TO char_start;
    ALTER TABLE labels RENAME COLUMN "end" TO char_end;
    CREATE OR REPLACE VIEW sentence_rewards_text AS
      SELECT r.*, s.char_start, s.char_end, s.text, s.shared
      FROM sentence_rewards r LEFT JOIN sentences s USING (pair_id, side, idx);
  `,
};

registerMigrations(SEGMENT_SCHEMA, SEGMENT_OFFSETS_SCHEMA);
