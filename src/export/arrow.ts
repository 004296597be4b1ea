/**
 * Query results to an Arrow IPC file, one DuckDB chunk at a time: each chunk becomes one record batch, which is on
 * disk before the next chunk is fetched.
 */
import { open, type FileHandle } from 'node:fs/promises';
import {
  AsyncByteQueue, Binary, Bool, DateDay, Field, Float32, Float64, Int8, Int16, Int32, Int64, List, RecordBatch, RecordBatchFileWriter,
  Schema, Struct, TimestampMicrosecond, Uint8, Uint16, Uint32, Uint64, Utf8, makeBuilder, makeData,
  type Data, type DataType,
} from 'apache-arrow';
import { DuckDBTypeId, JSDuckDBValueConverter, type DuckDBListType, type DuckDBStructType, type DuckDBType } from '@duckdb/node-api';
import type { Store } from '../store/store.js';

/** The Arrow type a DuckDB column is written as; types without an Arrow counterpart here are written as text. */
export function arrowType(type: DuckDBType): DataType {
  switch (type.typeId) {
    case DuckDBTypeId.BOOLEAN: return new Bool();
    case DuckDBTypeId.TINYINT: return new Int8();
    case DuckDBTypeId.SMALLINT: return new Int16();
    case DuckDBTypeId.INTEGER: return new Int32();
    case DuckDBTypeId.BIGINT: return new Int64();
    case DuckDBTypeId.UTINYINT: return new Uint8();
    case DuckDBTypeId.USMALLINT: return new Uint16();
    case DuckDBTypeId.UINTEGER: return new Uint32();
    case DuckDBTypeId.UBIGINT: return new Uint64();
    case DuckDBTypeId.FLOAT: return new Float32();
    case DuckDBTypeId.DOUBLE: return new Float64();
    case DuckDBTypeId.DECIMAL: return new Float64();
    case DuckDBTypeId.BLOB: return new Binary();
    case DuckDBTypeId.DATE: return new DateDay();
    case DuckDBTypeId.TIMESTAMP: return new TimestampMicrosecond();
    case DuckDBTypeId.LIST: return new List(new Field('item', arrowType((type as DuckDBListType).valueType), true));
    case DuckDBTypeId.STRUCT: {
      const struct = type as DuckDBStructType;
      return new Struct(struct.entryNames.map((name, i) => new Field(name, arrowType(struct.entryTypes[i]!), true)));
    }
    default: return new Utf8();
  }
}

/** A value as DuckDB's JS conversion gives it, shaped for an Arrow builder of `type`. */
function arrowValue(value: unknown, type: DataType): unknown {
  if (value === null || value === undefined) return null;
  if (type instanceof Utf8) return typeof value === 'string' ? value : String(value);
  if (type instanceof Float64 || type instanceof Float32) return Number(value);
  if (type instanceof Int64 || type instanceof Uint64) return BigInt(value as number | bigint);
  if (type instanceof TimestampMicrosecond) return (value as Date).getTime(); // builders take milliseconds
  if (type instanceof DateDay) return value as Date;
  if (type instanceof List) return (value as unknown[]).map((v) => arrowValue(v, type.children[0]!.type));
  if (type instanceof Struct) {
    const object = value as Record<string, unknown>;
    return Object.fromEntries(type.children.map((f) => [f.name, arrowValue(object[f.name], f.type)]));
  }
  return value;
}

/** One column of a chunk as a single Arrow data buffer (a builder, not vectorFromArray, which may split it). */
function columnData(values: unknown[], type: DataType): Data {
  const builder = makeBuilder({ type, nullValues: [null, undefined] });
  for (const value of values) builder.append(arrowValue(value, type));
  return builder.finish().flush();
}

/** Streams `sql` to an Arrow IPC file (the random-access format, `.arrow`); returns the rows written. */
export async function writeArrow(store: Store, sql: string, out: string): Promise<number> {
  const result = await store.connection.stream(sql);
  const names = result.columnNames();
  const types = result.columnTypes().map(arrowType);
  const schema = new Schema(names.map((name, i) => new Field(name, types[i]!, true)));
  const writer = new RecordBatchFileWriter();
  // The writer's own queue only empties as fast as a reader pulls, so a slow disk would let it grow by a batch per
  // chunk; this sink hands the bytes over synchronously and each batch is on disk before the next chunk is fetched.
  const sink = new CollectingSink();
  const file = await open(out, 'w');
  let rows = 0;
  try {
    writer.reset(sink, schema);
    for (let chunk = await result.fetchChunk(); chunk && chunk.rowCount > 0; chunk = await result.fetchChunk()) {
      const columns = chunk.convertColumns(JSDuckDBValueConverter);
      const children = columns.map((values, c) => columnData(values, types[c]!));
      const data = makeData({ type: new Struct(schema.fields), length: chunk.rowCount, nullCount: 0, children });
      writer.write(new RecordBatch(schema, data));
      rows += chunk.rowCount;
      await sink.flushTo(file);
    }
    writer.finish();
    await sink.flushTo(file);
  } finally {
    await file.close();
  }
  return rows;
}

/** A byte sink for the Arrow writer that keeps what it is given until it is flushed to a file. */
class CollectingSink extends AsyncByteQueue {
  private chunks: Uint8Array[] = [];

  // The writer passes Uint8Arrays: views of the batch's buffers and fresh metadata, none reused afterwards.
  override write(value: Uint8Array): void {
    if (value.byteLength) this.chunks.push(value);
  }

  async flushTo(file: FileHandle): Promise<void> {
    const chunks = this.chunks;
    this.chunks = [];
    for (const chunk of chunks) await file.write(chunk);
  }
}
