import { withStore } from '../../store/store.js';
import { segmentJsonLines } from '../../segment/jsonl.js';
import { segmentStage } from '../../segment/stage.js';
import { Progress } from '../progress.js';
import { numberOption, parse, UsageError, type Command } from '../command.js';

export const command: Command = {
  usage: 'aspo segment < in.jsonl > out.jsonl\n' +
    '       aspo segment --db PATH [--batch N]\n\n' +
    '  Without --db: reads JSON Lines {"id": string, "text": string} on stdin and writes one line per input line,\n' +
    '  {"id": ..., "sentences": [{"start", "end", "text"}]} (UTF-16 offsets), or {"id": ..., "error": "..."}.\n' +
    '  With --db: segments the chosen and rejected response of every pair not yet segmented into the `sentences`\n' +
    '  table, marking sentences shared by both sides; --batch pairs are written per transaction (default 500).',
  async run(argv) {
    const { values } = parse(argv, { db: { type: 'string' }, batch: { type: 'string' } });
    if (values.db === undefined) {
      if (values.batch !== undefined) throw new UsageError('--batch applies only with --db');
      if (process.stdin.isTTY) throw new UsageError('pipe JSON Lines into stdin, or pass --db PATH to segment a store');
      const { lines, errors } = await segmentJsonLines(process.stdin, process.stdout);
      if (errors > 0) process.stderr.write(`segment: ${errors} of ${lines} lines had errors (see their "error" field)\n`);
      return 0;
    }
    const batchSize = numberOption(values.batch, 'batch', 500);
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new UsageError('--batch must be a positive integer');
    await withStore(values.db, async (store) => {
      const progress = new Progress({ label: 'segment', unit: 'pairs' });
      const result = await segmentStage(store, {
        batchSize,
        onStart: (pending) => progress.setTotal(pending),
        onBatch: ({ pairs, sentences }) => progress.at(pairs, `${sentences.toLocaleString('en-US')} sentences`),
      });
      progress.done(`${result.pairs} pairs segmented into ${result.sentences} sentences (${result.shared} shared by ` +
        `both sides), ${result.alreadyDone} pairs already done, in ${progress.seconds.toFixed(1)} s`);
    });
    return 0;
  },
};
