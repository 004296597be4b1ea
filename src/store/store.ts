import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { DuckDBInstance, type DuckDBAppender, type DuckDBConnection, type DuckDBValue } from '@duckdb/node-api';
import { migrate } from './migrations.js';

export const DEFAULT_DB_PATH = 'aspo.duckdb';

export type Params = DuckDBValue[] | Record<string, DuckDBValue>;

export type ColumnKind = 'varchar' | 'integer' | 'bigint' | 'double' | 'boolean' | 'blob';

const APPEND: Record<ColumnKind, (appender: DuckDBAppender, value: unknown) => void> = {
  varchar: (a, v) => a.appendVarchar(v as string),
  integer: (a, v) => a.appendInteger(v as number),
  bigint: (a, v) => a.appendBigInt(BigInt(v as number)),
  double: (a, v) => a.appendDouble(v as number),
  boolean: (a, v) => a.appendBoolean(v as boolean),
  blob: (a, v) => a.appendBlob(v as Uint8Array),
};

/** DuckDB column types → how the appender writes them (JSON is text to the appender). */
const KIND_OF_TYPE: Record<string, ColumnKind> = {
  VARCHAR: 'varchar', JSON: 'varchar', INTEGER: 'integer', BIGINT: 'bigint', DOUBLE: 'double', BOOLEAN: 'boolean', BLOB: 'blob',
};

/** A table's columns in order with their appender kinds, and its primary key. */
interface TableShape { columns: { name: string; kind: ColumnKind | undefined }[]; key: string[] }

export interface OpenOptions {
  /** Open without write access; migrations are not applied. */
  readOnly?: boolean;
  /**
   * Confine DuckDB to the store itself: no other file is read or written (but those under `allowedDirectories`), no
   * database attached, no extension installed or loaded; with `lockSettings`, no setting can change afterwards. For
   * SQL that comes from the user (`aspo query`, `aspo export --sql`). It lasts as long as the store is open.
   */
  confine?: { allowedDirectories?: string[]; lockSettings?: boolean };
}

/**
 * The toolkit's one DuckDB database file. Every stage reads from and writes to it.
 * Opening a writable store brings its schema up to date (see migrations.ts).
 */
export class Store {
  private constructor(
    readonly path: string,
    private readonly instance: DuckDBInstance,
    readonly connection: DuckDBConnection,
  ) {}

  private inTransaction = false;
  private readonly shapes = new Map<string, TableShape>();

  static async open(path: string = DEFAULT_DB_PATH, options: OpenOptions = {}): Promise<Store> {
    checkStoreFile(path);
    let instance: DuckDBInstance;
    try {
      instance = await DuckDBInstance.create(path, {
        ...(options.readOnly ? { access_mode: 'READ_ONLY' } : {}),
        ...(options.confine ? { autoinstall_known_extensions: 'false', autoload_known_extensions: 'false' } : {}),
      });
    } catch (error) {
      const message = (error as Error).message;
      const holder = /Conflicting lock is held in .*\(PID (\d+)\)/.exec(message)?.[1];
      if (holder) {
        throw new Error(`store ${path} is in use by another process (PID ${holder}), which is writing to it; one writer at a time: ` +
          'wait for it to finish, then run this again');
      }
      throw new Error(`cannot open store ${path}: ${message}` +
        (options.readOnly ? ' (run `aspo ingest` first to create it, or pass --db PATH)' : ''));
    }
    const store = new Store(path, instance, await instance.connect());
    if (!options.readOnly) await migrate(store);
    if (options.confine) await confine(store, options.confine);
    return store;
  }

  async run(sql: string, params?: Params): Promise<void> {
    await this.connection.run(sql, params);
  }

  /** Rows as plain objects; BIGINT values within ±2^53 come back as numbers. */
  async all<T = Record<string, unknown>>(sql: string, params?: Params): Promise<T[]> {
    return (await this.query(sql, params)).rows as T[];
  }

  /** Column names and rows of a query, for callers that print or export results. */
  async query(sql: string, params?: Params): Promise<{ columns: string[]; rows: Record<string, unknown>[] }> {
    const reader = await this.connection.runAndReadAll(sql, params);
    return { columns: reader.columnNames(), rows: reader.getRowObjectsJS().map(plainRow) };
  }

  async one<T = Record<string, unknown>>(sql: string, params?: Params): Promise<T | undefined> {
    return (await this.all<T>(sql, params))[0];
  }

  async scalar<T = unknown>(sql: string, params?: Params): Promise<T> {
    const reader = await this.connection.runAndReadAll(sql, params);
    return plainValue(reader.getRowsJS()[0]?.[0]) as T;
  }

  /** Runs `work` inside one transaction: all of it lands, or none of it. */
  async transaction<T>(work: () => Promise<T>): Promise<T> {
    await this.run('BEGIN TRANSACTION');
    this.inTransaction = true;
    try {
      const result = await work();
      await this.run('COMMIT');
      return result;
    } catch (error) {
      await this.run('ROLLBACK');
      throw error;
    } finally {
      this.inTransaction = false;
    }
  }

  /**
   * Inserts `rows` into `table`, and where a row's primary key is already there, updates that row's columns named in
   * `rows` (other columns keep their values). Rows are objects keyed by column name, every row with the same keys; the
   * column types and the key come from the table itself, so a caller names each column once. One transaction (or
   * the caller's, when called inside `transaction`).
   */
  async upsert(table: string, rows: readonly Record<string, unknown>[]): Promise<void> {
    if (!rows.length) return;
    const shape = await this.shape(table);
    const names = Object.keys(rows[0]!);
    for (const name of names) {
      if (!shape.columns.some((c) => c.name === name)) throw new Error(`upsert into ${table}: no column ${name}`);
    }
    for (const name of shape.key) {
      if (!names.includes(name)) throw new Error(`upsert into ${table}: rows lack the key column ${name}`);
    }
    const kinds = shape.columns.map((c) => {
      if (!names.includes(c.name)) return 'varchar' as const; // appended as NULL, never read
      if (!c.kind) throw new Error(`upsert into ${table}: column ${c.name} has a type the appender does not write`);
      return c.kind;
    });
    const staging = `upsert_${table}`;
    await this.run(`CREATE TEMP TABLE IF NOT EXISTS ${staging} AS SELECT * FROM ${table} LIMIT 0`);
    const quoted = names.map((n) => `"${n}"`).join(', ');
    const updates = names.filter((n) => !shape.key.includes(n)).map((n) => `"${n}" = excluded."${n}"`);
    const write = async (): Promise<void> => {
      await this.run(`DELETE FROM ${staging}`);
      await this.append(staging, kinds, rows.map((row) => shape.columns.map((c) => row[c.name])), true);
      await this.run(`INSERT INTO ${table} (${quoted}) SELECT ${quoted} FROM ${staging}` + (shape.key.length === 0 ? ''
        : ` ON CONFLICT (${shape.key.map((k) => `"${k}"`).join(', ')}) DO ${updates.length ? `UPDATE SET ${updates.join(', ')}` : 'NOTHING'}`));
    };
    if (this.inTransaction) await write();
    else await this.transaction(write);
  }

  private async shape(table: string): Promise<TableShape> {
    let shape = this.shapes.get(table);
    if (!shape) {
      const columns = await this.all<{ name: string; type: string }>(`SELECT column_name AS name, data_type AS type FROM duckdb_columns()
        WHERE table_name = $1 AND schema_name = 'main' AND NOT internal ORDER BY column_index`, [table]);
      if (!columns.length) throw new Error(`upsert: no table ${table}`);
      const key = await this.one<{ key: string[] }>(`SELECT constraint_column_names AS key FROM duckdb_constraints()
        WHERE table_name = $1 AND schema_name = 'main' AND constraint_type = 'PRIMARY KEY'`, [table]);
      shape = { columns: columns.map((c) => ({ name: c.name, kind: KIND_OF_TYPE[c.type] })), key: key?.key ?? [] };
      this.shapes.set(table, shape);
    }
    return shape;
  }

  /**
   * Bulk-appends rows to a table through DuckDB's appender (the fast path for flat rows).
   * `kinds` gives each column's type in table order; null or undefined values are appended as NULL.
   */
  async append(table: string, kinds: readonly ColumnKind[], rows: readonly (readonly unknown[])[], temp = false): Promise<void> {
    if (!rows.length) return;
    const appender = temp ? await this.connection.createAppender(table, 'main', 'temp') : await this.connection.createAppender(table);
    try {
      for (const row of rows) {
        for (let c = 0; c < kinds.length; c++) {
          const value = row[c];
          if (value === null || value === undefined) appender.appendNull();
          else APPEND[kinds[c]!](appender, value);
        }
        appender.endRow();
      }
      appender.flushSync();
    } finally {
      appender.closeSync();
    }
  }

  async tableExists(name: string): Promise<boolean> {
    const n = await this.scalar<number | bigint>(
      "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]);
    return Number(n) > 0;
  }

  close(): void {
    this.connection.closeSync();
    this.instance.closeSync();
  }
}

/**
 * Refuses a path that holds something other than a DuckDB database (a dataset file given as --db by mistake, a
 * folder), which DuckDB would otherwise open as a fresh in-memory database that saves nothing.
 */
export function checkStoreFile(path: string): void {
  if (path === ':memory:' || path === '') return;
  let size: number;
  try {
    const info = statSync(path);
    if (info.isDirectory()) throw new Error(`--db ${path} is a folder; give the store's file name (e.g. ${path}/aspo.duckdb)`);
    size = info.size;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return; // a new store
    throw error;
  }
  if (size === 0) return;
  const head = Buffer.alloc(12);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, head, 0, 12, 0);
  } finally {
    closeSync(fd);
  }
  if (head.toString('latin1', 8, 12) !== 'DUCK') {
    throw new Error(`--db ${path} is not a DuckDB database (is it a dataset file?); it was left untouched. ` +
      'Give the store a path of its own, e.g. --db aspo.duckdb');
  }
}

async function confine(store: Store, { allowedDirectories = [], lockSettings = false }: NonNullable<OpenOptions['confine']>): Promise<void> {
  const quote = (text: string) => `'${text.replaceAll("'", "''")}'`;
  const directories = allowedDirectories.map((dir) => (dir.endsWith('/') ? dir : `${dir}/`));
  if (directories.length) await store.run(`SET allowed_directories = [${directories.map(quote).join(', ')}]`);
  // Once off, DuckDB's external access cannot be turned back on while the database is open.
  await store.run('SET enable_external_access = false');
  if (lockSettings) await store.run('SET lock_configuration = true');
}

/** Opens a store, runs `work`, and always closes it. */
export async function withStore<T>(path: string, work: (store: Store) => Promise<T>, options: OpenOptions = {}): Promise<T> {
  const store = await Store.open(path, options);
  try {
    return await work(store);
  } finally {
    store.close();
  }
}

function plainValue(value: unknown): unknown {
  if (typeof value === 'bigint' && value <= BigInt(Number.MAX_SAFE_INTEGER) && value >= BigInt(Number.MIN_SAFE_INTEGER)) {
    return Number(value);
  }
  return value;
}

function plainRow(row: Record<string, unknown>): Record<string, unknown> {
  for (const key of Object.keys(row)) row[key] = plainValue(row[key]);
  return row;
}
