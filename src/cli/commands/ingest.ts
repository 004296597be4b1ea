import { checkInputFiles, DEFAULT_BATCH_SIZE, DEFAULT_COMMIT_ROWS, formatIngestSummary, ingest, type IngestSummary } from '../../ingest/ingest.js';
import { FILE_FORMATS, type FileFormat } from '../../ingest/readers.js';
import { ROW_LAYOUTS, type RowLayout } from '../../ingest/rows.js';
import { existsSync, rmSync } from 'node:fs';
import { withStore, type Store } from '../../store/store.js';
import { DB_OPTION, JSON_OPTION, numberOption, parse, printJson, UsageError, type Command } from '../command.js';
import { Progress } from '../progress.js';

export const command: Command = {
  usage: `aspo ingest FILE... [--db PATH] [options]

  --format F          ${['auto', ...FILE_FORMATS].join('|')} (default: from the file name or first bytes)
  --layout L          ${['auto', ...ROW_LAYOUTS].join('|')} (default: detected per row)
  --images DIR        folder that relative image paths resolve against (default: the dataset file's folder)
  --image-field NAME  read the image from this field instead of image / images / image_path
  --missing-images M  reject|drop: a missing image file rejects the row (default) or keeps the pair text-only
  --max-side N        downscale stored images so the longer side is at most N pixels
  --max-pixels N      refuse images with more pixels (default 64000000)
  --batch-size N      rows read and written at a time (default 5000)
  --commit-rows N     rows per transaction (default 100000); a killed run redoes at most this many
  --duckdb-memory M   DuckDB's memory limit while ingesting (default 512MB)
  --no-fast-path      read every row in JavaScript (by default DuckDB reads simple JSON Lines rows itself: same result, faster)
  --strict            exit with status 3 if any row was rejected
  --json              the summary as one JSON object on stdout

Rejected rows are kept in the rejects table with the reason:
  aspo query "SELECT source_row, field, reason FROM rejects WHERE stage = 'ingest'"`,
  async run(argv) {
    const { values, positionals } = parse(argv, {
      ...DB_OPTION,
      format: { type: 'string', default: 'auto' },
      layout: { type: 'string', default: 'auto' },
      images: { type: 'string' },
      'image-field': { type: 'string' },
      'missing-images': { type: 'string', default: 'reject' },
      'max-side': { type: 'string' },
      'max-pixels': { type: 'string' },
      'batch-size': { type: 'string' },
      'commit-rows': { type: 'string' },
      'duckdb-memory': { type: 'string' },
      strict: { type: 'boolean', default: false },
      ...JSON_OPTION,
      'no-fast-path': { type: 'boolean', default: false },
    }, true);
    if (!positionals.length) throw new UsageError('give at least one dataset file');
    const format = values.format as FileFormat | 'auto';
    if (format !== 'auto' && !FILE_FORMATS.includes(format)) throw new UsageError(`--format must be one of auto, ${FILE_FORMATS.join(', ')}`);
    const layout = values.layout as RowLayout | 'auto';
    if (layout !== 'auto' && !ROW_LAYOUTS.includes(layout)) throw new UsageError(`--layout must be one of auto, ${ROW_LAYOUTS.join(', ')}`);
    const missingImages = values['missing-images'];
    if (missingImages !== 'reject' && missingImages !== 'drop') throw new UsageError('--missing-images must be reject or drop');
    // Before the store is opened: a missing or unreadable input must not leave a new, empty store behind.
    await checkInputFiles(positionals, { format });
    const progress = new Progress({ label: 'ingest', unit: 'rows' });
    const newStore = !existsSync(values.db);
    // A failed first ingest that stored nothing removes the store it created, rather than leave an empty one behind.
    let removeStore = false;
    const summary: IngestSummary = await withStore(values.db, (store) => ingest(store, positionals, {
      format, layout, missingImages,
      fastPath: !values['no-fast-path'],
      images: values.images,
      imageField: values['image-field'],
      maxSide: values['max-side'] === undefined ? undefined : numberOption(values['max-side'], 'max-side', 0),
      maxPixels: values['max-pixels'] === undefined ? undefined : numberOption(values['max-pixels'], 'max-pixels', 0),
      batchSize: numberOption(values['batch-size'], 'batch-size', DEFAULT_BATCH_SIZE),
      commitRows: numberOption(values['commit-rows'], 'commit-rows', DEFAULT_COMMIT_ROWS),
      duckdbMemory: values['duckdb-memory'],
      onProgress: ({ rows, bytesRead, totalBytes }) => {
        progress.at(rows, `${(bytesRead / 1e6).toFixed(1)}/${(totalBytes / 1e6).toFixed(1)} MB`);
      },
    }).catch(async (error: unknown) => {
      removeStore = newStore && await holdsNothing(store);
      throw error;
    })).catch((error: unknown) => {
      if (removeStore) for (const file of [values.db, `${values.db}.wal`]) rmSync(file, { force: true });
      throw error;
    });
    progress.done(formatIngestSummary(summary));
    if (summary.rejected) {
      process.stderr.write(`ingest: ${summary.rejected} row(s) rejected; see them with: aspo query "SELECT source, source_row, field, reason FROM rejects" --db ${values.db}\n`);
    }
    if (values.json) printJson(summary);
    return values.strict && summary.rejected ? 3 : 0;
  },
};

/** Whether a store holds nothing an ingest wrote (no pair, no reject). */
async function holdsNothing(store: Store): Promise<boolean> {
  return Number(await store.scalar('SELECT (SELECT count(*) FROM pairs) + (SELECT count(*) FROM rejects)')) === 0;
}
