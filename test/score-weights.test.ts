import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { Store, withStore } from '../src/store/store.js';
import { tempDir } from './support.js';

const EPS = 1e-6;

/** [pair_id, side, similarity per sentence, ppl per sentence]; undefined = no sentence_scores row at all. */
type Response = [string, string, Array<number | null | undefined>, Array<number | null | undefined>];

const RESPONSES: Response[] = [
  ['A', 'chosen', [0.2, 0.5, 0.3], [2, 4, 3]],         // both signals
  ['A', 'rejected', [0.1, 0.4], [5, 1]],
  ['B', 'chosen', [0.9], [1.5]],                       // one sentence
  ['C', 'chosen', [0.4, 0.4], [3, 3]],                 // equal scores
  ['D', 'chosen', [null, null], [1, 3]],               // no similarity (text-only pair)
  ['E', 'chosen', [0.1, 0.7], [null, null]],           // perplexity not computed yet
  ['F', 'chosen', [0.1, undefined, 0.9], [undefined, undefined, undefined]], // a sentence never scored
];

async function weightStore(): Promise<string> {
  const db = path.join(tempDir(), 'weights.duckdb');
  await withStore(db, async (store) => {
    for (const [pairId, side, similarity, ppl] of RESPONSES) {
      for (let idx = 0; idx < similarity.length; idx++) {
        await store.run(`INSERT INTO sentences (pair_id, side, idx, char_start, char_end, text, shared) VALUES (?, ?, ?, 0, 1, 'x', false)`,
          [pairId, side, idx]);
        if (similarity[idx] === undefined && ppl[idx] === undefined) continue;
        await store.run('INSERT INTO sentence_scores (pair_id, side, idx, similarity, ppl) VALUES (?, ?, ?, ?, ?)',
          [pairId, side, idx, similarity[idx] ?? null, ppl[idx] ?? null]);
      }
    }
  });
  return db;
}

interface WeightRow { pair_id: string; side: string; idx: number; s_norm: number | null; p_norm: number | null; weight: number; multiplier: number; alpha: number; scale: number }

async function weights(store: Store, args = ''): Promise<Map<string, WeightRow>> {
  const rows = await store.all<WeightRow>(`SELECT * FROM sentence_weights(${args})`);
  return new Map(rows.map((r) => [`${r.pair_id}/${r.side}/${r.idx}`, r]));
}

function close(actual: number | null | undefined, expected: number, label: string, tolerance = 1e-12): void {
  assert.ok(actual !== null && actual !== undefined && Math.abs(actual - expected) <= tolerance, `${label}: ${actual} vs ${expected}`);
}

test('sentence_weights: the spec min-max fusion, worked by hand, with the edge cases', async () => {
  await withStore(await weightStore(), async (store) => {
    const w = await weights(store);
    assert.equal(w.size, 15);
    // A/chosen: S' = (S − 0.2)/(0.3 + ε), P' = (4 − PPL)/(2 + ε), w = (S' + P')/2.
    const sA = [0, 0.3 / (0.3 + EPS), 0.1 / (0.3 + EPS)];
    const pA = [2 / (2 + EPS), 0, 1 / (2 + EPS)];
    sA.forEach((s, i) => {
      const row = w.get(`A/chosen/${i}`)!;
      close(row.s_norm, s, `s_norm ${i}`);
      close(row.p_norm, pA[i]!, `p_norm ${i}`);
      close(row.weight, 0.5 * s + 0.5 * pA[i]!, `weight ${i}`);
      close(row.multiplier, 1 + row.weight, `multiplier ${i}`);
    });
    // Normalised within each response: A/rejected has its own min and max.
    close(w.get('A/rejected/0')!.weight, 0.5 * 0 + 0.5 * 0, 'A/rejected/0');
    close(w.get('A/rejected/1')!.weight, 0.5 * (0.3 / (0.3 + EPS)) + 0.5 * (4 / (4 + EPS)), 'A/rejected/1');
    // One sentence, equal scores: weight 0, multiplier 1.
    for (const key of ['B/chosen/0', 'C/chosen/0', 'C/chosen/1']) {
      assert.equal(w.get(key)!.weight, 0, key);
      assert.equal(w.get(key)!.multiplier, 1, key);
    }
    // No similarity: perplexity alone; no perplexity: similarity alone; a sentence never scored: weight 0.
    assert.equal(w.get('D/chosen/0')!.s_norm, null);
    close(w.get('D/chosen/0')!.weight, 2 / (2 + EPS), 'D/0');
    close(w.get('D/chosen/1')!.weight, 0, 'D/1');
    close(w.get('E/chosen/1')!.weight, 0.6 / (0.6 + EPS), 'E/1');
    close(w.get('F/chosen/2')!.weight, 0.8 / (0.8 + EPS), 'F/2');
    assert.equal(w.get('F/chosen/1')!.weight, 0);
    assert.equal(w.get('F/chosen/1')!.s_norm, null);

    // The view is the macro with its defaults.
    const view = await store.all<WeightRow>('SELECT * FROM sentence_weights ORDER BY pair_id, side, idx');
    const macro = await store.all<WeightRow>('SELECT * FROM sentence_weights() ORDER BY pair_id, side, idx');
    assert.deepEqual(view, macro);
    assert.ok(view.every((r) => r.alpha === 0.5 && r.scale === 1));

    // alpha and scale are query parameters: similarity only, perplexity only, a larger scale.
    const sOnly = await weights(store, 'alpha := 1');
    close(sOnly.get('A/chosen/1')!.weight, sA[1]!, 'alpha 1');
    assert.equal(sOnly.get('D/chosen/0')!.weight, 0); // no similarity and alpha 1: nothing to weight by
    const pOnly = await weights(store, 'alpha := 0, scale := 2');
    close(pOnly.get('A/chosen/0')!.weight, pA[0]!, 'alpha 0');
    close(pOnly.get('A/chosen/0')!.multiplier, 1 + 2 * pA[0]!, 'scale 2');
    assert.equal(pOnly.get('E/chosen/1')!.weight, 0);
    await assert.rejects(store.all('SELECT * FROM sentence_weights(alpha := 1.5)'), /alpha must be between 0 and 1/);
    await assert.rejects(store.all('SELECT * FROM sentence_weights(scale := -1)'), /scale must be >= 0/);
  });
});

/** The spec's steps 4–5 for one response with both signals, in float64, written from the formula. */
function specWeights(similarity: number[], ppl: number[], alpha: number): number[] {
  const minMax = (v: number[]) => v.map((x) => (x - Math.min(...v)) / (Math.max(...v) - Math.min(...v) + EPS));
  const sNorm = minMax(similarity);
  const pNorm = minMax(ppl.map((p) => -p));
  return sNorm.map((s, i) => (similarity.length === 1 ? 0 : alpha * s + (1 - alpha) * pNorm[i]!));
}

test('sentence_weights matches the spec formula on random responses, for several alpha', async () => {
  let seed = 7;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  const responses = Array.from({ length: 40 }, (_, r) => {
    const k = 1 + Math.floor(random() * 6);
    return { pairId: `r${r}`, similarity: Array.from({ length: k }, () => random() * 0.6 - 0.1), ppl: Array.from({ length: k }, () => 1 + random() * 30) };
  });
  const db = path.join(tempDir(), 'random.duckdb');
  await withStore(db, async (store) => {
    for (const { pairId, similarity, ppl } of responses) {
      for (let idx = 0; idx < similarity.length; idx++) {
        await store.run(`INSERT INTO sentences (pair_id, side, idx, char_start, char_end, text, shared) VALUES (?, 'chosen', ?, 0, 1, 'x', false)`, [pairId, idx]);
        await store.run('INSERT INTO sentence_scores (pair_id, side, idx, similarity, ppl) VALUES (?, \'chosen\', ?, ?, ?)', [pairId, idx, similarity[idx]!, ppl[idx]!]);
      }
    }
    for (const alpha of [0, 0.3, 0.5, 1]) {
      const sql = await weights(store, `alpha := ${alpha}`);
      for (const { pairId, similarity, ppl } of responses) {
        specWeights(similarity, ppl, alpha).forEach((expected, idx) =>
          close(sql.get(`${pairId}/chosen/${idx}`)!.weight, expected, `${pairId}/${idx} alpha ${alpha}`, 1e-12));
      }
    }
  });
});
