/**
 * The one guard for SQL a user hands the toolkit (`aspo query`, `aspo export --sql`): exactly one read-only query.
 * Statement types are checked from DuckDB's own parser and binder, not by matching text; the commands also open the
 * store confined (see Store.open's `confine`), so that DuckDB itself refuses files outside the store, attached
 * databases, extensions and setting changes even if a statement got past this check.
 */
import { StatementType, type DuckDBConnection } from '@duckdb/node-api';

/** SQL refused by the guard; the message says what to use instead. */
export class ReadOnlySqlError extends Error {}

const EXPORT_INSTEAD = 'to write query results to a file, use aspo export --sql "SELECT …" --format parquet|arrow|csv|jsonl --out FILE';
const STAGES_INSTEAD = 'the store is changed only by the aspo stages (ingest, segment, score, rewards, train)';

/** Why each kind of statement is refused, and what to do instead. */
const REFUSED: Partial<Record<StatementType, string>> = {
  [StatementType.COPY]: `COPY writes files; ${EXPORT_INSTEAD}`,
  [StatementType.EXPORT]: `EXPORT DATABASE writes files; ${EXPORT_INSTEAD}`,
  [StatementType.COPY_DATABASE]: `COPY DATABASE writes another database; ${EXPORT_INSTEAD}`,
  [StatementType.ATTACH]: 'ATTACH opens other databases; query one store at a time with --db PATH',
  [StatementType.DETACH]: 'DETACH is not needed: no other database is attached',
  [StatementType.LOAD]: 'extensions cannot be installed or loaded here',
  [StatementType.EXTENSION]: 'extensions cannot be installed or loaded here',
  [StatementType.UPDATE_EXTENSIONS]: 'extensions cannot be installed or updated here',
  [StatementType.SET]: 'settings cannot be changed here',
  [StatementType.VARIABLE_SET]: 'settings and variables cannot be changed here',
  [StatementType.PRAGMA]: 'PRAGMA statements are not run here; for a table\'s columns use DESCRIBE name or SELECT * FROM pragma_table_info(\'name\')',
  [StatementType.CALL]: 'CALL is not run here; table functions can be read with SELECT * FROM name(…)',
};

/** Statement types by their first word, where that word decides it. */
const STATEMENT_WORDS: Record<string, StatementType> = {
  COPY: StatementType.COPY, EXPORT: StatementType.EXPORT, ATTACH: StatementType.ATTACH, DETACH: StatementType.DETACH,
  INSTALL: StatementType.LOAD, LOAD: StatementType.LOAD, FORCE: StatementType.LOAD, SET: StatementType.SET, RESET: StatementType.SET,
  PRAGMA: StatementType.PRAGMA, CALL: StatementType.CALL, INSERT: StatementType.INSERT, UPDATE: StatementType.UPDATE,
  DELETE: StatementType.DELETE, CREATE: StatementType.CREATE, DROP: StatementType.DROP, ALTER: StatementType.ALTER,
};

function refusal(what: string, type: StatementType): ReadOnlySqlError {
  return new ReadOnlySqlError(`${what} must be a read-only query (SELECT …), got a ${StatementType[type]} statement: ${REFUSED[type] ?? STAGES_INSTEAD}`);
}

/**
 * Checks that `sql` is exactly one read-only query (SELECT, FROM-first, DESCRIBE, SUMMARIZE, SHOW, VALUES, EXPLAIN)
 * without parameters, and returns it without a trailing semicolon. `what` names the SQL in messages (e.g. "--sql").
 */
export async function checkReadOnlySql(connection: DuckDBConnection, sql: string, what = 'the query'): Promise<string> {
  const text = sql.trim().replace(/;\s*$/, '');
  if (!text) throw new ReadOnlySqlError(`${what} is empty`);
  let statements;
  try {
    statements = await connection.extractStatements(text);
  } catch (error) {
    throw new ReadOnlySqlError(`${what} does not parse: ${(error as Error).message}`);
  }
  if (statements.count !== 1) {
    throw new ReadOnlySqlError(`${what} must be one query, got ${statements.count} statements; run them one at a time`);
  }
  // By its first word first: a confined store refuses to even bind a statement that touches a file (COPY … TO, ATTACH,
  // EXPORT), and DuckDB prepares some PRAGMAs as SELECTs. The statement type below is the check that cannot be fooled.
  const named = STATEMENT_WORDS[/^\s*([a-z]+)/i.exec(text)?.[1]?.toUpperCase() ?? ''];
  if (named !== undefined) throw refusal(what, named);
  let prepared;
  try {
    prepared = await statements.prepare(0);
  } catch (error) {
    throw new ReadOnlySqlError(`${what} fails: ${explain((error as Error).message)}`);
  }
  try {
    const type = prepared.statementType;
    if (type !== StatementType.SELECT && type !== StatementType.EXPLAIN) throw refusal(what, type);
    if (prepared.parameterCount) throw new ReadOnlySqlError(`${what} has parameters ($1, ?); write the values into the query`);
  } finally {
    prepared.destroySync();
  }
  return text;
}

/** DuckDB's message, with what to do instead when it refused a file outside the store. */
export function explain(message: string): string {
  return /operations are disabled by configuration/.test(message)
    ? `${message}. Only the store can be read here: load data files into it with aspo ingest, and write results with aspo export`
    : message;
}
