import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { synthesize } from '../src/synth/synthesize.js';
import { ingest } from '../src/ingest/ingest.js';
import { segmentStage } from '../src/segment/stage.js';
import { Store, withStore } from '../src/store/store.js';
import { initBackend, tf } from '../src/model/backend.js';
import { Tokenizer } from '../src/model/tokenizer.js';
import { DEFAULT_MODEL_CONFIG, initialValues, textContext, validateModelConfig, type ModelConfig } from '../src/model/model.js';
import { saveCheckpoint, loadModel, type LoadedModel } from '../src/model/checkpoint.js';
import { loadImagePixels, stackImages } from '../src/model/images.js';
import { openShardSet } from '../src/shard/read.js';
import { splitByGroup, writeShards, type ShardOptions } from '../src/shard/stage.js';
import type { ShardPair, ShardSet } from '../src/shard/types.js';
import { command } from '../src/cli/commands/shard.js';
import { UsageError } from '../src/cli/command.js';
import { CLI, tempDir } from './support.js';

const TEXT_ONLY = { pair_id: 'text-only-pair', prompt: 'Describe the scene.\n', chosen: 'A red circle is left. A cat sleeps.', rejected: 'A blue square.' };

let db: string;
let checkpoint: string;
let ref: LoadedModel;

before(async () => {
  await initBackend('auto');
  const data = tempDir();
  await synthesize({ out: data, seed: 5, images: 16, evalImages: 2, sftPerImage: 1, pairsPerImage: 2, maxSentences: 4 });
  db = path.join(tempDir(), 'shard.duckdb');
  const lines = readFileSync(path.join(data, 'pairs.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { prompt: string; chosen: string; rejected: string });
  await withStore(db, async (store) => {
    await ingest(store, [path.join(data, 'pairs.jsonl')]);
    await store.run(`INSERT INTO pairs (pair_id, source, source_row, format, prompt, chosen, rejected) VALUES ($1, 'manual', 0, 'jsonl', $2, $3, $4)`,
      [TEXT_ONLY.pair_id, TEXT_ONLY.prompt, TEXT_ONLY.chosen, TEXT_ONLY.rejected]);
    await segmentStage(store);
    // A similarity for every second chosen sentence, so some are null.
    await store.run(`INSERT INTO sentence_scores (pair_id, side, idx, similarity, similarity_model)
      SELECT pair_id, side, idx, hash(pair_id || idx) % 1000 / 1000.0, 'clip-test' FROM sentences WHERE side = 'chosen' AND idx % 2 = 0`);
  });
  // A tiny untrained model whose tokenizer covers the world's words: 16 image tokens, 80 text positions.
  const tokenizer = Tokenizer.build([...lines, TEXT_ONLY].flatMap((l) => [l.prompt, l.chosen, l.rejected]), { vocabSize: 300 });
  const config: ModelConfig = validateModelConfig({ ...DEFAULT_MODEL_CONFIG, vocabSize: tokenizer.vocabSize, width: 16, layers: 1, heads: 2, mlpRatio: 2, context: 16 + 80 });
  checkpoint = path.join(tempDir(), 'tiny');
  await saveCheckpoint(checkpoint, { config, tokenizer, weights: initialValues(config, 7) });
  ref = await loadModel(checkpoint);
});

after(() => ref?.model.dispose());

async function shard(options: Partial<ShardOptions> & { out: string }): ReturnType<typeof writeShards> {
  return withStore(db, (store) => writeShards(store, { tokenizer: checkpoint, ...options }));
}

async function allPairs(set: ShardSet): Promise<{ train: ShardPair[]; eval: ShardPair[] }> {
  const read = async (split: 'train' | 'eval') => {
    const out: ShardPair[] = [];
    for await (const pair of set.pairs(split)) out.push(pair);
    return out;
  };
  return { train: await read('train'), eval: await read('eval') };
}

interface StoredPair { pair_id: string; prompt: string; chosen: string; rejected: string; image_id: string | null; source: string; source_row: number }

async function storedPairs(store: Store): Promise<Map<string, StoredPair>> {
  const rows = await store.all<StoredPair>('SELECT pair_id, prompt, chosen, rejected, image_id, source, source_row FROM pairs');
  return new Map(rows.map((r) => [r.pair_id, r]));
}

/** Independent re-derivation: prompt tokens end at or before the prompt's end; a token's sentence holds its first non-space character. */
function expectedSide(prompt: string, response: string, sentences: Array<{ start: number; end: number; idx: number }>) {
  const { ids, offsets } = ref.tokenizer.encode(prompt + response);
  const p = offsets.filter(([, end]) => end <= prompt.length).length;
  const sentenceIds = offsets.slice(p).map(([start, end]) => {
    const text = (prompt + response).slice(start, end);
    const lead = text.length - text.trimStart().length;
    if (lead === text.length) return -1;
    const at = start + lead - prompt.length;
    return sentences.find((s) => s.start <= at && at < s.end)?.idx ?? -1;
  });
  return { promptIds: ids.slice(0, p), responseIds: ids.slice(p), sentenceIds };
}

test('read-back pairs equal an independent recomputation from the store; images are the stored bytes', async () => {
  const out = tempDir();
  const summary = await shard({ out, pairsPerShard: 8, similarityModel: 'clip-test' });
  const set = await openShardSet(out);
  await set.verify();
  const { train, eval: held } = await allPairs(set);
  await withStore(db, async (store) => {
    const stored = await storedPairs(store);
    assert.equal(train.length + held.length, stored.size, 'every pair fits the default max-length');
    assert.deepEqual(new Set([...train, ...held].map((p) => p.pairId)), new Set(stored.keys()));
    assert.deepEqual(summary.counts, { train: train.length, eval: held.length, dropped: 0, truncated: 0, images: new Set([...stored.values()].map((p) => p.image_id).filter(Boolean)).size });
    for (const pair of [...train, ...held]) {
      const row = stored.get(pair.pairId)!;
      assert.equal(pair.imageId, row.image_id);
      for (const side of ['chosen', 'rejected'] as const) {
        const sentences = await store.all<{ start: number; end: number; idx: number }>(
          'SELECT idx, char_start AS start, char_end AS end FROM sentences WHERE pair_id = $1 AND side = $2 ORDER BY idx', [pair.pairId, side]);
        const expected = expectedSide(row.prompt, row[side], sentences);
        assert.deepEqual(pair.promptIds, expected.promptIds);
        assert.deepEqual(side === 'chosen' ? pair.chosenIds : pair.rejectedIds, expected.responseIds, `${pair.pairId} ${side} ids`);
        assert.deepEqual(side === 'chosen' ? pair.chosenSentenceIds : pair.rejectedSentenceIds, expected.sentenceIds, `${pair.pairId} ${side} sentence ids`);
        assert.ok(expected.sentenceIds.some((k) => k >= 0) || sentences.length === 0);
      }
      const scores = await store.all<{ idx: number; similarity: number | null }>(`SELECT s.idx, sc.similarity FROM sentences s
        LEFT JOIN sentence_scores sc ON sc.pair_id = s.pair_id AND sc.side = s.side AND sc.idx = s.idx AND sc.similarity_model = 'clip-test'
        WHERE s.pair_id = $1 AND s.side = 'chosen' ORDER BY s.idx`, [pair.pairId]);
      assert.deepEqual(pair.chosenSimilarity, scores.map((s) => s.similarity));
      assert.ok(pair.chosenSimilarity.some((s) => s === null) === (scores.length > 1));
      assert.equal(pair.chosenRefLogps, null);
      assert.equal(pair.truncated, false);
    }
    const images = await set.images();
    const bytes = await store.all<{ image_id: string; bytes: Uint8Array }>('SELECT image_id, bytes FROM images');
    assert.equal(images.size, bytes.length);
    for (const row of bytes) assert.deepEqual(images.get(row.image_id), new Uint8Array(row.bytes));
  });
  assert.equal(set.manifest.tokenizer, ref.modelId);
  assert.equal(set.manifest.similarityModel, 'clip-test');
  assert.equal(set.manifest.options.maxLength, textContext(ref.model.config));
  assert.deepEqual(set.manifest.shards.map((s) => s.file), [
    ...Array.from({ length: Math.ceil(train.length / 8) }, (_, i) => `train-0000${i}.arrow`),
    ...Array.from({ length: Math.ceil(held.length / 8) }, (_, i) => `eval-0000${i}.arrow`)]);
});

test('with two similarity models the choice must be named', async () => {
  await withStore(db, async (store) => {
    await store.run(`CREATE TEMP TABLE backup AS SELECT * FROM sentence_scores`);
    await store.run(`UPDATE sentence_scores SET similarity_model = 'other' WHERE pair_id = (SELECT min(pair_id) FROM sentence_scores)`);
    try {
      await assert.rejects(writeShards(store, { tokenizer: checkpoint, out: tempDir() }), /2 models \(clip-test, other\).*--similarity-model/);
      await assert.rejects(writeShards(store, { tokenizer: checkpoint, out: tempDir(), similarityModel: 'nope' }), /"nope" has no scores/);
    } finally {
      await store.run('DELETE FROM sentence_scores');
      await store.run('INSERT INTO sentence_scores SELECT * FROM backup');
    }
  });
});

test('the eval split shares no image with train and holds the requested fraction', async () => {
  for (const evalFraction of [0.25, 0.5]) {
    const out = tempDir();
    await shard({ out, evalFraction, seed: 3 });
    const { train, eval: held } = await allPairs(await openShardSet(out));
    const trainImages = new Set(train.map((p) => p.imageId).filter(Boolean));
    assert.ok(held.length > 0);
    assert.ok(held.every((p) => p.imageId === null || !trainImages.has(p.imageId)), 'an image on both sides');
    const total = train.length + held.length;
    // Whole images of two pairs each move: the eval share is within one image of the target.
    assert.ok(Math.abs(held.length - Math.round(evalFraction * total)) <= 1, `${held.length} of ${total} for ${evalFraction}`);
  }
  const out = tempDir();
  await shard({ out, evalFraction: 0.3, splitBy: 'pair', seed: 3 });
  const { train, eval: held } = await allPairs(await openShardSet(out));
  assert.equal(held.length, Math.round(0.3 * (train.length + held.length)));
  const trainImages = new Set(train.map((p) => p.imageId));
  assert.ok(held.some((p) => trainImages.has(p.imageId)), 'by pair, images are allowed on both sides (2 pairs per image)');
});

test('splitByGroup keeps groups whole and is a function of the seed', () => {
  const items = Array.from({ length: 40 }, (_, i) => ({ id: i, group: `g${i % 13}` }));
  const a = splitByGroup(items, (x) => x.group, 0.2, 1);
  assert.deepEqual(splitByGroup(items, (x) => x.group, 0.2, 1), a);
  const evalGroups = new Set(a.eval.map((x) => x.group));
  assert.ok(a.train.every((x) => !evalGroups.has(x.group)));
  assert.equal(a.train.length + a.eval.length, 40);
  assert.ok(Math.abs(a.eval.length - 8) <= 2);
  assert.notDeepEqual(splitByGroup(items, (x) => x.group, 0.2, 2).eval, a.eval);
  assert.equal(splitByGroup(items, (x) => x.group, 0, 1).eval.length, 0);
});

test('same seed gives identical files, another seed another order', async () => {
  const [a, b, c] = [tempDir(), tempDir(), tempDir()];
  await shard({ out: a, seed: 11, pairsPerShard: 10 });
  await shard({ out: b, seed: 11, pairsPerShard: 10 });
  await shard({ out: c, seed: 12, pairsPerShard: 10 });
  const files = readdirSync(a).filter((f) => f !== 'manifest.json').sort();
  assert.deepEqual(readdirSync(b).filter((f) => f !== 'manifest.json').sort(), files);
  for (const f of files) assert.deepEqual(readFileSync(path.join(b, f)), readFileSync(path.join(a, f)), f);
  const order = async (dir: string) => (await allPairs(await openShardSet(dir))).train.map((p) => p.pairId);
  assert.notDeepEqual(await order(c), await order(a));
});

test('verify names a tampered or missing file; a re-run repairs it, an unchanged re-run is a no-op', async () => {
  const out = tempDir();
  const first = await shard({ out, pairsPerShard: 5 });
  assert.equal(first.unchanged, false);
  const mtimes = () => Object.fromEntries(readdirSync(out).map((f) => [f, statSync(path.join(out, f)).mtimeMs]));
  const before = mtimes();
  const again = await shard({ out, pairsPerShard: 5 });
  assert.equal(again.unchanged, true);
  assert.deepEqual(mtimes(), before);

  const target = path.join(out, 'train-00001.arrow');
  const bytes = readFileSync(target);
  bytes[bytes.length >> 1] ^= 0xff;
  writeFileSync(target, bytes);
  await assert.rejects((await openShardSet(out)).verify(), /shard file train-00001\.arrow: sha256 .* differs/);
  assert.equal((await shard({ out, pairsPerShard: 5 })).unchanged, false, 'a file that does not verify is rewritten');
  await (await openShardSet(out)).verify();

  // Changed options rewrite the set and remove the shards it no longer has.
  await shard({ out, pairsPerShard: 1000 });
  assert.deepEqual(readdirSync(out).sort(), ['eval-00000.arrow', 'images.arrow', 'manifest.json', 'train-00000.arrow']);
  await (await openShardSet(out)).verify();

  // Changed inputs change the fingerprint.
  const fingerprint = (await openShardSet(out)).manifest.fingerprint;
  await withStore(db, (store) => store.run(`UPDATE sentence_scores SET similarity = similarity + 0.5 WHERE idx = 0 AND pair_id = (SELECT min(pair_id) FROM sentence_scores)`));
  try {
    const changed = await shard({ out, pairsPerShard: 1000 });
    assert.equal(changed.unchanged, false);
    assert.notEqual(changed.fingerprint, fingerprint);
  } finally {
    await withStore(db, (store) => store.run(`UPDATE sentence_scores SET similarity = similarity - 0.5 WHERE idx = 0 AND pair_id = (SELECT min(pair_id) FROM sentence_scores)`));
  }

  rmSync(path.join(out, 'images.arrow'));
  await assert.rejects((await openShardSet(out)).verify(), /shard file images\.arrow is missing/);
});

test('over-length pairs: drop lists them in rejects with their lengths; truncate cuts only the response tail', async () => {
  const maxLength = 30;
  const full = await withStore(db, storedPairs);
  const lengths = [...full.values()].map((row) => {
    const c = expectedSide(row.prompt, row.chosen, []);
    const r = expectedSide(row.prompt, row.rejected, []);
    return { row, p: c.promptIds.length, chosen: c.responseIds, rejected: r.responseIds };
  });
  const over = lengths.filter((l) => 1 + l.p + Math.max(l.chosen.length, l.rejected.length) > maxLength);
  assert.ok(over.length > 0 && over.length < lengths.length, `the test needs some but not all pairs over ${maxLength}`);

  const dropDir = tempDir();
  const dropped = await shard({ out: dropDir, maxLength, evalFraction: 0 });
  assert.equal(dropped.counts.dropped, over.length);
  assert.equal(dropped.counts.train, lengths.length - over.length);
  const kept = (await allPairs(await openShardSet(dropDir))).train;
  assert.ok(kept.every((p) => 1 + p.promptIds.length + Math.max(p.chosenIds.length, p.rejectedIds.length) <= maxLength));
  await withStore(db, async (store) => {
    const rejects = await store.all<{ source: string; source_row: number; field: string; reason: string; raw: string }>(
      `SELECT source, source_row, field, reason, raw FROM rejects WHERE stage = 'shard' AND raw LIKE '%' || $1 || '%'`, [dropDir]);
    assert.equal(rejects.length, over.length);
    for (const o of over) {
      const reject = rejects.find((r) => JSON.parse(r.raw).pair_id === o.row.pair_id)!;
      assert.ok(reject, `no reject for ${o.row.pair_id}`);
      assert.equal(reject.source_row, o.row.source_row);
      const side = 1 + o.p + o.chosen.length > maxLength ? 'chosen' : 'rejected';
      assert.equal(reject.field, side);
      const n = side === 'chosen' ? o.chosen.length : o.rejected.length;
      assert.ok(reject.reason.includes(`${side}: BOS + ${o.p} prompt + ${n} response tokens = ${1 + o.p + n}`), reject.reason);
      assert.match(reject.reason, /> max-length 30/);
    }
    // A re-run into the same folder with room for everything clears its rejects.
    await writeShards(store, { tokenizer: checkpoint, out: dropDir, evalFraction: 0 });
    assert.equal(await store.scalar(`SELECT count(*) FROM rejects WHERE stage = 'shard' AND raw LIKE '%' || $1 || '%'`, [dropDir]), 0);
  });

  const cutDir = tempDir();
  const cut = await shard({ out: cutDir, maxLength, overLength: 'truncate', evalFraction: 0 });
  assert.equal(cut.counts.dropped, 0);
  assert.equal(cut.counts.truncated, over.length);
  const cutPairs = (await allPairs(await openShardSet(cutDir))).train;
  for (const l of lengths) {
    const pair = cutPairs.find((p) => p.pairId === l.row.pair_id)!;
    const budget = maxLength - 1 - l.p;
    assert.equal(pair.truncated, over.includes(l));
    assert.equal(pair.promptIds.length, l.p, 'the prompt is never cut');
    assert.deepEqual(pair.chosenIds, l.chosen.slice(0, budget));
    assert.deepEqual(pair.rejectedIds, l.rejected.slice(0, budget));
    assert.equal(pair.chosenSentenceIds.length, pair.chosenIds.length);
  }

  // A prompt with no room left is dropped, even under truncate, with a reason saying so.
  const tiny = await shard({ out: tempDir(), maxLength: 3, overLength: 'truncate', evalFraction: 0 });
  assert.equal(tiny.counts.dropped, lengths.length);
  await withStore(db, async (store) => {
    const reason = await store.scalar<string>(`SELECT reason FROM rejects WHERE stage = 'shard' AND field = 'prompt' LIMIT 1`);
    assert.match(reason, /BOS \+ \d+ prompt tokens leave no room for a response within max-length 3/);
  });
  await assert.rejects(shard({ out: tempDir(), maxLength: 81 }), /max-length 81 exceeds the model's 80 text positions/);
});

test('parquet and arrow hold the same pairs and images', async () => {
  const [a, p] = [tempDir(), tempDir()];
  await shard({ out: a, pairsPerShard: 7, similarityModel: 'clip-test' });
  await shard({ out: p, pairsPerShard: 7, similarityModel: 'clip-test', format: 'parquet' });
  const setA = await openShardSet(a);
  const setP = await openShardSet(p);
  await setP.verify();
  assert.ok(setP.manifest.shards.every((s) => s.file.endsWith('.parquet')));
  assert.equal(setP.manifest.fingerprint === setA.manifest.fingerprint, false, 'the format is an option of the fingerprint');
  assert.deepEqual(await allPairs(setP), await allPairs(setA));
  assert.deepEqual(await setP.images(), await setA.images());
});

test('stored reference log-probs equal a direct responseLogProbs computation, EOS included', async () => {
  const out = tempDir();
  const summary = await shard({ out, ref: checkpoint, tokenizer: undefined, batchSize: 6, format: 'parquet' });
  assert.equal(summary.referenceModel, ref.modelId);
  const { train, eval: held } = await allPairs(await openShardSet(out));
  const images = await (await openShardSet(out)).images();
  for (const pair of [...train, ...held].slice(0, 8).concat([...train, ...held].filter((p) => p.imageId === null))) {
    for (const side of ['chosen', 'rejected'] as const) {
      const ids = side === 'chosen' ? pair.chosenIds : pair.rejectedIds;
      const stored = side === 'chosen' ? pair.chosenRefLogps! : pair.rejectedRefLogps!;
      const pixels = pair.imageId ? await loadImagePixels(Buffer.from(images.get(pair.imageId)!), ref.model.config.imageSize) : null;
      const imageTensor = pixels ? stackImages([pixels], ref.model.config.imageSize) : null;
      const { logps, mask } = ref.model.responseLogProbs({ images: imageTensor, hasImage: [pixels !== null], promptIds: [pair.promptIds], responseIds: [ids] });
      const direct = Array.from(logps.dataSync());
      tf.dispose([logps, mask, ...(imageTensor ? [imageTensor] : [])]);
      assert.equal(stored.length, ids.length + 1);
      assert.equal(direct.length, ids.length + 1);
      stored.forEach((v, j) => assert.ok(Math.abs(v - direct[j]!) < 1e-4, `${pair.pairId} ${side} token ${j}: ${v} vs ${direct[j]}`));
    }
  }
  assert.ok([...train, ...held].some((p) => p.imageId === null), 'the text-only pair is covered');

  // A reference model with another tokenizer would store log-probs of other ids.
  const other = path.join(tempDir(), 'other');
  const tokenizer = Tokenizer.build(['Some other text entirely.'], { vocabSize: 120 });
  const config = validateModelConfig({ ...ref.model.config, vocabSize: tokenizer.vocabSize });
  await saveCheckpoint(other, { config, tokenizer, weights: initialValues(config, 1) });
  await assert.rejects(shard({ out: tempDir(), ref: other }), /--ref .*other and --tokenizer .* have different tokenizers/);
});

test('pairs not yet segmented are refused with the command to run', async () => {
  const local = path.join(tempDir(), 'unsegmented.duckdb');
  await withStore(local, (store) => store.run(`INSERT INTO pairs (pair_id, source, source_row, format, prompt, chosen, rejected) VALUES ('x', 's', 0, 'jsonl', 'P.', 'A.', 'B.')`));
  await withStore(local, async (store) => {
    await assert.rejects(writeShards(store, { tokenizer: checkpoint, out: tempDir() }), /1 pair\(s\) are not segmented yet: run `aspo segment/);
  });
});

test('CLI: one JSON summary line on stdout and a no-op re-run; usage errors name the option', async () => {
  const out = tempDir();
  const args = [CLI, 'shard', '--db', db, '--tokenizer', checkpoint, '--out', out, '--pairs-per-shard', '16', '--similarity-model', 'clip-test'];
  const first = spawnSync(process.execPath, args, { encoding: 'utf8' });
  assert.equal(first.status, 0, first.stderr);
  const lines = first.stdout.trim().split('\n');
  assert.equal(lines.length, 1);
  const summary = JSON.parse(lines[0]!) as { unchanged: boolean; counts: { train: number; eval: number } };
  assert.equal(summary.unchanged, false);
  assert.ok(summary.counts.train > 0 && summary.counts.eval > 0);
  const second = spawnSync(process.execPath, args, { encoding: 'utf8' });
  assert.equal(second.status, 0, second.stderr);
  assert.equal(JSON.parse(second.stdout).unchanged, true);
  assert.match(second.stderr, /up to date/);

  const run = (argv: string[]) => command.run(['--db', db, '--tokenizer', checkpoint, ...argv]);
  await assert.rejects(run(['--out', out, '--over-length', 'cut']), (e: Error) => e instanceof UsageError && /--over-length must be one of drop, truncate/.test(e.message));
  await assert.rejects(run([]), (e: Error) => e instanceof UsageError && /--out DIR is required/.test(e.message));
  await assert.rejects(run(['--out', out, '--eval-fraction', '1']), (e: Error) => e instanceof UsageError && /eval-fraction must be in \[0, 1\)/.test(e.message));
  await assert.rejects(run(['--out', out, '--pairs-per-shard', '2.5']), (e: Error) => e instanceof UsageError && /--pairs-per-shard must be an integer/.test(e.message));
});
