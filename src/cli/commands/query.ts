import { checkReadOnlySql, explain } from '../../store/read-only-sql.js';
import { withStore } from '../../store/store.js';
import { formatArrow, formatCsv, formatJsonLines, formatTable, ROW_FORMATS, type RowFormat } from '../../export/rows.js';
import { DB_OPTION, parse, UsageError, type Command } from '../command.js';

export const command: Command = {
  usage: 'aspo query "SQL" [--db PATH] [--format table|csv|json|arrow]\n\n' +
    '  --format json writes JSON Lines (one object per row); arrow writes an Arrow IPC stream to stdout.\n' +
    '  Runs exactly one read-only query (SELECT, FROM …, DESCRIBE, SUMMARIZE, SHOW, EXPLAIN) on the store, opened\n' +
    '  read-only and confined to itself: no COPY, ATTACH, INSTALL/LOAD, SET, PRAGMA or EXPORT, and no reading of other\n' +
    '  files (read_csv(\'…\') and the like). To write results to a file use aspo export --sql "SELECT …" --out FILE.',
  async run(argv) {
    const { values, positionals } = parse(argv, { ...DB_OPTION, format: { type: 'string', default: 'table' } }, true);
    const sql = positionals.join(' ').trim();
    if (!sql) throw new UsageError('give the SQL to run, e.g. aspo query "SELECT count(*) FROM pairs"');
    const format = values.format as RowFormat;
    if (!ROW_FORMATS.includes(format)) throw new UsageError(`--format must be one of ${ROW_FORMATS.join(', ')}`);
    await withStore(values.db, async (store) => {
      const checked = await checkReadOnlySql(store.connection, sql);
      const { columns, rows } = await store.query(checked).catch((error: Error) => {
        throw new Error(explain(error.message));
      });
      if (format === 'table') process.stdout.write(formatTable(columns, rows));
      else if (format === 'csv') process.stdout.write(formatCsv(columns, rows));
      else if (format === 'json') process.stdout.write(formatJsonLines(rows));
      else process.stdout.write(formatArrow(columns, rows));
    }, { readOnly: true, confine: { lockSettings: true } });
    return 0;
  },
};
