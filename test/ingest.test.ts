import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { tableToIPC, vectorFromArray, Binary, Utf8, Table } from 'apache-arrow';
import { ingest, pairId, type IngestOptions } from '../src/ingest/ingest.js';
import { removeSpans } from '../src/ingest/rows.js';
import { sha256Hex } from '../src/util/hash.js';
import { Store, withStore } from '../src/store/store.js';
import { CLI, sharedPath, tempDir } from './support.js';

const png = (r: number, g: number, b: number, width = 8, height = 8) =>
  sharp({ create: { width, height, channels: 3, background: { r, g, b } } }).png().toBuffer();

const jsonl = (rows: unknown[]) => rows.map((r) => (typeof r === 'string' ? r : JSON.stringify(r))).join('\n') + '\n';

async function freshStore(dir: string, name = 'store.duckdb'): Promise<Store> {
  return Store.open(path.join(dir, name));
}

async function ingestRows(rows: unknown[], options: IngestOptions = {}, file = 'data.jsonl') {
  const dir = tempDir();
  mkdirSync(path.join(dir, 'img'));
  writeFileSync(path.join(dir, 'img', 'red.png'), await png(255, 0, 0));
  writeFileSync(path.join(dir, 'img', 'blue.png'), await png(0, 0, 255));
  const dataset = path.join(dir, file);
  writeFileSync(dataset, file.endsWith('.json') ? JSON.stringify(rows) : jsonl(rows));
  const store = await freshStore(dir);
  const summary = await ingest(store, [dataset], options);
  return { dir, dataset, store, summary };
}

test('TRL rows: plain strings and conversational messages, with image paths and bytes', async () => {
  const red = await png(255, 0, 0);
  const { store, summary } = await ingestRows([
    { prompt: '<image>\nWhat colour is the square?', chosen: 'It is red.', rejected: 'It is green.', image: 'img/red.png' },
    {
      prompt: [{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: 'Describe the image.' }] }],
      chosen: [{ role: 'assistant', content: [{ type: 'text', text: 'A blue square.' }] }],
      rejected: [{ role: 'assistant', content: 'A yellow circle.' }],
      images: [{ bytes: red.toString('base64'), path: 'red.png' }],
    },
    { prompt: 'Text only?', chosen: 'Yes.', rejected: 'No.' },
    { prompt: 'Inline image?', chosen: 'Red.', rejected: 'Blue.', image: `data:image/png;base64,${red.toString('base64')}` },
  ]);
  assert.deepEqual({ read: summary.read, ingested: summary.ingested, rejected: summary.rejected }, { read: 4, ingested: 4, rejected: 0 });
  const rows = await store.all<{ prompt: string; chosen: string; rejected: string; image_id: string | null; pair_id: string }>(
    'SELECT pair_id, prompt, chosen, rejected, image_id FROM pairs ORDER BY source_row');
  assert.equal(rows[0]!.prompt, 'What colour is the square?');
  assert.equal(rows[1]!.prompt, 'Describe the image.');
  assert.equal(rows[1]!.chosen, 'A blue square.');
  assert.equal(rows[1]!.rejected, 'A yellow circle.');
  assert.equal(rows[2]!.image_id, null);
  assert.equal(rows[3]!.image_id, sha256Hex(red));
  // Both image rows hold the same red PNG bytes: one stored image, identified by the sha256 of its bytes.
  assert.equal(rows[0]!.image_id, sha256Hex(red));
  assert.equal(rows[1]!.image_id, sha256Hex(red));
  assert.equal(await store.scalar('SELECT count(*) FROM images'), 1);
  const image = await store.one<{ width: number; height: number; format: string }>('SELECT width, height, format FROM images');
  assert.deepEqual(image, { width: 8, height: 8, format: 'png' });
  assert.equal(rows[0]!.pair_id, pairId('What colour is the square?', 'It is red.', 'It is green.', sha256Hex(red)));
  // The documented encoding, computed independently: "<UTF-16 length>:<text>" per part, sha256, first 32 hex digits.
  const encoded = ['What colour is the square?', 'It is red.', 'It is green.', sha256Hex(red)].map((p) => `${p.length}:${p}`).join('');
  assert.equal(rows[0]!.pair_id, createHash('sha256').update(encoded, 'utf8').digest('hex').slice(0, 32));
  assert.equal(pairId('é🙂', 'a', 'b', null), createHash('sha256').update('3:é🙂1:a1:b0:', 'utf8').digest('hex').slice(0, 32));
  store.close();
});

test('JSON arrays stream element by element, including strings holding brackets and escapes', async () => {
  const { store, summary } = await ingestRows([
    { prompt: 'a [tricky] {prompt} "quoted" \\ back', chosen: 'x ] y', rejected: 'z } w' },
    { prompt: 'second', chosen: 'c', rejected: 'r' },
  ], {}, 'data.json');
  assert.equal(summary.ingested, 2);
  assert.equal(await store.scalar("SELECT prompt FROM pairs WHERE source_row = 0"), 'a [tricky] {prompt} "quoted" \\ back');
  store.close();
});

test('RLAIF-V, RLHF-V (JSON in text), LLaVA/POVID, HA-DPO lists and VLFeedback ratings', async () => {
  const blue = await png(0, 0, 255);
  const { store, summary } = await ingestRows([
    { question: 'Is it red?', chosen: 'Yes, it is red.', rejected: 'No.', image: 'img/red.png', ds_name: 'rlaif' },
    { text: JSON.stringify({ question: 'Colour?', chosen: 'Blue.', rejected: 'Red.' }), image: { bytes: blue.toString('base64'), path: 'b.png' } },
    {
      image: 'img/blue.png',
      conversations: [{ from: 'human', value: '<image>\nWhat is shown?' }, { from: 'gpt', value: 'A blue square.' }],
      rejected_conversations: [{ from: 'human', value: '<image>\nWhat is shown?' }, { from: 'gpt', value: 'A red dog.' }],
    },
    { question: 'Describe.', chosen: ['C1.', 'C2.', 'C3.'], rejected: ['R1.', 'R2.'], image: 'img/red.png' },
    { prompt: 'Rate me', completions: [{ response: 'good', rating: 5 }, { response: 'bad', rating: 1 }, { response: 'ok', rating: 3 }] },
    { prompt: 'Tie', completions: [{ response: 'a', annotations: { Helpfulness: { Rating: '4' } } }, { response: 'b', annotations: { Helpfulness: { Rating: 4 } } }] },
  ]);
  assert.equal(summary.rejected, 0);
  assert.equal(summary.ties, 1);
  assert.equal(summary.ingested, 1 + 1 + 1 + 3 + 1);
  const rlhfv = await store.one<{ prompt: string; chosen: string; image_id: string }>("SELECT prompt, chosen, image_id FROM pairs WHERE source_row = 1");
  assert.deepEqual(rlhfv, { prompt: 'Colour?', chosen: 'Blue.', image_id: sha256Hex(blue) });
  const povid = await store.one<{ prompt: string; chosen: string; rejected: string }>('SELECT prompt, chosen, rejected FROM pairs WHERE source_row = 2');
  assert.deepEqual(povid, { prompt: 'What is shown?', chosen: 'A blue square.', rejected: 'A red dog.' });
  // HA-DPO pairing rule: i-th with i-th, the longer list wrapping around the shorter one.
  const hadpo = await store.all<{ chosen: string; rejected: string }>('SELECT chosen, rejected FROM pairs WHERE source_row = 3 ORDER BY chosen');
  assert.deepEqual(hadpo, [{ chosen: 'C1.', rejected: 'R1.' }, { chosen: 'C2.', rejected: 'R2.' }, { chosen: 'C3.', rejected: 'R1.' }]);
  const rated = await store.one<{ chosen: string; rejected: string; meta: string }>('SELECT chosen, rejected, meta FROM pairs WHERE source_row = 4');
  assert.equal(rated!.chosen, 'good');
  assert.equal(rated!.rejected, 'bad');
  assert.equal(JSON.parse(rated!.meta).chosen_rating, 5);
  const meta = await store.scalar<string>('SELECT meta FROM pairs WHERE source_row = 0');
  assert.equal(JSON.parse(meta).ds_name, 'rlaif');
  store.close();
});

test('labelled spans go to labels; an M-HalDetect response becomes a span-removal pair', async () => {
  const response = 'A cat sits. Two dogs run. The sky is blue.';
  const { store, summary } = await ingestRows([
    { prompt: 'p', chosen: 'Good one.', rejected: 'Bad one. Worse.', rejected_spans: [{ start: 0, end: 8, label: 'hallucinated', text: 'Bad one.' }] },
    { prompt: 'Describe', response, inaccurate_spans: [{ start: 12, end: 25, text: 'Two dogs run.', label: 'INACCURATE' }] },
    { prompt: 'Describe', response: 'Nothing wrong.', inaccurate_spans: [] },
    { prompt: 'p2', chosen: 'x', rejected: 'y', chosen_spans: [{ start: 0, end: 5, label: 'true' }] },
    { prompt: 'p3', chosen: 'abc', rejected: 'y', chosen_spans: [{ start: 0, end: 2, label: 'true', text: 'xy' }] },
  ]);
  assert.equal(summary.ingested, 2);
  assert.equal(summary.rejected, 3);
  const labels = await store.all('SELECT side, char_start, char_end, label FROM labels ORDER BY label');
  assert.deepEqual(labels, [
    { side: 'rejected', char_start: 12, char_end: 25, label: 'INACCURATE' },
    { side: 'rejected', char_start: 0, char_end: 8, label: 'hallucinated' },
  ]);
  const mhal = await store.one<{ chosen: string; rejected: string }>('SELECT chosen, rejected FROM pairs WHERE source_row = 1');
  assert.deepEqual(mhal, { chosen: 'A cat sits. The sky is blue.', rejected: response });
  const reasons = await store.all<{ source_row: number; field: string; reason: string }>('SELECT source_row, field, reason FROM rejects ORDER BY source_row');
  assert.equal(reasons[0]!.field, 'inaccurate_spans');
  assert.match(reasons[1]!.reason, /outside the chosen response/);
  assert.match(reasons[2]!.reason, /does not match the response/);
  store.close();
});

test('removeSpans folds the whitespace a cut leaves behind', () => {
  assert.equal(removeSpans('One. Two. Three.', [{ start: 5, end: 9 }]), 'One. Three.');
  assert.equal(removeSpans('Keep this, not that.', [{ start: 9, end: 19 }]), 'Keep this.');
});

test('every kind of bad row is rejected with its row and field, and the good rows are all kept', async () => {
  const dir = tempDir();
  mkdirSync(path.join(dir, 'img'));
  writeFileSync(path.join(dir, 'img', 'ok.png'), await png(10, 200, 10));
  writeFileSync(path.join(dir, 'img', 'corrupt.png'), (await png(1, 2, 3, 64, 64)).subarray(0, 60));
  writeFileSync(path.join(dir, 'img', 'huge.png'), await png(1, 2, 3, 2000, 2000));
  const outside = tempDir();
  writeFileSync(path.join(outside, 'secret.png'), await png(9, 9, 9));
  symlinkSync(path.join(outside, 'secret.png'), path.join(dir, 'img', 'link.png'));
  const good = (i: number) => ({ prompt: `p${i}`, chosen: 'c', rejected: 'r', image: 'img/ok.png' });
  const rows: unknown[] = [
    good(0),
    '{"prompt": "broken json",',
    { chosen: 'c', rejected: 'r' },
    { prompt: 'p', chosen: '   ', rejected: 'r' },
    { prompt: 'p', chosen: 42, rejected: 'r' },
    { prompt: 'p', chosen: 'c', rejected: 'r', image: 'img/corrupt.png' },
    { prompt: 'p', chosen: 'c', rejected: 'r', image: 'img/nope.png' },
    { prompt: 'p', chosen: 'c', rejected: 'r', image: 'https://example.com/x.png' },
    { prompt: 'p', chosen: 'c', rejected: 'r', image: '../../etc/passwd' },
    { prompt: 'p', chosen: 'c', rejected: 'r', image: path.join(outside, 'secret.png') },
    { prompt: 'p', chosen: 'c', rejected: 'r', image: 'img/link.png' },
    { prompt: 'p', chosen: 'c', rejected: 'r', image: 'img/huge.png' },
    [1, 2, 3],
    good(1),
  ];
  const dataset = path.join(dir, 'bad.jsonl');
  writeFileSync(dataset, jsonl(rows));
  const store = await freshStore(dir);
  const summary = await ingest(store, [dataset], { maxPixels: 1_000_000 });
  assert.equal(summary.read, rows.length);
  assert.equal(summary.ingested, 2);
  assert.equal(summary.rejected, rows.length - 2);
  const rejects = await store.all<{ source_row: number; field: string | null; reason: string; raw: string }>(
    'SELECT source_row, field, reason, raw FROM rejects ORDER BY source_row');
  const by = new Map(rejects.map((r) => [r.source_row, r]));
  assert.match(by.get(1)!.reason, /invalid JSON/);
  assert.equal(by.get(1)!.raw, '{"prompt": "broken json",');
  assert.deepEqual([by.get(2)!.field, by.get(3)!.field, by.get(4)!.field], ['prompt', 'chosen', 'chosen']);
  assert.match(by.get(2)!.reason, /"prompt" is missing/);
  assert.match(by.get(3)!.reason, /"chosen" is empty/);
  assert.match(by.get(4)!.reason, /"chosen" is a number, expected a string/);
  assert.match(by.get(5)!.reason, /cannot be decoded/);
  assert.match(by.get(6)!.reason, /not found/);
  assert.match(by.get(7)!.reason, /URL.*no network/);
  for (const row of [8, 9, 10]) assert.match(by.get(row)!.reason, /outside the image root|not found/, `row ${row}: ${by.get(row)!.reason}`);
  assert.match(by.get(10)!.reason, /outside the image root/);
  assert.match(by.get(11)!.reason, /more than 1000000 pixels/);
  assert.match(by.get(12)!.reason, /expected a JSON object/);
  for (const row of [5, 6, 7, 8, 9, 10, 11]) assert.equal(by.get(row)!.field, 'image');
  store.close();
});

test('symlinks: a linked folder leading out is refused, links that stay inside are followed; damage near the end of an image is caught', async () => {
  const dir = tempDir();
  mkdirSync(path.join(dir, 'img', 'sub'), { recursive: true });
  const inside = await png(10, 20, 30, 40, 30);
  writeFileSync(path.join(dir, 'img', 'sub', 'real.png'), inside);
  symlinkSync(path.join(dir, 'img', 'sub', 'real.png'), path.join(dir, 'img', 'alias.png'));
  symlinkSync(path.join(dir, 'img', 'sub'), path.join(dir, 'img', 'linked-sub'));
  const outside = tempDir();
  writeFileSync(path.join(outside, 'secret.png'), await png(9, 9, 9));
  symlinkSync(outside, path.join(dir, 'img', 'out'));
  // A noisy JPEG whose last tenth is cut off: the header and most scanlines are intact.
  const noise = Buffer.from(Array.from({ length: 256 * 256 * 3 }, (_, i) => (i * 7919) % 251));
  const jpeg = await sharp(noise, { raw: { width: 256, height: 256, channels: 3 } }).jpeg({ quality: 95 }).toBuffer();
  writeFileSync(path.join(dir, 'img', 'cut.jpg'), jpeg.subarray(0, Math.floor(jpeg.length * 0.9)));
  const rows = ['img/alias.png', 'img/linked-sub/real.png', 'img/out/secret.png', 'img/out/absent.png', 'img/cut.jpg']
    .map((image, i) => ({ prompt: `p${i}`, chosen: 'c', rejected: 'r', image }));
  const dataset = path.join(dir, 'links.jsonl');
  writeFileSync(dataset, jsonl(rows));
  const store = await freshStore(dir);
  const summary = await ingest(store, [dataset]);
  assert.deepEqual([summary.ingested, summary.rejected, summary.newImages], [2, 3, 1]);
  const kept = await store.all<{ source_row: number; image_id: string }>('SELECT source_row, image_id FROM pairs ORDER BY source_row');
  assert.deepEqual(kept, [{ source_row: 0, image_id: sha256Hex(inside) }, { source_row: 1, image_id: sha256Hex(inside) }]);
  const rejects = await store.all<{ source_row: number; reason: string }>('SELECT source_row, reason FROM rejects ORDER BY source_row');
  assert.deepEqual(rejects.map((r) => r.source_row), [2, 3, 4]);
  assert.match(rejects[0]!.reason, /img\/out\/secret\.png resolves outside the image root/);
  assert.match(rejects[1]!.reason, /img\/out\/absent\.png resolves outside the image root/);
  assert.match(rejects[2]!.reason, /img\/cut\.jpg cannot be decoded/);
  store.close();
});

test('an --images folder that does not exist stops the run with what to pass instead', async () => {
  const dir = tempDir();
  const dataset = path.join(dir, 'data.jsonl');
  writeFileSync(dataset, jsonl([{ prompt: 'p', chosen: 'c', rejected: 'r', image: 'a.png' }]));
  const store = await freshStore(dir);
  await assert.rejects(ingest(store, [dataset], { images: path.join(dir, 'nope') }),
    new RegExp(`image folder ${path.join(dir, 'nope').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} does not exist; pass --images DIR`));
  store.close();
});

test('--missing-images drop keeps the pair text-only, and two pairs differing only in a missing image stay two', async () => {
  const { store, summary } = await ingestRows([
    { prompt: 'p', chosen: 'c', rejected: 'r', image: 'gone/a.jpg' },
    { prompt: 'p', chosen: 'c', rejected: 'r', image: 'gone/b.jpg' },
  ], { missingImages: 'drop' });
  assert.equal(summary.ingested, 2);
  assert.equal(summary.imagesDropped, 2);
  assert.match(await store.scalar<string>("SELECT meta->>'image_dropped' FROM pairs LIMIT 1"), /not found/);
  store.close();
});

test('--max-side downscales stored images but keeps the original hash as image_id', async () => {
  const big = await png(0, 128, 255, 300, 120);
  const { store } = await ingestRows([{ prompt: 'p', chosen: 'c', rejected: 'r', image: { bytes: big.toString('base64') } }], { maxSide: 100 });
  const image = await store.one<{ image_id: string; sha256: string; width: number; height: number; orig_width: number }>(
    'SELECT image_id, sha256, width, height, orig_width FROM images');
  assert.equal(image!.image_id, sha256Hex(big));
  assert.notEqual(image!.sha256, image!.image_id);
  assert.deepEqual([image!.width, image!.height, image!.orig_width], [100, 40, 300]);
  const stored = await store.scalar<Uint8Array>('SELECT bytes FROM images');
  assert.deepEqual(await sharp(stored).metadata().then((m) => [m.width, m.height]), [100, 40]);
  store.close();
});

test('Parquet with {bytes, path} image structs, and Arrow IPC with a binary column', async () => {
  const dir = tempDir();
  const red = await png(255, 0, 0);
  const parquet = path.join(dir, 'pairs.parquet');
  await withStore(path.join(dir, 'scratch.duckdb'), async (scratch) => {
    await scratch.run(`COPY (SELECT 'q' || i AS prompt, 'good ' || i AS chosen, 'bad ' || i AS rejected,
      {'bytes': from_hex(?), 'path': 'red.png'} AS image FROM range(3) t(i)) TO '${parquet}' (FORMAT parquet)`, [red.toString('hex')]);
  });
  const arrow = path.join(dir, 'pairs.arrow');
  const table = new Table({
    prompt: vectorFromArray(['a1', 'a2'], new Utf8()),
    chosen: vectorFromArray(['yes', 'yes!'], new Utf8()),
    rejected: vectorFromArray(['no', 'no!'], new Utf8()),
    image: vectorFromArray([red, red], new Binary()),
  });
  writeFileSync(arrow, tableToIPC(table, 'file'));
  const store = await freshStore(dir);
  const summary = await ingest(store, [parquet, arrow]);
  assert.deepEqual([summary.ingested, summary.rejected, summary.newImages], [5, 0, 1]);
  const rows = await store.all<{ format: string; n: number; img: string }>('SELECT format, count(*) AS n, any_value(image_id) AS img FROM pairs GROUP BY format ORDER BY format');
  assert.deepEqual(rows, [{ format: 'arrow', n: 2, img: sha256Hex(red) }, { format: 'parquet', n: 3, img: sha256Hex(red) }]);
  store.close();
});

test('hundreds of image rows (several decoding chunks): every good row kept once, in file order, each bad one rejected', async () => {
  const dir = tempDir();
  mkdirSync(path.join(dir, 'img'));
  const distinct = 40;
  for (let i = 0; i < distinct; i++) writeFileSync(path.join(dir, 'img', `${i}.png`), await png(i * 6, 255 - i * 6, (i * 37) % 256, 8 + i, 8));
  writeFileSync(path.join(dir, 'img', 'broken.png'), (await png(1, 2, 3)).subarray(0, 40));
  // 300 rows: images reused across chunk boundaries, a missing and a truncated image every 97 and 131 rows.
  const rows = Array.from({ length: 300 }, (_, i) => ({
    prompt: `q${i}`, chosen: 'c', rejected: 'r',
    image: i % 97 === 50 ? 'img/missing.png' : i % 131 === 70 ? 'img/broken.png' : `img/${i % distinct}.png`,
  }));
  const bad = rows.flatMap((r, i) => (r.image.endsWith('missing.png') || r.image.endsWith('broken.png') ? [i] : []));
  const dataset = path.join(dir, 'data.jsonl');
  writeFileSync(dataset, jsonl(rows));
  const store = await freshStore(dir);
  const summary = await ingest(store, [dataset], { concurrency: 3 });
  assert.deepEqual([summary.read, summary.ingested, summary.rejected, summary.newImages], [300, 300 - bad.length, bad.length, distinct]);
  const kept = await store.all<{ source_row: number; prompt: string; image_id: string }>('SELECT source_row, prompt, image_id FROM pairs ORDER BY rowid');
  const expectedRows = rows.flatMap((_, i) => (bad.includes(i) ? [] : [i]));
  assert.deepEqual(kept.map((k) => k.source_row), expectedRows, 'pairs are stored in file order');
  const { readFileSync } = await import('node:fs');
  for (const k of kept) assert.equal(k.image_id, sha256Hex(readFileSync(path.join(dir, rows[Number(k.prompt.slice(1))]!.image))));
  const rejected = await store.all<{ source_row: number; reason: string }>('SELECT source_row, reason FROM rejects ORDER BY source_row');
  assert.deepEqual(rejected.map((r) => r.source_row), bad);
  for (const r of rejected) assert.match(r.reason, rows[r.source_row]!.image.endsWith('missing.png') ? /not found/ : /cannot be decoded/);
  store.close();
});

test('re-running an ingest adds nothing', async () => {
  const { store, dataset, summary } = await ingestRows([
    { prompt: 'p1', chosen: 'c', rejected: 'r', image: 'img/red.png' },
    { prompt: 'p2', chosen: 'c', rejected: 'r', image: 'img/blue.png' },
    { prompt: 'p2', chosen: 'c', rejected: 'r', image: 'img/blue.png' },
    'not json',
  ]);
  assert.deepEqual([summary.ingested, summary.duplicates, summary.rejected], [2, 1, 1]);
  const again = await ingest(store, [dataset]);
  assert.deepEqual([again.ingested, again.duplicates, again.rejected, again.newImages], [0, 3, 1, 0]);
  const counts = await store.one('SELECT (SELECT count(*) FROM pairs) AS pairs, (SELECT count(*) FROM images) AS images, (SELECT count(*) FROM rejects) AS rejects');
  assert.deepEqual(counts, { pairs: 2, images: 2, rejects: 1 });
  store.close();
});

test('a run killed with SIGKILL and re-run ends with exactly the rows of one clean run', async () => {
  const dir = tempDir();
  const n = 80_000;
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    // The `n` field (kept in meta) sends every row through the JavaScript path, which commits as it goes; the fast
    // path's own kill test is in ingest-fast.test.ts.
    lines.push(i % 997 === 5 ? '{oops' : JSON.stringify({ prompt: `Question ${i}?`, chosen: `Answer ${i}. It is right.`, rejected: `Answer ${i + 1}. It is wrong.`, n: i }));
  }
  const dataset = path.join(dir, 'big.jsonl');
  writeFileSync(dataset, lines.join('\n') + '\n');
  const killedDb = path.join(dir, 'killed.duckdb');
  const child = spawn(process.execPath, [CLI, 'ingest', dataset, '--db', killedDb, '--batch-size', '500', '--commit-rows', '2000'], { stdio: 'ignore' });
  // Kill once the write-ahead log holds a few committed batches (the first flush may still be in progress), i.e. mid-run.
  const wal = `${killedDb}.wal`;
  for (let waited = 0; waited < 30_000 && (!existsSync(wal) || statSync(wal).size < 3_000_000); waited += 10) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  child.kill('SIGKILL');
  await new Promise((resolve) => child.once('exit', resolve));
  // The kill must land mid-run for this test to mean anything: some batches committed, not all.
  const partial = await withStore(killedDb, (s) => s.scalar<number>('SELECT count(*) FROM pairs'));
  assert.ok(partial > 0 && partial < n - 100, `killed run had committed ${partial} of ${n} rows; adjust the timing`);
  const resumed = spawnSync(process.execPath, [CLI, 'ingest', dataset, '--db', killedDb], { encoding: 'utf8' });
  assert.equal(resumed.status, 0, resumed.stderr);
  const cleanDb = path.join(dir, 'clean.duckdb');
  const clean = spawnSync(process.execPath, [CLI, 'ingest', dataset, '--db', cleanDb], { encoding: 'utf8' });
  assert.equal(clean.status, 0, clean.stderr);
  const snapshot = async (db: string) => withStore(db, (s) => s.one(
    `SELECT (SELECT count(*) FROM pairs) AS pairs, (SELECT count(DISTINCT pair_id) FROM pairs) AS distinct_pairs,
            (SELECT sum(hash(pair_id, source_row)) FROM pairs)::VARCHAR AS fingerprint,
            (SELECT count(*) FROM rejects) AS rejects`));
  const a = await snapshot(killedDb);
  const b = await snapshot(cleanDb);
  assert.deepEqual(a, b);
  assert.equal((b as { rejects: number }).rejects, Math.ceil((n - 5) / 997));
  assert.equal((b as { pairs: number }).pairs, n - Math.ceil((n - 5) / 997));
});

test('aspo ingest --strict fails on rejected rows and prints a summary line', async () => {
  const dir = tempDir();
  const dataset = path.join(dir, 'x.jsonl');
  writeFileSync(dataset, jsonl([{ prompt: 'p', chosen: 'c', rejected: 'r' }, { prompt: 'p' }]));
  const result = spawnSync(process.execPath, [CLI, 'ingest', dataset, '--db', path.join(dir, 's.duckdb'), '--strict'], { encoding: 'utf8' });
  assert.equal(result.status, 3);
  assert.match(result.stderr, /read 2, ingested 1, duplicates 0, rejected 1/);
  assert.equal(result.stdout, '');
  const query = spawnSync(process.execPath, [CLI, 'query', "SELECT field, reason FROM rejects", '--db', path.join(dir, 's.duckdb'), '--format', 'json'], { encoding: 'utf8' });
  assert.equal(JSON.parse(query.stdout.trim()).field, 'chosen');
  for (const [target, message] of [[dir, /not a file/], [path.join(dir, 'nope.jsonl'), /no such file/]] as const) {
    const bad = spawnSync(process.execPath, [CLI, 'ingest', target, '--db', path.join(dir, 's.duckdb')], { encoding: 'utf8' });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, message);
  }
});

test('real data: the 500 RLHF-V pairs with annotator spans and the M-HalDetect subset', { skip: !sharedPath('data', 'mhalo', 'derived') && 'shared/data/mhalo absent' }, async () => {
  const derived = sharedPath('data', 'mhalo', 'derived')!;
  const dir = tempDir();
  const store = await freshStore(dir);
  const rlhfv = await ingest(store, [path.join(derived, 'rlhfv_pairs_spans.jsonl')], { missingImages: 'drop' });
  assert.equal(rlhfv.read, 500);
  assert.equal(rlhfv.rejected, 0);
  assert.equal(rlhfv.ingested + rlhfv.duplicates, 500);
  // Every annotator span is kept and slices the rejected answer at the stated offsets.
  const spans = await store.scalar<number>('SELECT count(*) FROM labels');
  assert.ok(spans > 2000, `labels: ${spans}`);
  const withImages = await ingest(store, [path.join(derived, 'rlhfv_pairs_with_local_images.jsonl')],
    { imageField: 'local_image', images: sharedPath('data')! });
  assert.deepEqual([withImages.ingested, withImages.newImages], [2, 2]);
  const mhal = await ingest(store, [path.join(derived, 'mhaldetect_val_subset_spans.jsonl')], { missingImages: 'drop' });
  assert.equal(mhal.rejected, 50); // the clean responses: no span, so no preference
  assert.equal(mhal.ingested + mhal.duplicates, 450);
  store.close();
});
