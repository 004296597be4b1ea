import { withStore } from '../../store/store.js';
import { segmentJsonLines } from '../../segment/jsonl.js';
import { segmentStage } from '../../segment/stage.js';
import { Progress } from '../progress.js';
import { JSON_OPTION, numberOption, parse, printJson, UsageError, type Command } from '../command.js';

export const command: Command = {
  usage: 'aspo segment [--strict] < in.jsonl > out.jsonl\n' +
    '       aspo segment --db PATH [--batch N] [--json]\n\n' +
    '  Without --db: reads JSON Lines {"id": string, "text": string} on stdin and writes one line per input line,\n' +
    '  {"id": ..., "sentences": [{"start", "end", "text"}]} (UTF-16 offsets), or {"id": ..., "error": "..."}.\n' +
    '  Lines with errors are answered and counted, and the exit code is 0 so a pipeline keeps its output; with\n' +
    '  --strict it is 3 when any line had an error (as aspo ingest --strict).\n' +
    '  With --db: segments the chosen and rejected response of every pair not yet segmented into the `sentences`\n' +
    '  table, marking sentences shared by both sides; --batch pairs are written per transaction (default 500).\n' +
    '  --json: the summary as one JSON object on stdout.',
  async run(argv) {
    const { values } = parse(argv, { db: { type: 'string' }, batch: { type: 'string' }, strict: { type: 'boolean', default: false }, ...JSON_OPTION });
    if (values.db === undefined) {
      if (values.batch !== undefined) throw new UsageError('--batch applies only with --db');
      if (values.json) throw new UsageError('--json applies only with --db (without it, stdout is the segmented lines)');
      if (process.stdin.isTTY) throw new UsageError('pipe JSON Lines into stdin, or pass --db PATH to segment a store');
      const { lines, errors } = await segmentJsonLines(process.stdin, process.stdout);
      if (errors > 0) process.stderr.write(`segment: ${errors} of ${lines} lines had errors (see their "error" field)\n`);
      return values.strict && errors > 0 ? 3 : 0;
    }
    if (values.strict) throw new UsageError('--strict applies to JSON Lines on stdin; with --db every pair is segmented');
    const batchSize = numberOption(values.batch, 'batch', 500);
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new UsageError('--batch must be a positive integer');
    const result = await withStore(values.db, async (store) => {
      const progress = new Progress({ label: 'segment', unit: 'pairs' });
      const result = await segmentStage(store, {
        batchSize,
        onStart: (pending) => progress.setTotal(pending),
        onBatch: ({ pairs, sentences }) => progress.at(pairs, `${sentences.toLocaleString('en-US')} sentences`),
      });
      progress.done(`${result.pairs} pairs segmented into ${result.sentences} sentences (${result.shared} shared by ` +
        `both sides), ${result.alreadyDone} pairs already done, in ${progress.seconds.toFixed(1)} s`);
      return { ...result, seconds: progress.seconds };
    });
    if (values.json) printJson(result);
    return 0;
  },
};
