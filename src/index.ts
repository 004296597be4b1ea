// The public API of aspo-toolkit: one block per stage, in pipeline order (see README "The library" and
// docs/architecture.md). Internals (helpers, SQL, SVG, tensor plumbing) stay in their modules.

// The store: one DuckDB file every stage reads and writes; every stage's tables registered with it.
import './schema.js';
export { Store, withStore, DEFAULT_DB_PATH, type OpenOptions } from './store/store.js';
export { checkReadOnlySql, ReadOnlySqlError } from './store/read-only-sql.js';
export { StagedOutput, OutputError, writeFileAtomic, type OutputOptions } from './util/safe-output.js';

// The whole job behind `npm start`.
export {
  runPipeline, PIPELINE_DEFAULTS, DEFAULT_DATASET, DEFAULT_REFERENCE, DEFAULT_OUTPUT,
  type PipelineOptions, type PipelineResult,
} from './pipeline/pipeline.js';
export type { StageProgress, OnProgress } from './util/progress.js';

// Ingest: datasets into pairs, images and rejects.
export { ingest, pairId, type IngestOptions, type IngestSummary } from './ingest/ingest.js';
export { FILE_FORMATS, type FileFormat } from './ingest/readers.js';
export { ROW_LAYOUTS, type RowLayout } from './ingest/rows.js';

// Segment: sentences with offsets, chosen/rejected alignment.
export { segment, type Sentence } from './segment/segment.js';
export { segmentStage, pairSentenceRows, type SegmentStageOptions, type SegmentStageResult, type SentenceRow } from './segment/stage.js';
export { diffSentences, diceSimilarity, sentenceKey, type SentenceDiff, type SentenceMatch, type Similarity } from './segment/diff.js';

// The model package: model, tokenizer, checkpoints, images, log-probs, backend.
export { VisionLanguageModel, DEFAULT_MODEL_CONFIG, type ModelConfig, type GenerateOptions } from './model/model.js';
export { Tokenizer } from './model/tokenizer.js';
export { encodePromptResponse } from './model/encode.js';
export {
  loadModel, saveCheckpoint, loadCheckpoint, hasCheckpoint, checkpointModelId,
  type LoadedModel, type CheckpointContents,
} from './model/checkpoint.js';
export { PixelCache, loadImagePixels } from './model/images.js';
export { tokenLogProbs, type TokenRow } from './model/logprobs.js';
export { initBackend, BACKENDS, type BackendName } from './model/backend.js';

// Score: per-sentence signals, and the scorer interface new scorers plug into.
export {
  scoreResponses, SIGNAL_MODEL_COLUMN,
  type ResponseScorer, type ScoreBatch, type ScoredBatch, type ScoreExecutor, type ScoreResponsesOptions,
  type ResponseScoreSummary, type ResponseToScore, type ScoreSignal, type SentenceScoreRow, type SentenceSpan,
} from './score/scorer.js';
export { referenceScorer, scoreReference, type ReferenceSignal } from './score/perplexity.js';
export { lmScorer, scoreLm, loadCausalLm, type CausalLm } from './score/lm.js';
export { ClipEncoder, type ClipDevice, type ClipLoadOptions } from './score/clip.js';
export { scoreSimilarity, type ScoreOptions, type ScoreSummary } from './score/stage.js';
export {
  VisionLanguageScorer, scoreVlm, VlmModelError, VLM_FAMILIES,
  type VlmDevice, type VlmDtype, type VlmLoadOptions, type VlmScoreOptions, type VlmScoreSummary,
} from './score/vlm.js';

// Distributed scoring: a BullMQ queue of workers (docs/distributed.md).
export { scoreThroughQueue, type QueueScoreOptions, type QueueScoreSummary } from './distributed/coordinator.js';
export { startWorker, type WorkerOptions, type RunningWorker } from './distributed/worker.js';
export { queueStatus, clearQueue } from './distributed/queue.js';

// Shard: training shards and their manifest.
export { writeShards, type ShardOptions, type ShardSummary } from './shard/stage.js';
export { writeModelShards, type ModelShardOptions, type ModelShardSummary } from './shard/model-shards.js';
export { openShardSet, verifyShardSet } from './shard/read.js';
export type { ShardSet, ShardPair, ShardManifest, ShardSplit } from './shard/types.js';

// The loss and training.
export {
  aspoLoss, lossForward, lossGradients, lossConfig, DEFAULT_LOSS_CONFIG,
  type AspoLossConfig, type AspoLossOutput, type LossInputs, type LossValues,
} from './train/loss.js';
export { SftTrainer, runSft, readSftData, DEFAULT_SFT_OPTIONS, type SftOptions, type SftResult } from './train/sft.js';
export {
  PreferenceTrainer, runPreference, DEFAULT_PREFERENCE_OPTIONS,
  type PreferenceOptions, type PreferenceResult,
} from './train/preference.js';
export { StoreMetrics, MemoryMetrics, type MetricsSink } from './train/metrics.js';

// Rewards: per-sentence implicit rewards of a trained policy.
export {
  writeSentenceRewards, sentenceRewards, savedLossConfig,
  type RewardsOptions, type RewardsSummary, type SentenceReward, type PairLogProbs,
} from './rewards/rewards.js';

// Synthetic data with known truth, and hallucination evaluation.
export { synthesize, SYNTH_DEFAULTS, type SynthOptions, type SynthSummary } from './synth/synthesize.js';
export { evaluateGenerations, judgeDescriptions, type GenerationEval } from './synth/evaluate.js';
export { onPolicyPairs, ON_POLICY_DEFAULTS, type OnPolicyOptions, type OnPolicySummary } from './synth/on-policy.js';

// Export and report.
export {
  exportTable, exportTrl, exportAspoReference,
  type ExportSource, type TableExportOptions, type TrlExportOptions, type ExportSummary,
} from './export/export.js';
export { buildReport, writeReport, type Report, type ReportOptions } from './report/report.js';
