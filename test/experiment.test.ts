import assert from 'node:assert/strict';
import { test } from 'node:test';
import { METHODS, resultsTable, runExperiment } from '../bench/aspo-vs-dpo.js';
import { DEFAULT_SFT_OPTIONS } from '../src/train/sft.js';
import { tempDir } from './support.js';

// The experiment's --quick variant, shrunk to seconds: the full pipeline (synthesise, SFT reference, ingest, segment,
// score, shard, train, evaluate) runs for DPO and ASPO, and only learning is asserted, never which method wins.
test('aspo-vs-dpo quick: DPO and ASPO training raise reward accuracy above the reference', async () => {
  const result = await runExperiment({
    out: tempDir('aspo-experiment-'),
    worldSeed: 7,
    noises: [0.4],
    seeds: [1],
    images: 80,
    evalImages: 10,
    sftSteps: 60,
    steps: 16,
    methods: METHODS.filter((m) => m.key === 'dpo' || m.key === 'aspo'),
    sft: { model: { ...DEFAULT_SFT_OPTIONS.model, width: 32, layers: 1, heads: 2 }, batchSize: 16 },
    preference: { batchSize: 16, lr: 1e-3, logEvery: 4 },
  });
  assert.equal(result.runs.length, 2);
  for (const run of result.runs) {
    assert.ok(run.rewardAccuracyBefore < 0.2, `${run.method}: before training the margins are zero (${run.rewardAccuracyBefore})`);
    assert.ok(run.trainRewardAccuracy > 0.6, `${run.method}: training reward accuracy ${run.trainRewardAccuracy}`);
    assert.ok(run.rewardAccuracy > run.rewardAccuracyBefore, `${run.method}: held-out ${run.rewardAccuracyBefore} → ${run.rewardAccuracy}`);
    assert.ok(run.hallucinationRate >= 0 && run.hallucinationRate <= 1 || Number.isNaN(run.hallucinationRate));
  }
  assert.equal(result.weightAuroc.length, 3);
  for (const w of result.weightAuroc) assert.ok(w.sentences > 0 && w.auroc >= 0 && w.auroc <= 1);
  const table = resultsTable(result);
  assert.match(table, /\| DPO \|/);
  assert.match(table, /\| ASPO \(α = 0\.5\) \|/);
});
