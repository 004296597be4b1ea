import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { tableFromIPC } from 'apache-arrow';
import { parquetMetadata, parquetReadObjects } from 'hyparquet';
import { Store, withStore } from '../src/store/store.js';
import { ingest } from '../src/ingest/ingest.js';
import { segmentStage } from '../src/segment/stage.js';
import { ClipEncoder } from '../src/score/clip.js';
import { scoreSimilarity } from '../src/score/stage.js';
import { checkReadOnlySql } from '../src/store/read-only-sql.js';
import { exportAspoReference, exportTable, exportTrl, shardName } from '../src/export/export.js';
import { sha256Hex } from '../src/util/hash.js';
import { writeTinyClip } from './clip-fixture.js';
import { CLI, tempDir } from './support.js';
import { dataPreprocess, getItem } from './aspo-reference-reader.js';

const png = (r: number, g: number, b: number) =>
  sharp({ create: { width: 12, height: 10, channels: 3, background: { r, g, b } } }).png().toBuffer();

/** A store built as a user builds one: ingest a JSON Lines file with images, segment, score with a (tiny) CLIP. */
async function buildStore(): Promise<{ db: string; dir: string }> {
  const dir = tempDir('aspo-export-');
  mkdirSync(path.join(dir, 'img'));
  writeFileSync(path.join(dir, 'img', 'red.png'), await png(255, 0, 0));
  writeFileSync(path.join(dir, 'img', 'blue.png'), await png(0, 0, 255));
  writeFileSync(path.join(dir, 'img', 'green.jpg'), await sharp(await png(0, 255, 0)).jpeg().toBuffer());
  const rows = [
    { prompt: '<image>\nDescribe the image.', chosen: 'A red square. A photo of a square.', rejected: 'A blue square. A photo of a square.', image: 'img/red.png', id: 'r1' },
    { prompt: 'Describe the image.', chosen: 'A blue square. Ünïcode “quotes” here.', rejected: 'A green square.', image: 'img/blue.png' },
    { prompt: 'What is it?', chosen: 'A green square. It is small.', rejected: 'A red square. It is big.', image: 'img/green.jpg',
      rejected_spans: [{ start: 0, end: 15, label: 'hallucinated' }] },
    { prompt: 'Text only?', chosen: 'Yes. It is text.', rejected: 'No.' },
    { prompt: 'Same red image again?', chosen: 'A red square.', rejected: 'A yellow square. A photo.', image: 'img/red.png' },
  ];
  writeFileSync(path.join(dir, 'data.jsonl'), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const db = path.join(dir, 'store.duckdb');
  const encoder = await ClipEncoder.load(writeTinyClip(path.join(dir, 'tiny-clip')), { device: 'cpu' });
  await withStore(db, async (store) => {
    const summary = await ingest(store, [path.join(dir, 'data.jsonl')]);
    assert.equal(summary.ingested, rows.length);
    await segmentStage(store);
    await scoreSimilarity(store, encoder);
  });
  return { db, dir };
}

const built = buildStore();

const readOnly = async <T>(db: string, work: (store: Store) => Promise<T>) => withStore(db, work, { readOnly: true });

function cli(args: string[]) {
  return spawnSync(process.execPath, [CLI, 'export', ...args], { encoding: 'utf8' });
}

/** Rows of `a` not in `b` and of `b` not in `a`: both 0 when the two relations hold the same rows. */
async function exceptBothWays(store: Store, a: string, b: string): Promise<[number, number]> {
  const left = Number(await store.scalar(`SELECT count(*) FROM ((${a}) EXCEPT ALL (${b}))`));
  const right = Number(await store.scalar(`SELECT count(*) FROM ((${b}) EXCEPT ALL (${a}))`));
  return [left, right];
}

test('Parquet of every table reads back through DuckDB with identical rows', async () => {
  const { db, dir } = await built;
  await readOnly(db, async (store) => {
    for (const table of ['pairs', 'images', 'labels', 'sentences', 'sentence_scores', 'sentence_weights']) {
      const out = path.join(dir, 'parquet', `${table}.parquet`);
      const summary = await exportTable(store, { table }, { format: 'parquet', out });
      const expected = Number(await store.scalar(`SELECT count(*) FROM ${table}`));
      assert.ok(expected > 0, `${table} has rows`);
      assert.equal(summary.rows, expected);
      assert.deepEqual(await exceptBothWays(store, `SELECT * FROM ${table}`, `SELECT * FROM read_parquet('${out}')`), [0, 0], table);
    }
  });
});

test('--partition-by writes Hive folders that read back with hive_partitioning', async () => {
  const { db, dir } = await built;
  const out = path.join(dir, 'by-side');
  const result = cli(['--db', db, '--sql', 'SELECT pair_id, side, idx, text, shared FROM sentences', '--format', 'parquet',
    '--partition-by', 'side,shared', '--out', out]);
  assert.equal(result.status, 0, result.stderr);
  assert.equal(result.stdout, '');
  assert.deepEqual(readdirSync(out).sort(), ['side=chosen', 'side=rejected']);
  assert.ok(readdirSync(path.join(out, 'side=chosen')).every((d) => /^shared=(true|false)$/.test(d)));
  const written = readdirSync(out, { recursive: true }).filter((f) => String(f).endsWith('.parquet'));
  assert.ok(written.length >= 2);
  assert.match(result.stderr, new RegExp(`\\(${written.length} files\\)`), 'the summary counts the files written');
  await readOnly(db, async (store) => {
    assert.deepEqual(await exceptBothWays(store, 'SELECT pair_id, side, idx, text, shared FROM sentences',
      `SELECT pair_id, side, idx, text, shared::BOOLEAN FROM read_parquet('${out}/**/*.parquet', hive_partitioning = true)`), [0, 0]);
  });
});

test('Arrow IPC read back with apache-arrow equals the query, over several record batches', async () => {
  const { db, dir } = await built;
  const queries = [
    'SELECT * FROM pairs ORDER BY pair_id',
    'SELECT * FROM images ORDER BY image_id',
    'SELECT * FROM sentence_weights ORDER BY pair_id, side, idx',
    // More rows than one DuckDB chunk (2048), with lists, structs and NULLs.
    `SELECT i, i::INTEGER AS small, i / 7 AS ratio, CASE WHEN i % 3 = 0 THEN NULL ELSE 'row ' || i END AS label,
            [i, i + 1] AS pair, {'start': i::INTEGER, 'end': (i + 2)::INTEGER} AS span, i % 2 = 0 AS even
     FROM range(5000) t(i)`,
  ];
  await readOnly(db, async (store) => {
    for (const [n, sql] of queries.entries()) {
      const out = path.join(dir, `q${n}.arrow`);
      await exportTable(store, { sql }, { format: 'arrow', out });
      const table = tableFromIPC(readFileSync(out));
      const { columns, rows } = await store.query(sql);
      assert.deepEqual(table.schema.fields.map((f) => f.name), columns);
      assert.equal(table.numRows, rows.length);
      if (n === 3) assert.ok(table.batches.length > 1, 'one batch per chunk');
      const plain = (v: unknown): unknown => {
        if (typeof v === 'bigint') return Number(v);
        if (v instanceof Date) return v.getTime();
        if (v instanceof Uint8Array) return Buffer.from(v).toString('hex');
        if (Array.isArray(v)) return v.map(plain);
        if (v && typeof v === 'object' && typeof (v as { toJSON?: unknown }).toJSON === 'function') return plain((v as { toJSON(): unknown }).toJSON());
        if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
        return v;
      };
      const arrowRows = table.toArray().map((row) => plain(row.toJSON()));
      const expected = rows.map((row) => plain(Object.fromEntries(columns.map((c) => [c, row[c] instanceof Array ? [...(row[c] as unknown[])] : row[c]]))));
      // DuckDB's JSON type arrives as text in both.
      assert.deepEqual(arrowRows, expected.map((r) => JSON.parse(JSON.stringify(r, (_k, v) => (v === undefined ? null : v)))), sql);
    }
  });
});

test('JSON Lines of the pairs with their images (as data: URIs) ingest back to the same pair_ids', async () => {
  const { db, dir } = await built;
  const out = path.join(dir, 'pairs.jsonl');
  const sql = `SELECT p.prompt, p.chosen, p.rejected,
      CASE WHEN i.image_id IS NULL THEN NULL ELSE 'data:image/' || i.format || ';base64,' || base64(i.bytes) END AS image
    FROM pairs p LEFT JOIN images i USING (image_id)`;
  const result = cli(['--db', db, '--sql', sql, '--format', 'jsonl', '--out', out]);
  assert.equal(result.status, 0, result.stderr);
  const lines = readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(lines.length, 5);
  const again = path.join(dir, 'again-jsonl.duckdb');
  await withStore(again, async (store) => {
    await ingest(store, [out]);
  });
  const ids = async (file: string) => readOnly(file, async (s) => (await s.all<{ pair_id: string }>('SELECT pair_id FROM pairs ORDER BY 1')).map((r) => r.pair_id));
  assert.deepEqual(await ids(again), await ids(db));
  // CSV writes bytes as base64, as `aspo query` does.
  const csv = path.join(dir, 'images.csv');
  assert.equal(cli(['--db', db, '--sql', 'SELECT image_id, bytes FROM images ORDER BY image_id', '--format', 'csv', '--out', csv]).status, 0);
  const [header, first] = readFileSync(csv, 'utf8').split('\n');
  assert.equal(header, 'image_id,bytes');
  const [imageId, base64] = first!.split(',');
  assert.equal(sha256Hex(Buffer.from(base64!, 'base64')), imageId);
});

interface TrlRow {
  pair_id: string; prompt: unknown; chosen: unknown; rejected: unknown;
  images: { bytes: Uint8Array; path: string }[];
  chosen_sentence_spans: { char_start: number; char_end: number }[] | null;
  rejected_sentence_spans: { char_start: number; char_end: number }[] | null;
  chosen_sentence_weights: (number | null)[] | null;
  chosen_sentence_rewards?: (number | null)[] | null;
}

/** A TRL shard folder read with hyparquet, a Parquet reader independent of the DuckDB that wrote it (utf8: false: only
 *  columns annotated as strings become strings, so image bytes stay bytes): rows of every
 *  file in name order, and each file's `huggingface` features. */
async function readShards(out: string): Promise<{ rows: TrlRow[]; features: Record<string, unknown>[]; columns: string[][] }> {
  const rows: TrlRow[] = [];
  const features: Record<string, unknown>[] = [];
  const columns: string[][] = [];
  for (const name of readdirSync(out).sort()) {
    const bytes = readFileSync(path.join(out, name));
    const file = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
    const metadata = parquetMetadata(file);
    const huggingface = metadata.key_value_metadata?.find((kv) => kv.key === 'huggingface');
    assert.ok(huggingface?.value, `${name} carries Hugging Face features`);
    features.push(JSON.parse(huggingface.value).info.features);
    columns.push(topLevelNames(metadata.schema));
    rows.push(...(await parquetReadObjects({ file, utf8: false })) as unknown as TrlRow[]);
  }
  return { rows: rows.sort((a, b) => (a.pair_id < b.pair_id ? -1 : 1)), features, columns };
}

/** The top-level column names of a flattened Parquet schema (depth-first, each group followed by its children). */
function topLevelNames(schema: { name: string; num_children?: number }[]): string[] {
  const after = (k: number): number => {
    let next = k + 1;
    for (let child = 0; child < (schema[k]!.num_children ?? 0); child++) next = after(next);
    return next;
  };
  const names: string[] = [];
  for (let k = 1; k < schema.length; k = after(k)) names.push(schema[k]!.name);
  return names;
}

const message = [{ content: [{ text: { dtype: 'string', _type: 'Value' }, type: { dtype: 'string', _type: 'Value' } }], role: { dtype: 'string', _type: 'Value' } }];

test('TRL export: the conversational vision layout, Hugging Face features, spans and weights from the store, ingestable', async () => {
  const { db, dir } = await built;
  const out = path.join(dir, 'trl');
  const result = cli(['--db', db, '--format', 'trl', '--out', out, '--rows-per-shard', '2', '--alpha', '1']);
  assert.equal(result.status, 0, result.stderr);
  assert.deepEqual(readdirSync(out).sort(), [0, 1, 2].map((k) => shardName(k, 3)));
  const { rows, features, columns } = await readShards(out);
  const names = ['pair_id', 'prompt', 'chosen', 'rejected', 'images', 'chosen_sentence_spans', 'rejected_sentence_spans', 'chosen_sentence_weights'];
  for (const [k, feature] of features.entries()) {
    assert.deepEqual(columns[k], names);
    assert.deepEqual(Object.keys(feature), names);
    assert.deepEqual(feature.prompt, message);
    assert.deepEqual(feature.chosen, message);
    assert.deepEqual(feature.rejected, message);
    assert.deepEqual(feature.images, [{ _type: 'Image' }]);
    assert.deepEqual(feature.chosen_sentence_spans, [{ char_start: { dtype: 'int32', _type: 'Value' }, char_end: { dtype: 'int32', _type: 'Value' } }]);
    assert.deepEqual(feature.chosen_sentence_weights, [{ dtype: 'float64', _type: 'Value' }]);
  }
  await readOnly(db, async (store) => {
    // The Parquet physical types the datasets Image feature expects: bytes as binary (no string annotation).
    const leaves = await store.all<{ name: string; type: string; logical: string | null }>(
      `SELECT name, type, converted_type AS logical FROM parquet_schema('${path.join(out, shardName(0, 3))}') WHERE name IN ('bytes', 'path', 'text', 'role')`);
    assert.deepEqual(leaves.map((l) => [l.name, l.type, l.logical]).sort(),
      [['bytes', 'BYTE_ARRAY', null], ['path', 'BYTE_ARRAY', 'UTF8'], ['role', 'BYTE_ARRAY', 'UTF8'], ['role', 'BYTE_ARRAY', 'UTF8'], ['role', 'BYTE_ARRAY', 'UTF8'],
        ['text', 'BYTE_ARRAY', 'UTF8'], ['text', 'BYTE_ARRAY', 'UTF8'], ['text', 'BYTE_ARRAY', 'UTF8']]);
    const pairs = await store.all<{ pair_id: string; prompt: string; chosen: string; rejected: string; image_id: string | null }>('SELECT * FROM pairs ORDER BY pair_id');
    assert.deepEqual(rows.map((r) => r.pair_id), pairs.map((p) => p.pair_id));
    const sentences = await store.all<{ pair_id: string; side: string; text: string }>('SELECT * FROM sentences ORDER BY pair_id, side, idx');
    const weights = await store.all<{ pair_id: string; weight: number; similarity: number | null }>(
      "SELECT pair_id, weight, similarity FROM sentence_weights(alpha := 1.0) WHERE side = 'chosen' ORDER BY pair_id, idx");
    for (const [i, row] of rows.entries()) {
      const pair = pairs[i]!;
      const imagePart = pair.image_id ? [{ text: null, type: 'image' }] : [];
      assert.deepEqual(row.prompt, [{ content: [...imagePart, { text: pair.prompt, type: 'text' }], role: 'user' }]);
      assert.deepEqual(row.chosen, [{ content: [{ text: pair.chosen, type: 'text' }], role: 'assistant' }]);
      assert.deepEqual(row.rejected, [{ content: [{ text: pair.rejected, type: 'text' }], role: 'assistant' }]);
      if (pair.image_id) {
        assert.equal(row.images.length, 1);
        assert.equal(sha256Hex(row.images[0]!.bytes), pair.image_id);
      } else assert.deepEqual(row.images, []);
      for (const side of ['chosen', 'rejected'] as const) {
        const texts = sentences.filter((s) => s.pair_id === pair.pair_id && s.side === side).map((s) => s.text);
        assert.deepEqual(row[`${side}_sentence_spans`]!.map((s) => pair[side].slice(s.char_start, s.char_end)), texts);
      }
      const expected = weights.filter((w) => w.pair_id === pair.pair_id);
      if (pair.image_id) assert.deepEqual(row.chosen_sentence_weights, expected.map((w) => w.weight));
      else assert.equal(row.chosen_sentence_weights ?? null, null, 'an unscored (text-only) pair has no weights');
    }
    assert.ok(rows.some((r) => (r.chosen_sentence_weights ?? []).some((w) => w !== null && w > 0 && w < 1)), 'weights vary');
  });
  // --layout plain: the same pairs with plain strings; both layouts are datasets `aspo ingest` reads back.
  const plain = path.join(dir, 'trl-plain');
  assert.equal(cli(['--db', db, '--format', 'trl', '--layout', 'plain', '--out', plain]).status, 0);
  const plainShards = await readShards(plain);
  assert.deepEqual(plainShards.features[0]!.prompt, { dtype: 'string', _type: 'Value' });
  assert.deepEqual(plainShards.rows.map((r) => [r.pair_id, r.prompt, r.chosen]),
    rows.map((r) => [r.pair_id, (r.prompt as { content: { text: string | null }[] }[])[0]!.content.at(-1)!.text, (r.chosen as { content: { text: string }[] }[])[0]!.content[0]!.text]));
  assert.match(cli(['--db', db, '--format', 'trl', '--layout', 'chat', '--out', path.join(dir, 'x')]).stderr, /--layout must be one of conversational, plain/);
  const ids = async (file: string) => readOnly(file, async (s) => s.all('SELECT pair_id, image_id FROM pairs ORDER BY 1'));
  for (const folder of [out, plain]) {
    const again = path.join(dir, `again-${path.basename(folder)}.duckdb`);
    await withStore(again, async (store) => {
      const summary = await ingest(store, readdirSync(folder).map((f) => path.join(folder, f)));
      assert.equal(summary.rejected, 0);
    });
    assert.deepEqual(await ids(again), await ids(db));
  }
});

test('TRL export with --policy adds the chosen sentences\' rewards of that policy', async () => {
  const { db, dir } = await built;
  const withRewards = path.join(dir, 'rewards.duckdb');
  // A copy of the store with rewards for two policies (as the rewards stage would write them).
  await withStore(withRewards, async (store) => {
    await store.run(`ATTACH '${db}' AS src (READ_ONLY)`);
    for (const table of ['pairs', 'images', 'sentences', 'sentence_scores']) await store.run(`INSERT INTO ${table} SELECT * FROM src.${table}`);
    await store.run('DETACH src');
    await store.run(`CREATE TABLE IF NOT EXISTS sentence_rewards (policy_model VARCHAR, ref_model VARCHAR, pair_id VARCHAR, side VARCHAR,
      idx INTEGER, n_tokens INTEGER, policy_logp_sum DOUBLE, ref_logp_sum DOUBLE, logratio_sum DOUBLE, weight DOUBLE, multiplier DOUBLE,
      ref_multiplier DOUBLE, reward DOUBLE, beta DOUBLE, alpha DOUBLE, scale DOUBLE, loss_config JSON, computed_at TIMESTAMP)`);
    await store.run(`INSERT INTO sentence_rewards BY NAME
      SELECT policy AS policy_model, 'ref@0' AS ref_model, pair_id, side, idx, 1 AS n_tokens, -1.0 AS policy_logp_sum, -1.0 AS ref_logp_sum, 0.0 AS logratio_sum,
             NULL AS weight, 1.0 AS multiplier, 1.0 AS ref_multiplier, CASE policy WHEN 'a@1' THEN idx + 0.5 ELSE -idx END AS reward,
             0.1 AS beta, 0.5 AS alpha, 1.0 AS scale, '{}' AS loss_config, now() AS computed_at
      FROM sentences, (VALUES ('a@1'), ('b@2')) v(policy)
      WHERE side = 'chosen' AND NOT (idx = 1 AND pair_id = (SELECT min(pair_id) FROM sentences WHERE idx = 1))`);
  });
  await readOnly(withRewards, async (store) => {
    await assert.rejects(exportTrl(store, { out: path.join(dir, 'nope'), policy: 'c@3' }), /no sentence_rewards for "c@3"; there are: a@1, b@2/);
    const out = path.join(dir, 'trl-rewards');
    await exportTrl(store, { out, policy: 'a@1' });
    const rows = await store.all<TrlRow>(`SELECT pair_id, chosen_sentence_rewards FROM read_parquet('${out}/*.parquet') ORDER BY pair_id`);
    const first = await store.scalar<string>('SELECT min(pair_id) FROM sentences WHERE idx = 1');
    for (const row of rows) {
      const n = Number(await store.scalar("SELECT count(*) FROM sentences WHERE pair_id = ? AND side = 'chosen'", [row.pair_id]));
      const expected = Array.from({ length: n }, (_, idx) => (row.pair_id === first && idx === 1 ? null : idx + 0.5));
      assert.deepEqual(row.chosen_sentence_rewards, expected);
    }
  });
});

test('aspo-reference export loads in the authors\' trainer: image_id, numbers for every sentence, min-max normalised per response', async () => {
  const { db, dir } = await built;
  const out = path.join(dir, 'reference');
  const summary = await readOnly(db, (store) => exportAspoReference(store, { out }));
  const records = JSON.parse(readFileSync(path.join(out, 'pairs.json'), 'utf8')) as Record<string, unknown>[];
  // The text-only pair is left out (the trainer opens an image for every element) and counted.
  assert.equal(summary.rows, 4);
  assert.deepEqual(summary.leftOut, { textOnly: 1, noSentences: 0, unscored: 0 });
  // The trainer's data_preprocess and __getitem__, with the image folder as its our_data_path.
  const samples = dataPreprocess(records, path.join(out, 'images'));
  await readOnly(db, async (store) => {
    const pairs = await store.all<{ pair_id: string; prompt: string; chosen: string; rejected: string; image_id: string }>(
      'SELECT * FROM pairs WHERE image_id IS NOT NULL ORDER BY pair_id');
    const sentences = await store.all<{ pair_id: string; side: string; text: string; similarity: number }>(
      'SELECT s.pair_id, s.side, s.text, sc.similarity FROM sentences s JOIN sentence_scores sc USING (pair_id, side, idx) ORDER BY s.pair_id, s.side, s.idx');
    assert.equal(records.length, pairs.length);
    for (const [i, record] of records.entries()) {
      const pair = pairs[i]!;
      assert.deepEqual(Object.keys(record), ['id', 'image_id', 'question', 'chosen', 'reject', 'chosen_split', 'reject_split', 'chosen_clip_score', 'reject_clip_score']);
      assert.deepEqual([record.id, record.question, record.chosen, record.reject], [pair.pair_id, pair.prompt, pair.chosen, pair.rejected]);
      assert.match(record.image_id as string, /^[0-9a-f]{64}\.(png|jpg)$/);
      assert.equal(sha256Hex(readFileSync(samples[i]!.image)), pair.image_id);
      const item = await getItem(samples[i]!);
      assert.deepEqual([item.width, item.height], [12, 10]);
      for (const [key, side] of [['chosen', 'chosen'], ['reject', 'rejected']] as const) {
        const own = sentences.filter((s) => s.pair_id === pair.pair_id && s.side === side);
        assert.deepEqual(item[key].sentences, own.map((s) => s.text));
        // scripts/4_normalize.py: (x - min) / (max - min + 1e-6) over the response's scores.
        const raw = own.map((s) => s.similarity);
        const lo = Math.min(...raw), hi = Math.max(...raw);
        const expected = raw.map((x) => (x - lo) / (hi - lo + 1e-6));
        item[key].scores.forEach((score, k) => assert.ok(Math.abs(score - expected[k]!) < 1e-9, `${key} ${k}: ${score} vs ${expected[k]}`));
        assert.ok(item[key].scores.every((score) => score >= 0 && score < 1));
      }
    }
    assert.ok(records.some((r) => (r.chosen_clip_score as number[]).some((x) => x > 0.5)), 'normalised scores spread over [0, 1)');
  });
  // Two pairs share the red image: three distinct images, each written once.
  assert.equal(readdirSync(path.join(out, 'images')).length, 3);

  // --scores raw: the stored similarities as they are; the CLI names what it left out.
  const rawOut = path.join(dir, 'reference-raw');
  const result = cli(['--db', db, '--format', 'aspo-reference', '--scores', 'raw', '--out', rawOut]);
  assert.equal(result.status, 0, result.stderr);
  assert.match(result.stderr, /4 rows .*left out: 1 text-only/);
  const raw = JSON.parse(readFileSync(path.join(rawOut, 'pairs.json'), 'utf8')) as Record<string, unknown>[];
  await readOnly(db, async (store) => {
    for (const record of raw) {
      const item = await getItem(dataPreprocess([record], path.join(rawOut, 'images'))[0]!);
      const stored = await store.all<{ similarity: number }>(
        "SELECT sc.similarity FROM sentences s JOIN sentence_scores sc USING (pair_id, side, idx) WHERE s.pair_id = ? AND s.side = 'chosen' ORDER BY s.idx", [record.id as string]);
      assert.deepEqual(item.chosen.scores, stored.map((s) => s.similarity));
    }
  });
  assert.equal(cli(['--db', db, '--format', 'aspo-reference', '--scores', 'softmax', '--out', path.join(dir, 'x')]).status, 2);
  assert.match(cli(['--db', db, '--format', 'trl', '--scores', 'raw', '--out', path.join(dir, 'x')]).stderr, /--scores does not apply to --format trl/);
});

test('aspo-reference leaves out a pair with an unscored sentence, which the trainer could not use', async () => {
  const { db, dir } = await built;
  const copy = path.join(tempDir(), 'unscored.duckdb');
  writeFileSync(copy, readFileSync(db));
  const victim = await withStore(copy, async (store) => {
    const pairId = await store.scalar<string>('SELECT min(pair_id) FROM pairs WHERE image_id IS NOT NULL');
    await store.run("DELETE FROM sentence_scores WHERE pair_id = ? AND side = 'rejected' AND idx = 0", [pairId]);
    return pairId;
  });
  const out = path.join(dir, 'reference-unscored');
  const summary = await readOnly(copy, (store) => exportAspoReference(store, { out }));
  assert.deepEqual(summary.leftOut, { textOnly: 1, noSentences: 0, unscored: 1 });
  const records = JSON.parse(readFileSync(path.join(out, 'pairs.json'), 'utf8')) as { id: string }[];
  assert.equal(records.length, 3);
  assert.ok(!records.some((r) => r.id === victim));
  // The reader fails where the trainer would: a null score, and the old layout without image_id.
  const sample = { ...records[0]!, reject_clip_score: [null] } as Record<string, unknown>;
  await assert.rejects(getItem(dataPreprocess([sample], path.join(out, 'images'))[0]!), /unsupported operand type/);
  const { image_id: _dropped, ...withoutImageId } = records[0] as unknown as Record<string, unknown>;
  assert.throws(() => dataPreprocess([withoutImageId], out), /KeyError: 'image_id'/);
});

test('refuses writing SQL, existing outputs without --force, and folders holding other files', async () => {
  const { db, dir } = await built;
  await readOnly(db, async (store) => {
    await assert.rejects(checkReadOnlySql(store.connection, 'DELETE FROM pairs'), /read-only query \(SELECT …\), got a DELETE statement/);
    await assert.rejects(checkReadOnlySql(store.connection, 'SELECT 1; SELECT 2'), /one query, got 2 statements/);
    await assert.rejects(checkReadOnlySql(store.connection, "COPY pairs TO '/tmp/x.csv'"), /got a COPY statement/);
    assert.equal(await checkReadOnlySql(store.connection, 'FROM pairs;'), 'FROM pairs');
    await assert.rejects(exportTable(store, { table: 'nope' }, { format: 'csv', out: path.join(dir, 'x.csv') }), /no table or view "nope" in the store; there are: .*pairs/);
    await assert.rejects(exportTable(store, { table: 'pairs' }, { format: 'parquet', out: path.join(dir, 'x'), partitionBy: ['colour'] }),
      /--partition-by: no column "colour"/);
  });
  const out = path.join(dir, 'once.csv');
  await readOnly(db, (store) => exportTable(store, { table: 'labels' }, { format: 'csv', out }));
  const again = cli(['--db', db, '--sql', 'SELECT 42 AS answer', '--format', 'csv', '--out', out]);
  assert.equal(again.status, 1);
  assert.match(again.stderr, /once\.csv exists; pass --force to overwrite it/);
  assert.doesNotMatch(again.stderr, /Usage:/, 'an output in the way is not a usage error');
  await readOnly(db, async (store) => {
    await exportTable(store, { sql: 'SELECT 42 AS answer' }, { format: 'csv', out, force: true });
    assert.equal(readFileSync(out, 'utf8'), 'answer\n42\n');
      // A folder that holds something an export did not write is never replaced.
    const folder = path.join(dir, 'mine');
    mkdirSync(folder);
    writeFileSync(path.join(folder, 'notes.txt'), 'keep me');
    await assert.rejects(exportTrl(store, { out: folder, force: true }), /refusing to replace .*notes\.txt/);
    assert.ok(existsSync(path.join(folder, 'notes.txt')));
    const trl = path.join(dir, 'trl-twice');
    await exportTrl(store, { out: trl, rowsPerShard: 1 });
    assert.equal(readdirSync(trl).length, 5);
    await assert.rejects(exportTrl(store, { out: trl }), /is not empty; pass --force/);
    await exportTrl(store, { out: trl, force: true });
    assert.deepEqual(readdirSync(trl), [shardName(0, 1)], 'stale shards are gone');
    await assert.rejects(exportTrl(store, { out: trl, force: true, alpha: 2 }), /--alpha must be between 0 and 1, got 2/);
    // A query that fails part-way leaves no partial output; an empty result is a valid empty file.
    for (const format of ['arrow', 'parquet', 'jsonl'] as const) {
      const failing = path.join(dir, `failing.${format}`);
      await assert.rejects(exportTable(store, { sql: "SELECT CASE WHEN i < 3000 THEN i ELSE error('boom') END AS i FROM range(5000) t(i)" }, { format, out: failing }), /boom/);
      assert.equal(existsSync(failing), false, format);
    }
    const empty = path.join(dir, 'empty.arrow');
    assert.equal((await exportTable(store, { sql: 'SELECT pair_id, idx FROM sentences WHERE false' }, { format: 'arrow', out: empty })).rows, 0);
    const table = tableFromIPC(readFileSync(empty));
    assert.deepEqual([table.numRows, table.schema.fields.map((f) => `${f.name}:${f.type}`)], [0, ['pair_id:Utf8', 'idx:Int32']]);
  });
  assert.match(cli(['--db', db, '--format', 'parquet', '--out', out]).stderr, /needs --table NAME or --sql/);
});
