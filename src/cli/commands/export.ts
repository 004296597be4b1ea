import { withStore } from '../../store/store.js';
import {
  DEFAULT_EXPORT_MEMORY, DEFAULT_ROWS_PER_SHARD, exportAspoReference, exportTable, exportTrl, TABLE_FORMATS,
  type ExportSummary, type TableFormat,
} from '../../export/export.js';
import { stagingFolder } from '../../util/safe-output.js';
import { ASPO_REFERENCE_SCORES, TRL_LAYOUTS, type AspoReferenceScores, type TrlLayout } from '../../export/layouts.js';
import { DB_OPTION, JSON_OPTION, numberOption, parse, printJson, UsageError, type Command } from '../command.js';

const FORMATS = [...TABLE_FORMATS, 'trl', 'aspo-reference'] as const;

export const command: Command = {
  usage: 'aspo export (--table NAME | --sql "SELECT …") --format parquet|arrow|csv|jsonl --out FILE [--partition-by COL[,COL]]\n' +
    '       aspo export --format trl --out DIR [--layout conversational|plain] [--rows-per-shard N] [--alpha A] [--scale S] [--policy MODEL]\n' +
    '       aspo export --format aspo-reference --out DIR [--scores normalized|raw]\n' +
    '       [--db PATH] [--force] [--memory SIZE] [--json]\n\n' +
    '  Streams from the store (opened read-only) to files; memory stays bounded whatever the table size.\n' +
    '  --table/--sql: a table or view, or one read-only query. arrow writes an Arrow IPC file; csv and jsonl write\n' +
    '  bytes as base64. --partition-by (parquet): Hive-style folders OUT/col=value/data_0.parquet.\n' +
    `  trl: every pair as Parquet shards DIR/train-NNNNN-of-NNNNN.parquet (--rows-per-shard, default ${DEFAULT_ROWS_PER_SHARD})\n` +
    '  for Hugging Face datasets and TRL: prompt, chosen, rejected, images, and the ASPO columns chosen_sentence_spans,\n' +
    '  rejected_sentence_spans, chosen_sentence_weights (sentence_weights with --alpha/--scale) and, with --policy,\n' +
    '  chosen_sentence_rewards from sentence_rewards. --layout conversational (default): prompt, chosen and rejected\n' +
    '  are message lists with an image part, as TRL\'s vision datasets have them; plain: the stored strings.\n' +
    '  aspo-reference: DIR/pairs.json (the layout the ASPO authors\' LLaVA-1.5 trainer reads) and DIR/images/; only\n' +
    '  pairs with an image and a score for every sentence. --scores normalized (default): each response\'s scores\n' +
    '  min-max normalised as the authors\' pipeline does before training; raw: sentence_scores.similarity as stored.\n' +
    '  An existing output is replaced only with --force. --memory: DuckDB\'s memory limit (default ' + DEFAULT_EXPORT_MEMORY + ').\n' +
    '  See docs/export.md.',
  async run(argv) {
    const { values } = parse(argv, {
      ...DB_OPTION,
      table: { type: 'string' },
      sql: { type: 'string' },
      format: { type: 'string' },
      out: { type: 'string' },
      'partition-by': { type: 'string' },
      layout: { type: 'string' },
      scores: { type: 'string' },
      'rows-per-shard': { type: 'string' },
      alpha: { type: 'string' },
      scale: { type: 'string' },
      policy: { type: 'string' },
      force: { type: 'boolean', default: false },
      memory: { type: 'string' },
      ...JSON_OPTION,
    });
    const format = values.format;
    if (!format || !(FORMATS as readonly string[]).includes(format)) throw new UsageError(`--format must be one of ${FORMATS.join(', ')}`);
    if (!values.out) throw new UsageError('--out PATH is required');
    if (values.layout !== undefined && !(TRL_LAYOUTS as readonly string[]).includes(values.layout)) throw new UsageError(`--layout must be one of ${TRL_LAYOUTS.join(', ')}, got "${values.layout}"`);
    if (values.scores !== undefined && !(ASPO_REFERENCE_SCORES as readonly string[]).includes(values.scores)) throw new UsageError(`--scores must be one of ${ASPO_REFERENCE_SCORES.join(', ')}, got "${values.scores}"`);
    const common = { out: values.out, force: values.force, duckdbMemory: values.memory };
    const isTable = (TABLE_FORMATS as readonly string[]).includes(format);
    if (isTable && (values.table === undefined) === (values.sql === undefined)) throw new UsageError(`--format ${format} needs --table NAME or --sql "SELECT …" (one of them)`);
    if (!isTable && (values.table !== undefined || values.sql !== undefined)) throw new UsageError(`--format ${format} exports the pairs; --table and --sql do not apply`);
    const only: Record<string, string[]> = {
      'partition-by': [...TABLE_FORMATS], layout: ['trl'], 'rows-per-shard': ['trl'], alpha: ['trl'], scale: ['trl'],
      policy: ['trl'], scores: ['aspo-reference'],
    };
    const misplaced = Object.keys(only).find((name) => values[name as keyof typeof values] !== undefined && !only[name]!.includes(format));
    if (misplaced) throw new UsageError(`--${misplaced} does not apply to --format ${format}`);
    // Errors from here on (an output in the way, an unknown table or column, bad SQL) are not usage errors: their
    // message says what to do, without the usage text.
    const summary = await withStore(values.db, async (store): Promise<ExportSummary> => {
      if (format === 'trl') {
        return exportTrl(store, {
          ...common,
          layout: values.layout as TrlLayout | undefined,
          rowsPerShard: numberOption(values['rows-per-shard'], 'rows-per-shard', DEFAULT_ROWS_PER_SHARD),
          alpha: values.alpha === undefined ? undefined : numberOption(values.alpha, 'alpha', 0),
          scale: values.scale === undefined ? undefined : numberOption(values.scale, 'scale', 0),
          policy: values.policy,
        });
      }
      if (format === 'aspo-reference') return exportAspoReference(store, { ...common, scores: values.scores as AspoReferenceScores | undefined });
      const source = values.table !== undefined ? { table: values.table } : { sql: values.sql! };
      const partitionBy = values['partition-by']?.split(',').map((c) => c.trim()).filter(Boolean);
      return exportTable(store, source, { ...common, format: format as TableFormat, partitionBy });
      // DuckDB may write only into the output's staging folder, and read no file but the store.
    }, { readOnly: true, confine: { allowedDirectories: [stagingFolder(values.out)] } });
    const left = summary.leftOut;
    const reasons = left ? [
      left.textOnly ? `${left.textOnly} text-only` : '',
      left.noSentences ? `${left.noSentences} with a response without sentences (aspo segment --db)` : '',
      left.unscored ? `${left.unscored} with unscored sentences (aspo score)` : '',
    ].filter(Boolean) : [];
    const extra = reasons.length ? `; pairs the trainer cannot use, left out: ${reasons.join(', ')}` : '';
    process.stderr.write(`aspo export: ${summary.rows} rows to ${values.out} (${summary.files.length} file${summary.files.length === 1 ? '' : 's'}) ` +
      `in ${summary.seconds.toFixed(1)}s${extra}\n`);
    if (values.json) printJson(summary);
    return 0;
  },
};
