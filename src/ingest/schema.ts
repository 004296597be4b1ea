import { registerMigrations, type Migration } from '../store/migrations.js';

export const INGEST_SCHEMA: Migration = {
  version: 1,
  name: 'ingest: pairs, images, labels, rejects',
  sql: `
    CREATE TABLE images (
      image_id   VARCHAR PRIMARY KEY,   -- sha256 (hex) of the original image bytes
      sha256     VARCHAR NOT NULL,      -- sha256 of the stored bytes (differs from image_id only when downscaled)
      width      INTEGER NOT NULL,      -- stored size
      height     INTEGER NOT NULL,
      orig_width INTEGER NOT NULL,
      orig_height INTEGER NOT NULL,
      format     VARCHAR NOT NULL,      -- jpeg, png, webp, gif, ...
      n_bytes    BIGINT NOT NULL,
      bytes      BLOB NOT NULL,
      origin     VARCHAR                -- where it was first seen (path, or "<bytes>")
    );
    CREATE TABLE pairs (
      pair_id    VARCHAR NOT NULL,      -- sha256 of (prompt, chosen, rejected, image), unique (ingest inserts only new ids)
      source     VARCHAR NOT NULL,      -- dataset file
      source_row BIGINT NOT NULL,       -- 0-based row (line for JSON Lines) in that file
      format     VARCHAR NOT NULL,      -- the reader that produced it
      prompt     VARCHAR NOT NULL,
      chosen     VARCHAR NOT NULL,
      rejected   VARCHAR NOT NULL,
      image_id   VARCHAR,               -- NULL for text-only pairs
      meta       JSON
    );
    CREATE TABLE labels (
      pair_id VARCHAR NOT NULL,
      side    VARCHAR NOT NULL,         -- chosen | rejected
      start   INTEGER NOT NULL,         -- UTF-16 offsets into the response (char_start, char_end since migration 6)
      "end"   INTEGER NOT NULL,
      label   VARCHAR NOT NULL          -- written once, with the pair that carries it
    );
    CREATE TABLE rejects (
      stage      VARCHAR NOT NULL,      -- ingest, shard, ...
      source     VARCHAR NOT NULL,
      source_row BIGINT NOT NULL,       -- -1 when the whole file is refused
      field      VARCHAR,               -- the offending field, when one is to blame
      reason     VARCHAR NOT NULL,
      raw        VARCHAR,               -- the row as read (cut at 4 KB)
      PRIMARY KEY (stage, source, source_row)
    );
  `,
};

registerMigrations(INGEST_SCHEMA);
