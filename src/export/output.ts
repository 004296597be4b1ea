/**
 * The export's error type and SQL text helpers for its COPY statements (where outputs go: util/safe-output.ts).
 */

/** A user mistake in an export request (bad option value, output in the way, unknown table). */
export class ExportError extends Error {}

export const quoteIdent = (name: string): string => `"${name.replaceAll('"', '""')}"`;
export const quoteString = (text: string): string => `'${text.replaceAll("'", "''")}'`;
