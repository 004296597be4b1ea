import type { Store } from './store.js';

/** One schema change of a stage: applied once per store, in version order, in a transaction. */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

const registry = new Map<number, Migration>();

/**
 * A stage registers the migrations of the tables it owns (its schema.ts does, when imported); src/schema.ts imports
 * every stage's, so that the store knows them all without importing any stage. Versions are global and unique;
 * append new migrations with the next free version, never edit one that has shipped.
 */
export function registerMigrations(...migrations: Migration[]): void {
  for (const migration of migrations) {
    const known = registry.get(migration.version);
    if (known && known.sql !== migration.sql) {
      throw new Error(`schema migration ${migration.version} registered twice: "${known.name}" and "${migration.name}"`);
    }
    registry.set(migration.version, migration);
  }
}

/** The registered migrations in version order. */
export function registeredMigrations(): Migration[] {
  return [...registry.values()].sort((a, b) => a.version - b.version);
}

/**
 * Brings a store up to date: applies every registered migration it has not applied, in version order, each in a
 * transaction (`schema_migrations` records them). Refuses to run with a gap in the versions (a stage's schema not
 * registered), which would create tables out of order.
 */
export async function migrate(store: Store): Promise<void> {
  const migrations = registeredMigrations();
  const missing = migrations.length === 0 ? [1]
    : Array.from({ length: migrations.at(-1)!.version }, (_, i) => i + 1).filter((v) => !registry.has(v));
  if (missing.length) {
    throw new Error(`schema migration${missing.length > 1 ? 's' : ''} ${missing.join(', ')} not registered: import the ` +
      "toolkit ('aspo-toolkit', or its src/schema.js) before opening a store");
  }
  await store.run(`CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP DEFAULT current_timestamp)`);
  const applied = new Set((await store.all<{ version: number }>('SELECT version FROM schema_migrations'))
    .map((row) => row.version));
  for (const migration of migrations) {
    if (applied.has(migration.version)) continue;
    await store.transaction(async () => {
      await store.run(migration.sql);
      await store.run('INSERT INTO schema_migrations (version, name) VALUES (?, ?)', [migration.version, migration.name]);
    });
  }
}
