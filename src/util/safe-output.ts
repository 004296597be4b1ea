/**
 * Safe outputs, shared by every command that writes files:
 * - an output never replaces one of the command's inputs (the store, a checkpoint, a shard set), even with --force;
 *   identity is checked by device and inode, so a hard link or another spelling of the path is caught too;
 * - an existing output is replaced only with --force, and a folder only when it holds nothing but that writer's files;
 * - an output appears only when complete: it is written in a staging folder beside its final place, fsynced, and
 *   renamed into place; a staging folder left by a killed run is removed by the next run;
 * - a folder written in place (a shard set) is held by a lock file, so a second concurrent writer is refused.
 */
import { closeSync, existsSync, fsyncSync, lstatSync, openSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import path from 'node:path';

/** An output that cannot be written where asked; the message says why and what to do. */
export class OutputError extends Error {}

export interface OutputOptions {
  /** Replace an existing output. */
  force?: boolean;
  /** The command's inputs (files or folders): never written, replaced or removed, even with force. */
  inputs?: readonly string[];
  /** For a folder output: whether a file (path relative to the folder, with `/`) is one this writer writes; force
   *  replaces a folder only when every file in it is. */
  ours?: (relativePath: string) => boolean;
  /** The option that names the output, for messages (default --out). */
  flag?: string;
}

const STAGING = /^\.(.+)\.aspo-partial-(\d+)$/;

/** Relative paths (with `/`) of every file under `dir`. */
export function filesUnder(dir: string, prefix = ''): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const relative = prefix ? `${prefix}/${entry.name}` : entry.name;
    return entry.isDirectory() ? filesUnder(path.join(dir, entry.name), relative) : [relative];
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The real path of `p`, or of its nearest existing parent joined with the rest. */
function realish(p: string): string {
  const absolute = path.resolve(p);
  if (existsSync(absolute)) return realpathSync(absolute);
  const parent = path.dirname(absolute);
  return parent === absolute ? absolute : path.join(realish(parent), path.basename(absolute));
}

const inside = (child: string, parent: string) => child === parent || child.startsWith(parent.endsWith(path.sep) ? parent : parent + path.sep);

/** Refuses `out` when it is, holds, or lies inside one of `inputs` (by real path, and by inode for files). */
export function checkNotInput(out: string, inputs: readonly string[], flag = '--out'): void {
  const target = realish(out);
  const targetStat = existsSync(target) ? statSync(target) : undefined;
  for (const input of inputs) {
    if (!existsSync(input)) {
      // Not there yet (a store's write-ahead log): a file written under its name would become it.
      if (realish(input) === target) throw new OutputError(`${flag} ${out} would overwrite this command's input ${input}; choose another ${flag}`);
      continue;
    }
    const source = realpathSync(input);
    const sourceStat = statSync(source);
    const same = targetStat && targetStat.dev === sourceStat.dev && targetStat.ino === sourceStat.ino;
    if (same || inside(target, source) || (targetStat?.isDirectory() && inside(source, target))) {
      throw new OutputError(`${flag} ${out} would overwrite this command's input ${input}; choose another ${flag} (--force never replaces an input)`);
    }
  }
}

/** The store's files: the database and its write-ahead log. */
export const storeFiles = (db: string): string[] => [db, `${db}.wal`];

/** Removes staging folders of `out` left by runs that no longer run (killed), so no partial output lingers. */
export async function removeOrphans(out: string): Promise<void> {
  const dir = path.dirname(path.resolve(out));
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) {
    const match = STAGING.exec(name);
    if (match && match[1] === path.basename(out) && !alive(Number(match[2]))) {
      await fs.rm(path.join(dir, name), { recursive: true, force: true });
    }
  }
}

/** fsyncs every file under `target` (or `target` itself), and the folders that hold them. */
function syncTree(target: string): void {
  const info = lstatSync(target);
  if (info.isDirectory()) for (const name of readdirSync(target)) syncTree(path.join(target, name));
  syncPath(target);
}

function syncPath(target: string): void {
  const fd = openSync(target, 'r');
  try {
    fsyncSync(fd);
  } catch {
    // Some file systems refuse fsync on folders; the renames are still atomic.
  } finally {
    closeSync(fd);
  }
}

/** The folder an output of this process is written in before it is moved into place. */
export function stagingFolder(out: string): string {
  const target = path.resolve(out);
  return path.join(path.dirname(target), `.${path.basename(target)}.aspo-partial-${process.pid}`);
}

/**
 * An output written in a staging folder and renamed into place when complete. Write to `path` (a file, or a folder
 * for a folder output), then `commit()`; on failure `discard()`.
 */
export class StagedOutput {
  private constructor(readonly out: string, readonly kind: 'file' | 'folder', readonly staging: string, readonly path: string,
    private readonly force: boolean) {}

  /** Checks `out` (see OutputOptions) and creates the staging folder. */
  static async create(out: string, kind: 'file' | 'folder', options: OutputOptions = {}): Promise<StagedOutput> {
    const flag = options.flag ?? '--out';
    const target = path.resolve(out);
    checkNotInput(target, options.inputs ?? [], flag);
    checkReplaceable(target, kind, options);
    await removeOrphans(target);
    await fs.mkdir(path.dirname(target), { recursive: true });
    const staging = stagingFolder(target);
    await fs.rm(staging, { recursive: true, force: true });
    await fs.mkdir(staging);
    const inner = path.join(staging, path.basename(target));
    if (kind === 'folder') await fs.mkdir(inner);
    return new StagedOutput(target, kind, staging, inner, options.force ?? false);
  }

  /** fsyncs what was written and moves it into place. Without force, an output that appeared meanwhile (another
   *  writer) is left alone and this one is refused. */
  async commit(): Promise<void> {
    syncTree(this.path);
    try {
      if (this.kind === 'file') {
        if (this.force) await fs.rename(this.path, this.out);
        else await fs.link(this.path, this.out); // fails, rather than replaces, if another writer got there first
      } else {
        if (existsSync(this.out)) {
          if (!this.force && filesUnder(this.out).length) throw Object.assign(new Error('exists'), { code: 'EEXIST' });
          await fs.rename(this.out, path.join(this.staging, '.replaced'));
        }
        await fs.rename(this.path, this.out);
      }
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST' || (error as NodeJS.ErrnoException).code === 'ENOTEMPTY') {
        await this.discard();
        throw new OutputError(`${this.out} appeared while this output was written (another writer?); it was left as it is and nothing was replaced`);
      }
      throw error;
    }
    syncPath(path.dirname(this.out));
    await this.discard();
  }

  async discard(): Promise<void> {
    await fs.rm(this.staging, { recursive: true, force: true });
  }
}

function checkReplaceable(target: string, kind: 'file' | 'folder', options: OutputOptions): void {
  const flag = options.flag ?? '--out';
  if (!existsSync(target)) return;
  const info = statSync(target);
  if (kind === 'file') {
    if (info.isDirectory()) throw new OutputError(`${flag} ${target} is a folder; this output is one file`);
    if (!options.force) throw new OutputError(`${flag} ${target} exists; pass --force to overwrite it`);
    return;
  }
  if (!info.isDirectory()) throw new OutputError(`${flag} ${target} is a file; this output is a folder`);
  const files = filesUnder(target);
  if (!files.length) return;
  if (!options.force) throw new OutputError(`${flag} ${target} is not empty; pass --force to replace the output in it`);
  const foreign = files.find((f) => !(options.ours?.(f) ?? false));
  if (foreign) throw new OutputError(`refusing to replace ${target}: it holds ${foreign}, which this command does not write; choose another ${flag}`);
}

/** Writes `data` to `file` so that it appears only complete: a temporary file beside it, fsynced, renamed. */
export async function writeFileAtomic(file: string, data: Uint8Array | string): Promise<void> {
  const temporary = path.join(path.dirname(file), `.${path.basename(file)}.aspo-partial-${process.pid}`);
  try {
    const handle = await fs.open(temporary, 'w');
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(temporary, file);
    syncPath(path.dirname(file));
  } catch (error) {
    await fs.rm(temporary, { force: true });
    throw error;
  }
}

/** Moves a complete file written elsewhere in the same folder into place, fsynced first. */
export async function commitFile(temporary: string, file: string): Promise<void> {
  syncPath(temporary);
  await fs.rename(temporary, file);
  syncPath(path.dirname(file));
}

/**
 * Takes the lock file of a folder written in place, or refuses when a live process holds it. A lock left by a
 * killed run is taken over. Returns the release function.
 */
export function lockFolder(dir: string, what: string): () => void {
  const lock = path.join(dir, LOCK_FILE);
  for (;;) {
    try {
      writeFileSync(lock, `${process.pid}\n`, { flag: 'wx' });
      return () => removeLock(lock, process.pid);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const holder = lockHolder(lock);
    if (holder !== undefined && alive(holder)) {
      throw new OutputError(`${dir} is being written by another ${what} (process ${holder}); wait for it to finish, or choose another --out`);
    }
    // A killed run's lock: remove it and race for it again (a concurrent taker loses the wx create above).
    removeLock(lock, holder);
  }
}

/** The lock file a folder written in place holds while a writer runs. */
export const LOCK_FILE = '.aspo-lock';

function lockHolder(lock: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(lock, 'utf8'), 10);
    return Number.isInteger(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Removes the lock file if it still names `pid`. */
function removeLock(lock: string, pid: number | undefined): void {
  if (lockHolder(lock) === pid) rmSync(lock, { force: true });
}
