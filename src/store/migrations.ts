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
