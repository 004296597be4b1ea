import { createInterface } from 'node:readline';
import { once } from 'node:events';
import { segment, type Sentence } from './segment.js';

/** One output record of `aspo segment`'s JSON Lines mode. */
export type SegmentedLine = { id: string; sentences: Sentence[] } | { id: unknown; error: string };

/** Segments one input line `{"id": string, "text": string}`; a bad line yields an error naming the field. */
export function segmentLine(line: string): SegmentedLine {
  let record: unknown;
  try {
    record = JSON.parse(line);
  } catch (error) {
    return { id: null, error: `invalid JSON: ${(error as Error).message}` };
  }
  if (typeof record !== 'object' || record === null || Array.isArray(record)) {
    return { id: null, error: 'expected a JSON object {"id": string, "text": string}' };
  }
  const { id, text } = record as { id?: unknown; text?: unknown };
  if (typeof id !== 'string') return { id: id ?? null, error: `field "id" must be a string, got ${describe(id)}` };
  if (typeof text !== 'string') return { id, error: `field "text" must be a string, got ${describe(text)}` };
  return { id, sentences: segment(text) };
}

/** Writes one output line per input line, in order; a bad line gets an error object and the stream goes on. */
export async function segmentJsonLines(input: NodeJS.ReadableStream, output: NodeJS.WritableStream): Promise<{ lines: number; errors: number }> {
  const counts = { lines: 0, errors: 0 };
  let buffer = '';
  for await (const line of createInterface({ input, crlfDelay: Infinity })) {
    const result = segmentLine(line);
    counts.lines++;
    if ('error' in result) counts.errors++;
    buffer += JSON.stringify(result) + '\n';
    if (buffer.length >= 1 << 16) {
      if (!output.write(buffer)) await once(output, 'drain');
      buffer = '';
    }
  }
  if (buffer && !output.write(buffer)) await once(output, 'drain');
  return counts;
}

function describe(value: unknown): string {
  if (value === undefined) return 'nothing (missing)';
  if (value === null) return 'null';
  return Array.isArray(value) ? 'an array' : `a ${typeof value}`;
}
