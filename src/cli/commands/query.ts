import { withStore } from '../../store/store.js';
import { formatArrow, formatCsv, formatJsonLines, formatTable, ROW_FORMATS, type RowFormat } from '../../export/rows.js';
import { DB_OPTION, parse, UsageError, type Command } from '../command.js';

export const command: Command = {
  usage: 'aspo query "SQL" [--db PATH] [--format table|csv|json|arrow]\n\n' +
    '  --format json writes JSON Lines (one object per row); arrow writes an Arrow IPC stream to stdout.\n' +
    '  The store is opened read-only: statements that write fail.',
  async run(argv) {
    const { values, positionals } = parse(argv, { ...DB_OPTION, format: { type: 'string', default: 'table' } }, true);
    const sql = positionals.join(' ').trim();
    if (!sql) throw new UsageError('give the SQL to run, e.g. aspo query "SELECT count(*) FROM pairs"');
    const format = values.format as RowFormat;
    if (!ROW_FORMATS.includes(format)) throw new UsageError(`--format must be one of ${ROW_FORMATS.join(', ')}`);
    await withStore(values.db, async (store) => {
      const { columns, rows } = await store.query(sql);
      if (format === 'table') process.stdout.write(formatTable(columns, rows));
      else if (format === 'csv') process.stdout.write(formatCsv(columns, rows));
      else if (format === 'json') process.stdout.write(formatJsonLines(rows));
      else process.stdout.write(formatArrow(columns, rows));
    }, { readOnly: true });
    return 0;
  },
};
