/**
 * A small real store for the report tests, built through the library: a synthetic world (labelled sentences),
 * ingested, segmented and scored for similarity with the tiny CLIP fixture; two training runs logged through
 * StoreMetrics; and a few sentence_rewards rows standing in for `aspo rewards` (no policy is trained here).
 */
import path from 'node:path';
import { ingest } from '../src/ingest/ingest.js';
import { segmentStage } from '../src/segment/stage.js';
import { ClipEncoder } from '../src/score/clip.js';
import { scoreSimilarity } from '../src/score/stage.js';
import { synthesize } from '../src/synth/synthesize.js';
import { StoreMetrics } from '../src/train/metrics.js';
import { withStore } from '../src/store/store.js';
import { writeTinyClip } from './clip-fixture.js';
import { tempDir } from './support.js';

export const DPO_RUN = 'dpo-20261127T180000Z-aaaaaa';
export const SFT_RUN = 'sft-20261127T170000Z-bbbbbb';
/** Metrics a DPO/ASPO run logs (see src/train/loss.ts DPO_METRICS) and an SFT run's evaluation metrics. */
export const DPO_METRICS = ['loss', 'rewards/chosen', 'rewards/rejected', 'rewards/margins', 'rewards/accuracies'];

let built: Promise<string> | undefined;

/** Path of the fixture store (built once per test process). */
export function reportStore(): Promise<string> {
  return (built ??= build());
}

async function build(): Promise<string> {
  const dir = tempDir('aspo-report-');
  const world = path.join(dir, 'world');
  await synthesize({ out: world, images: 12, evalImages: 0, size: 32, sftPerImage: 0, seed: 3, concurrency: 2 });
  const db = path.join(dir, 'report.duckdb');
  const encoder = await ClipEncoder.load(writeTinyClip(path.join(dir, 'tiny-clip')), { device: 'cpu' });
  try {
    await withStore(db, async (store) => {
      await ingest(store, [path.join(world, 'pairs.jsonl')]);
      await segmentStage(store);
      await scoreSimilarity(store, encoder);

      const dpo = new StoreMetrics(store);
      await dpo.start({ runId: DPO_RUN, objective: 'dpo', config: {}, backend: 'wasm', checkpoint: path.join(dir, 'dpo') });
      for (let step = 0; step <= 20; step += 5) {
        const margin = 0.1 * step;
        await dpo.log(step, 'train', { loss: Math.log1p(Math.exp(-margin)), 'rewards/chosen': margin / 2, 'rewards/rejected': -margin / 2,
          'rewards/margins': margin, 'rewards/accuracies': Math.min(1, 0.5 + step / 40), lr: 1e-3 });
        if (step % 10 === 0) await dpo.log(step, 'eval', { loss: Math.log1p(Math.exp(-margin * 0.8)), 'rewards/margins': 0.8 * margin });
      }
      await dpo.finish('finished', {});
      const sft = new StoreMetrics(store);
      await sft.start({ runId: SFT_RUN, objective: 'sft', config: {}, backend: 'wasm', checkpoint: path.join(dir, 'sft') });
      for (let step = 0; step <= 30; step += 10) {
        await sft.log(step, 'train', { loss: 3 / (1 + step / 10), tokens_per_s: 1000 });
        await sft.log(step, 'eval', { loss: 3.2 / (1 + step / 12), sentence_accuracy: 0.5 + step / 100 });
      }
      await sft.finish('finished', {});

      // Rewards of the first 30 sentences, decreasing, as `aspo rewards` would store them (migration 5).
      if (!await store.tableExists('sentence_rewards')) return;
      const sentences = await store.all<{ pair_id: string; side: string; idx: number }>(
        'SELECT pair_id, side, idx FROM sentences ORDER BY pair_id, side, idx LIMIT 30');
      for (const [i, s] of sentences.entries()) {
        await store.run(`INSERT INTO sentence_rewards (policy_model, ref_model, pair_id, side, idx, n_tokens, policy_logp_sum,
          ref_logp_sum, logratio_sum, weight, multiplier, ref_multiplier, reward, beta, alpha, scale, loss_config)
          VALUES ('policy@0123', 'ref@4567', ?, ?, ?, 3, ?, -4, ?, NULL, 1, 1, ?, 0.1, 0.5, 1, '{}')`,
        [s.pair_id, s.side, s.idx, -4 - i * 0.1, -i * 0.1, -i * 0.01]);
      }
    });
  } finally {
    await encoder.dispose();
  }
  return db;
}
