import type { Store } from './store.js';
import { INGEST_SCHEMA } from '../ingest/schema.js';
import { SEGMENT_SCHEMA } from '../segment/schema.js';
import { TRAIN_SCHEMA } from '../train/schema.js';
import { SCORE_SCHEMA } from '../score/schema.js';
import { REWARDS_SCHEMA } from '../rewards/schema.js';

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/**
 * Every schema change, in order. A store records the versions it has applied in
 * `schema_migrations`; opening it applies the missing ones, each in a transaction.
 * Append new migrations at the end; never edit one that has shipped.
 */
export const MIGRATIONS: readonly Migration[] = [
  INGEST_SCHEMA,
  SEGMENT_SCHEMA,
  TRAIN_SCHEMA,
  SCORE_SCHEMA,
  REWARDS_SCHEMA,
  {
    // `end` is a reserved word: `SELECT start, end FROM sentences` was a parser error. Both tables with UTF-16
    // offsets, and the view that shows them, take the names the export uses.
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
  },
];

export async function migrate(store: Store): Promise<void> {
  await store.run(`CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP DEFAULT current_timestamp)`);
  const applied = new Set((await store.all<{ version: number }>('SELECT version FROM schema_migrations'))
    .map((row) => row.version));
  for (const migration of MIGRATIONS) {
    if (applied.has(migration.version)) continue;
    await store.transaction(async () => {
      await store.run(migration.sql);
      await store.run('INSERT INTO schema_migrations (version, name) VALUES (?, ?)', [migration.version, migration.name]);
    });
  }
}

/** The newest schema version this build of the toolkit knows. */
export const SCHEMA_VERSION = Math.max(...MIGRATIONS.map((m) => m.version));
