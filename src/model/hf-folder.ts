/** Local Hugging Face model folders (the transformers.js layout) as the scorers take them: check, identify. */
import { createHash } from 'node:crypto';
import { accessSync, constants, createReadStream, existsSync, statSync } from 'node:fs';
import path from 'node:path';

/** A value names a local model when it is an existing path or looks like one (starts with ".", "/" or "~"). */
export function isLocalModel(model: string): boolean {
  return existsSync(model) || /^(\.{1,2}[\\/]|[\\/]|~|[A-Za-z]:\\)/.test(model);
}

/**
 * Throws `fail(message)` unless `folder` is a readable folder holding every one of `files`. The message names the
 * folder, the missing or unreadable file, and `advice` (what a complete folder looks like and where to get one).
 */
export function checkModelFolder(folder: string, files: readonly string[], kind: string, advice: string,
  fail: (message: string) => Error): void {
  if (!existsSync(folder)) throw fail(`${kind} folder ${folder} does not exist. ${advice}`);
  if (!statSync(folder).isDirectory()) throw fail(`${folder} is a file, not a ${kind} folder. ${advice}`);
  const missing = files.filter((file) => !existsSync(path.join(folder, file)));
  if (missing.length) throw fail(`${kind} folder ${folder} is incomplete: missing ${missing.join(', ')}. ${advice}`);
  for (const file of files) {
    try {
      accessSync(path.join(folder, file), constants.R_OK);
    } catch {
      throw fail(`cannot read ${path.join(folder, file)} (check its permissions). ${advice}`);
    }
  }
}

/**
 * The sha256 (hex) over `files` of a local model folder (each file's name, then its bytes): what a queue worker
 * compares before it scores a job. Null for a Hub id (its files are wherever the library caches them).
 */
export async function modelDigest(model: string, files: readonly string[]): Promise<string | null> {
  if (!isLocalModel(model)) return null;
  const hash = createHash('sha256');
  for (const file of files) {
    hash.update(file);
    for await (const chunk of createReadStream(path.join(model, file))) hash.update(chunk as Buffer);
  }
  return hash.digest('hex');
}

/**
 * A model's identity: `id` in the score tables is the Hub id as given, or for a local folder its name and the first
 * 12 hex digits of its digest, so a changed model counts as a new one.
 */
export async function modelIdentity(model: string, files: readonly string[]): Promise<{ id: string; digest: string | null }> {
  const digest = await modelDigest(model, files);
  return { id: digest === null ? model : `${path.basename(path.resolve(model))}@${digest.slice(0, 12)}`, digest };
}

/** The model's id in the score tables (see modelIdentity). */
export async function modelId(model: string, files: readonly string[]): Promise<string> {
  return (await modelIdentity(model, files)).id;
}
