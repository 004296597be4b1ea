import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { segmentStage } from '../src/segment/stage.js';
import { Store, withStore } from '../src/store/store.js';
import { loadCausalLm, rowTokenLogProbs, scoreLm, type CausalLm } from '../src/score/lm.js';
import { LM_CONTEXT, referenceLogProbs, referenceTokenIds, writeTinyLm } from './lm-fixture.js';
import { CLI, tempDir } from './support.js';

const PROMPT = 'Describe it:';
/** [pair id, chosen, rejected]. */
const PAIRS: Array<[string, string, string]> = [
  ['p1', 'The cat sat. A dog ran.', 'A dog sat. The cat ran.'],
  ['p2', 'The dog ran.', 'Cat sat. The the a dog.'],
  // 4 + 16 tokens: longer than the 16-token context.
  ['long', 'The cat sat. '.repeat(4).trim(), 'A cat.'],
];

let modelDir: string;
let lm: CausalLm;

async function makeDb(): Promise<string> {
  const db = path.join(tempDir(), 'lm.duckdb');
  await withStore(db, async (store) => {
    for (const [pairId, chosen, rejected] of PAIRS) {
      await store.run(`INSERT INTO pairs (pair_id, source, source_row, format, prompt, chosen, rejected, image_id)
        VALUES (?, 'test.jsonl', 0, 'jsonl', ?, ?, ?, NULL)`, [pairId, PROMPT, chosen, rejected]);
    }
    await segmentStage(store);
    // A similarity from another scorer that the perplexity writer must leave alone.
    await store.run(`INSERT INTO sentence_scores (pair_id, side, idx, similarity, similarity_model) VALUES ('p1', 'chosen', 0, 0.42, 'clip-x')`);
  });
  return db;
}

interface ScoreRow { pair_id: string; side: string; idx: number; ppl: number | null; ref_logp_sum: number | null; n_tokens: number; ppl_model: string | null }

async function scores(store: Store): Promise<ScoreRow[]> {
  return store.all<ScoreRow>(`SELECT pair_id, side, idx, ppl, ref_logp_sum, n_tokens, ppl_model FROM sentence_scores
    ORDER BY pair_id, side, idx`);
}

/** Per sentence, Σ log p and token count by hand: word-level tokens, each sentence's words following the prompt's. */
function handSums(response: string, sentences: Array<{ start: number; end: number }>): Array<{ sum: number; n: number }> {
  const ids = referenceTokenIds(PROMPT + ' ' + response);
  const logps = referenceLogProbs(ids);
  let next = referenceTokenIds(PROMPT).length; // index of the first response token
  return sentences.map(({ start, end }) => {
    const n = referenceTokenIds(response.slice(start, end)).length - 1;
    let sum = 0;
    for (let t = next; t < next + n; t++) sum += logps[t - 1]!;
    next += n;
    return { sum, n };
  });
}

before(async () => {
  modelDir = writeTinyLm(path.join(tempDir(), 'tiny-lm'));
  lm = await loadCausalLm(modelDir);
});

after(async () => lm?.dispose());

test('rowTokenLogProbs is the log-softmax of the previous position, picked at the token', () => {
  // One row of width 3 over a vocabulary of 2: positions 0 and 1 predict tokens 1 and 2.
  const logits = [0, Math.log(3), 2, 2, 9, 9];
  const got = rowTokenLogProbs(logits, 0, 3, 2, [0, 1, 0]);
  assert.ok(Math.abs(got[0]! - Math.log(3 / 4)) < 1e-12);
  assert.ok(Math.abs(got[1]! - Math.log(1 / 2)) < 1e-12);
});

test('the model loads through transformers.js with its context and a content-hashed id', () => {
  assert.equal(lm.maxLength, LM_CONTEXT);
  assert.match(lm.modelId, /^tiny-lm@[0-9a-f]{12}$/);
});

test('token log-probs match the hand computation and do not depend on padding', async () => {
  const rows = [referenceTokenIds(`${PROMPT}The cat sat.`), referenceTokenIds(`${PROMPT}A dog.`), referenceTokenIds('The')];
  const batched = await lm.tokenLogProbs(rows);
  for (const [i, row] of rows.entries()) {
    const [alone] = await lm.tokenLogProbs([row]);
    const expected = referenceLogProbs(row);
    assert.equal(batched[i]!.length, expected.length);
    expected.forEach((e, t) => {
      assert.ok(Math.abs(batched[i]![t]! - e) < 1e-5, `row ${i} token ${t + 1}: ${batched[i]![t]} vs ${e}`);
      assert.ok(Math.abs(alone![t]! - batched[i]![t]!) < 1e-6, `padding changed row ${i} token ${t + 1}`);
    });
  }
});

test('scoreLm writes per-sentence sums, counts and perplexities; skips over-long responses; re-runs score nothing', async () => {
  const db = await makeDb();
  await withStore(db, async (store) => {
    const first = await scoreLm(store, lm, { batchSize: 3 });
    assert.equal(first.tooLong, 1);
    assert.equal(first.responses, 5);
    const rows = await scores(store);
    for (const [pairId, chosen, rejected] of PAIRS) {
      for (const [side, response] of [['chosen', chosen], ['rejected', rejected]] as const) {
        const sentences = await store.all<{ start: number; end: number }>(
          'SELECT char_start AS start, char_end AS end FROM sentences WHERE pair_id = ? AND side = ? ORDER BY idx', [pairId, side]);
        const got = rows.filter((r) => r.pair_id === pairId && r.side === side);
        if (pairId === 'long' && side === 'chosen') {
          assert.ok(got.every((r) => r.ppl_model === null), 'the over-long response is not scored');
          continue;
        }
        const expected = handSums(response, sentences);
        assert.equal(got.length, expected.length);
        expected.forEach((e, k) => {
          assert.equal(got[k]!.n_tokens, e.n);
          assert.ok(Math.abs(got[k]!.ref_logp_sum! - e.sum) < 1e-5, `${pairId}/${side}/${k}: ${got[k]!.ref_logp_sum} vs ${e.sum}`);
          assert.ok(Math.abs(got[k]!.ppl! - Math.exp(-e.sum / e.n)) < 1e-5);
          assert.equal(got[k]!.ppl_model, lm.modelId);
        });
      }
    }
    assert.equal(await store.scalar(`SELECT similarity FROM sentence_scores WHERE pair_id = 'p1' AND side = 'chosen' AND idx = 0`), 0.42);

    const again = await scoreLm(store, lm, { batchSize: 3 });
    assert.equal(again.sentences, 0);
    assert.equal(again.responses, 0);
    assert.equal(again.tooLong, 1);
    assert.deepEqual(await scores(store), rows);
  });

  // One response per model call gives the same scores as padded batches.
  const single = await makeDb();
  await withStore(single, async (store) => {
    await scoreLm(store, lm, { batchSize: 1 });
    const one = await scores(store);
    const batched = await withStore(db, scores);
    assert.equal(one.length, batched.length);
    one.forEach((r, i) => {
      assert.equal(r.n_tokens, batched[i]!.n_tokens);
      if (r.ref_logp_sum === null) assert.equal(batched[i]!.ref_logp_sum, null);
      else assert.ok(Math.abs(r.ref_logp_sum - batched[i]!.ref_logp_sum!) < 1e-6);
    });
  });
});

test('aspo score --lm scores through the CLI and names a missing model folder', async () => {
  const db = await makeDb();
  const run = spawnSync(process.execPath, [CLI, 'score', '--db', db, '--lm', modelDir], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stderr, /1 longer than the model's context/);
  const n = await withStore(db, async (store) => store.scalar('SELECT count(*) FROM sentence_scores WHERE ppl_model IS NOT NULL'));
  assert.equal(Number(n), 8);

  const missing = spawnSync(process.execPath, [CLI, 'score', '--db', db, '--lm', path.join(tempDir(), 'nope')], { encoding: 'utf8' });
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, /does not exist/);
});
