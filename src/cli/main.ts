#!/usr/bin/env node
import '../schema.js'; // every stage's tables, for the store
import { readFileSync } from 'node:fs';
import { closest, UsageError, type Command } from './command.js';

/** The package's version, from the package.json beside dist/. */
function version(): string {
  return (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
}

/** Subcommands, loaded on demand so that `aspo query` never pays for TensorFlow.js. */
const COMMANDS: Record<string, { summary: string; load: () => Promise<Command> }> = {
  run: {
    summary: 'run the whole pipeline on the bundled default data (what `npm start` does)',
    load: async () => (await import('./commands/run.js')).command,
  },
  ingest: {
    summary: 'read preference datasets (JSON Lines, JSON, Parquet, Arrow IPC) into the store',
    load: async () => (await import('./commands/ingest.js')).command,
  },
  segment: {
    summary: 'split responses into sentences with offsets (JSON Lines stdin→stdout, or every pair in --db)',
    load: async () => (await import('./commands/segment.js')).command,
  },
  synth: {
    summary: 'generate a synthetic world: images, true descriptions, sentence-labelled preference pairs',
    load: async () => (await import('./commands/synth.js')).command,
  },
  score: {
    summary: 'score each sentence: CLIP similarity, or perplexity and grounding under a reference model (sentence_scores, sentence_weights)',
    load: async () => (await import('./commands/score.js')).command,
  },
  worker: {
    summary: 'serve the jobs of `aspo score --queue` on this machine (distributed scoring on BullMQ and Redis)',
    load: async () => (await import('./commands/worker.js')).command,
  },
  queue: {
    summary: 'show (status) or delete (clear) the queue of a distributed scoring run',
    load: async () => (await import('./commands/queue.js')).command,
  },
  train: {
    summary: 'train the small vision-language model: --objective sft (the reference model), dpo or aspo (sentence-level preference optimization)',
    load: async () => (await import('./commands/train.js')).command,
  },
  evaluate: {
    summary: 'describe held-out synthetic images with a model and measure its hallucination rate',
    load: async () => (await import('./commands/evaluate.js')).command,
  },
  shard: { summary: 'write training shards (Arrow IPC or Parquet) of the segmented pairs, with a verifiable manifest', load: async () => (await import('./commands/shard.js')).command },
  rewards: {
    summary: 'write the implicit reward of every sentence under a trained policy, from shards (sentence_rewards)',
    load: async () => (await import('./commands/rewards.js')).command,
  },
  query: {
    summary: 'run a read-only SQL query against the store and print the result',
    load: async () => (await import('./commands/query.js')).command,
  },
  report: { summary: 'write a self-contained HTML report of a store (counts, distributions, ROC, training curves)', load: async () => (await import('./commands/report.js')).command },
  export: {
    summary: 'write a table or query (Parquet, Arrow, CSV, JSON Lines) or the pairs as a TRL or ASPO-reference dataset',
    load: async () => (await import('./commands/export.js')).command,
  },
  loss: {
    summary: 'evaluate the sentence-level (ASPO) or DPO loss and its gradients on JSON cases from stdin',
    load: async () => (await import('./commands/loss.js')).command,
  },
};

function help(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((name) => name.length));
  return [
    'aspo — sentence-level preference optimization (ASPO) for multimodal models',
    '',
    'Usage: aspo <command> [options]      (aspo <command> --help for its options)',
    '',
    'Commands:',
    ...Object.keys(COMMANDS).map((name) => `  ${name.padEnd(width)}  ${COMMANDS[name]!.summary}`),
    '',
    'Every command that reads or writes data takes --db PATH (default ./aspo.duckdb). aspo --version prints the version.',
  ].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(help() + '\n');
    return name ? 0 : 1;
  }
  if (name === '--version' || name === '-v' || name === 'version') {
    process.stdout.write(`${version()}\n`);
    return 0;
  }
  const entry = COMMANDS[name];
  if (!entry) {
    const meant = closest(name, Object.keys(COMMANDS));
    process.stderr.write(meant ? `aspo: unknown command "${name}"; did you mean "${meant}"?\n`
      : `aspo: unknown command "${name}"\n\n${help()}\n`);
    return 2;
  }
  const command = await entry.load();
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`${entry.summary}\n\nUsage: ${command.usage}\n`);
    return 0;
  }
  try {
    return await command.run(rest);
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`aspo ${name}: ${error.message}\n\nUsage: ${command.usage}\n`);
      return 2;
    }
    process.stderr.write(`aspo ${name}: ${(error as Error).message}\n`);
    if (process.env.ASPO_DEBUG) process.stderr.write(`${(error as Error).stack}\n`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
