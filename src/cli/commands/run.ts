import { existsSync } from 'node:fs';
import path from 'node:path';
import { ingest } from '../../ingest/ingest.js';
import { segmentStage } from '../../segment/stage.js';
import { withStore } from '../../store/store.js';
import { synthesize } from '../../synth/synthesize.js';
import { DB_OPTION, parse, type Command } from '../command.js';
import { formatSummary } from './ingest.js';

/** Where the embedded default data lives: generated deterministically on the first run, then reused. */
export const DEFAULT_DATASET = path.join('datasets', 'synthetic-default');

export const command: Command = {
  usage: `aspo run [--db PATH] [--data DIR]

Runs the pipeline on the embedded default data: the synthetic world (generated into ${DEFAULT_DATASET} on the first
run, seed 1) → ingest → segment, into the store, and prints where to look next. Every stage is incremental: a second
run adds nothing and finishes quickly.`,
  async run(argv) {
    const { values } = parse(argv, { ...DB_OPTION, data: { type: 'string', default: DEFAULT_DATASET } });
    const log = (line: string) => process.stderr.write(`${line}\n`);
    const data = path.resolve(values.data);
    if (!existsSync(path.join(data, 'manifest.json'))) {
      const synth = await synthesize({ out: data, force: true, seed: 1 });
      log(`synth: ${synth.trainImages} training + ${synth.evalImages} evaluation images, ${synth.pairs} pairs → ${path.relative(process.cwd(), data)} (${synth.seconds.toFixed(1)} s)`);
    } else {
      log(`synth: using ${path.relative(process.cwd(), data)}`);
    }
    await withStore(values.db, async (store) => {
      const ingested = await ingest(store, [path.join(data, 'pairs.jsonl')]);
      log(`ingest: ${formatSummary(ingested)}`);
      const segmented = await segmentStage(store);
      log(`segment: ${segmented.pairs} pairs → ${segmented.sentences} sentences (${segmented.alreadyDone} pairs done before)`);
      const counts = await store.one<Record<string, number>>(`SELECT
        (SELECT count(*) FROM pairs) AS pairs, (SELECT count(*) FROM images) AS images,
        (SELECT count(*) FROM sentences) AS sentences, (SELECT count(*) FROM labels) AS labels,
        (SELECT count(*) FROM rejects) AS rejects`);
      const db = values.db;
      process.stdout.write([
        '',
        `Store ${path.resolve(db)}: ${Object.entries(counts ?? {}).map(([k, v]) => `${v} ${k}`).join(', ')}.`,
        '',
        'Try:',
        `  npx aspo query "SELECT side, count(*) AS sentences, avg(length(text)) AS avg_chars FROM sentences GROUP BY side" --db ${db}`,
        `  npx aspo query "SELECT l.label, count(*) AS sentences, avg(s.shared::INT) AS shared_with_rejected FROM sentences s JOIN labels l ON l.pair_id = s.pair_id AND l.side = s.side AND l.start < s.end AND s.start < l.end WHERE s.side = 'chosen' GROUP BY 1" --db ${db}`,
        `  npx aspo query "SELECT p.prompt, s.text FROM sentences s JOIN pairs p USING (pair_id) WHERE s.side = 'chosen' AND NOT s.shared LIMIT 5" --db ${db}`,
        '',
      ].join('\n'));
    });
    return 0;
  },
};
