import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { spawnSync } from 'node:child_process';
import { registeredMigrations } from '../src/schema.js';
import { registerMigrations } from '../src/store/migrations.js';
import { Store, withStore } from '../src/store/store.js';
import { ROOT, tempDir } from './support.js';

/** A store as a build before migration 6 left it: the first five migrations, and rows in the renamed tables. */
async function storeBeforeMigration6(file: string): Promise<void> {
  const instance = await DuckDBInstance.create(file);
  const connection = await instance.connect();
  await connection.run('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP DEFAULT current_timestamp)');
  for (const migration of registeredMigrations().filter((m) => m.version <= 5)) {
    await connection.run(migration.sql);
    await connection.run('INSERT INTO schema_migrations (version, name) VALUES (?, ?)', [migration.version, migration.name]);
  }
  await connection.run(`
    INSERT INTO sentences (pair_id, side, idx, start, "end", text, shared) VALUES
      ('p', 'chosen', 0, 0, 9, 'A red cup', false), ('p', 'chosen', 1, 11, 20, 'Blue sky.', true);
    INSERT INTO labels (pair_id, side, start, "end", label) VALUES ('p', 'chosen', 11, 20, 'hallucinated');
    INSERT INTO sentence_rewards (policy_model, ref_model, pair_id, side, idx, n_tokens, policy_logp_sum, ref_logp_sum,
      logratio_sum, multiplier, ref_multiplier, reward, beta, alpha, scale, loss_config)
      VALUES ('pol@1', 'ref@1', 'p', 'chosen', 1, 3, -2, -1, -1, 1, 1, -0.1, 0.1, 0.5, 1, '{}');`);
  connection.closeSync();
  instance.closeSync();
}

test('migration 6: an old store gets char_start/char_end in sentences, labels and the rewards view, every row kept', async () => {
  const file = path.join(tempDir(), 'old.duckdb');
  await storeBeforeMigration6(file);
  await withStore(file, async (store) => {
    assert.deepEqual((await store.all('SELECT version FROM schema_migrations ORDER BY version')).map((r) => r.version),
      registeredMigrations().map((m) => m.version));
    // The query the issue found failing, unquoted.
    assert.deepEqual(await store.all('SELECT char_start, char_end, text FROM sentences ORDER BY idx'), [
      { char_start: 0, char_end: 9, text: 'A red cup' }, { char_start: 11, char_end: 20, text: 'Blue sky.' }]);
    assert.deepEqual(await store.all('SELECT char_start, char_end, label FROM labels'), [{ char_start: 11, char_end: 20, label: 'hallucinated' }]);
    assert.deepEqual(await store.all(`
      SELECT r.text, l.label FROM sentence_rewards_text r
      JOIN labels l ON l.pair_id = r.pair_id AND l.side = r.side AND l.char_start < r.char_end AND r.char_start < l.char_end`),
    [{ text: 'Blue sky.', label: 'hallucinated' }]);
    for (const table of ['sentences', 'labels', 'sentence_rewards_text']) {
      const columns = (await store.all<{ column_name: string }>(
        'SELECT column_name FROM information_schema.columns WHERE table_name = ?', [table])).map((c) => c.column_name);
      assert.ok(columns.includes('char_start') && columns.includes('char_end'), `${table}: ${columns}`);
      assert.ok(!columns.includes('start') && !columns.includes('end'), `${table}: ${columns}`);
    }
  });
});

test('a new store has the same columns as a migrated one', async () => {
  const fresh = path.join(tempDir(), 'new.duckdb');
  const old = path.join(tempDir(), 'old.duckdb');
  await storeBeforeMigration6(old);
  const columns = (store: Store) => store.all(`SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns
    WHERE table_schema = 'main' AND table_name <> 'schema_migrations' ORDER BY table_name, ordinal_position`);
  const a = await withStore(fresh, columns);
  const b = await withStore(old, columns);
  assert.ok(a.length > 50);
  assert.deepEqual(a, b);
});

test('Store.upsert inserts, updates only the named columns of existing keys, and takes types and key from the table', async () => {
  await withStore(path.join(tempDir(), 'store.duckdb'), async (store) => {
    await store.run(`CREATE TABLE scores (pair_id VARCHAR, idx INTEGER, similarity DOUBLE, ppl DOUBLE, model VARCHAR,
      cut BOOLEAN, n BIGINT, note JSON, added TIMESTAMP DEFAULT current_timestamp, PRIMARY KEY (pair_id, idx))`);
    await store.upsert('scores', [
      { pair_id: 'a', idx: 0, similarity: 0.5, model: 'clip', cut: false, n: 7, note: '{"k":1}' },
      { pair_id: 'a', idx: 1, similarity: null, model: 'clip', cut: true, n: 2 ** 40, note: null },
    ]);
    // A second writer names other columns: the similarity it does not name stays.
    await store.upsert('scores', [{ pair_id: 'a', idx: 1, ppl: 3.25 }, { pair_id: 'b', idx: 0, ppl: 1.5 }]);
    const rows = await store.all(`SELECT pair_id, idx, similarity, ppl, model, cut, n, note::VARCHAR AS note, added IS NOT NULL AS added
      FROM scores ORDER BY pair_id, idx`);
    assert.deepEqual(rows, [
      { pair_id: 'a', idx: 0, similarity: 0.5, ppl: null, model: 'clip', cut: false, n: 7, note: '{"k":1}', added: true },
      { pair_id: 'a', idx: 1, similarity: null, ppl: 3.25, model: 'clip', cut: true, n: 2 ** 40, note: null, added: true },
      { pair_id: 'b', idx: 0, similarity: null, ppl: 1.5, model: null, cut: null, n: null, note: null, added: true },
    ]);
  });
});

test('Store.upsert refuses unknown columns and rows without the key, and lands all or nothing', async () => {
  await withStore(path.join(tempDir(), 'store.duckdb'), async (store) => {
    await store.run('CREATE TABLE t (id VARCHAR PRIMARY KEY, v DOUBLE NOT NULL)');
    await assert.rejects(store.upsert('t', [{ id: 'x', w: 1 }]), /upsert into t: no column w/);
    await assert.rejects(store.upsert('t', [{ v: 1 }]), /upsert into t: rows lack the key column id/);
    await assert.rejects(store.upsert('missing', [{ id: 'x' }]), /no table missing/);
    // The second row breaks NOT NULL: neither lands.
    await assert.rejects(store.upsert('t', [{ id: 'x', v: 1 }, { id: 'y', v: null }]));
    assert.equal(await store.scalar('SELECT count(*)::INT FROM t'), 0);
    // Inside a caller's transaction it joins it: a rollback takes it back.
    await assert.rejects(store.transaction(async () => {
      await store.upsert('t', [{ id: 'x', v: 1 }]);
      throw new Error('later step failed');
    }), /later step failed/);
    assert.equal(await store.scalar('SELECT count(*)::INT FROM t'), 0);
    await store.upsert('t', [{ id: 'x', v: 1 }]);
    await store.upsert('t', [{ id: 'x', v: 2 }]);
    assert.deepEqual(await store.all('SELECT * FROM t'), [{ id: 'x', v: 2 }]);
  });
});

test('the store imports no stage: opened without the stages\' schemas registered it says what to import', () => {
  const store = path.join(ROOT, 'dist', 'src', 'store', 'store.js');
  const db = path.join(tempDir(), 'bare.duckdb');
  const script = `const { Store } = await import(${JSON.stringify(store)});
    await Store.open(${JSON.stringify(db)}).then(() => console.log('opened'), (error) => console.log(error.message));`;
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stdout, /schema migration 1 not registered: import the toolkit \('aspo-toolkit', or its src\/schema\.js\)/);
});

test('a migration version registered twice with different SQL is refused', () => {
  assert.throws(() => registerMigrations({ version: 1, name: 'another first', sql: 'CREATE TABLE x (a INT)' }),
    /schema migration 1 registered twice/);
  const first = registeredMigrations()[0]!;
  registerMigrations(first); // the same one again: nothing changes
  assert.deepEqual(registeredMigrations()[0], first);
});
