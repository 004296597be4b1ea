/**
 * Reading, validating and hashing pair images. Every image is fully decoded once with sharp (a truncated or corrupt
 * file fails here, not in training), bounded by a pixel limit against decompression bombs, and identified by the
 * sha256 of its bytes so each distinct image is stored once.
 */
import { sha256Hex } from '../util/hash.js';
import { constants } from 'node:fs';
import { open, readFile, realpath, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import sharp, { type OutputInfo } from 'sharp';
import type { ImageRef } from './rows.js';

export interface ImageOptions {
  /** Folder that relative paths resolve against and that no path may escape. */
  root: string;
  /** Downscale so that the longer side is at most this many pixels (aspect kept). */
  maxSide?: number;
  /** Refuse images with more pixels than this (default 64 MP). */
  maxPixels?: number;
}

export interface StoredImage {
  imageId: string;
  sha256: string;
  width: number;
  height: number;
  origWidth: number;
  origHeight: number;
  format: string;
  bytes: Uint8Array;
  origin: string;
}

/** An image that cannot be used; the message says why and what to do. */
export class ImageError extends Error {
  constructor(readonly code: 'missing' | 'refused' | 'unreadable', message: string) {
    super(message);
  }
}

export const DEFAULT_MAX_PIXELS = 64_000_000;


/** Resolves a path inside `root`, refusing anything that escapes it (`..`, absolute paths elsewhere, symlinks out). */
export async function resolveInside(root: string, ref: string): Promise<string> {
  return resolveInsideReal(await realpath(root), ref);
}

/** resolveInside for a root already resolved to its real path (a run resolves its root once, not per image). */
async function resolveInsideReal(realRoot: string, ref: string): Promise<string> {
  const candidate = path.resolve(realRoot, ref);
  let real: string;
  try {
    real = await realpath(candidate);
  } catch {
    throw missingImage(ref, realRoot);
  }
  refuseOutside(realRoot, real, ref);
  return real;
}

function missingImage(ref: string, realRoot: string): ImageError {
  return new ImageError('missing', `image file not found: ${ref} (looked in ${realRoot}; pass --images DIR for another folder)`);
}

function refuseOutside(realRoot: string, real: string, ref: string): void {
  const relative = path.relative(realRoot, real);
  if (relative.startsWith('..') || path.isAbsolute(relative)) {
    throw new ImageError('refused', `image path ${ref} resolves outside the image root ${realRoot}; refused`);
  }
}

/**
 * Where a run's image files are read from: the real path of the root and of each folder under it, resolved once each.
 * A file is opened without following a final symlink, so a plain file needs only its folder's (cached) real path to
 * be proven inside the root; a symlinked file is resolved in full.
 */
export class ImageRoot {
  private real: Promise<string> | undefined;
  private readonly folders = new Map<string, Promise<string | null>>();

  constructor(readonly root: string) {}

  realRoot(): Promise<string> {
    this.real ??= realpath(this.root).catch(() => {
      throw new Error(`image folder ${this.root} does not exist; pass --images DIR with the folder the image paths are relative to`);
    });
    return this.real;
  }

  async read(ref: string): Promise<Uint8Array> {
    const realRoot = await this.realRoot();
    const candidate = path.resolve(realRoot, ref);
    const folder = path.dirname(candidate);
    let realFolder = this.folders.get(folder);
    if (!realFolder) {
      realFolder = realpath(folder).catch(() => null);
      this.folders.set(folder, realFolder);
    }
    const resolvedFolder = await realFolder;
    if (resolvedFolder === null) throw missingImage(ref, realRoot);
    refuseOutside(realRoot, resolvedFolder, ref);
    let file: FileHandle;
    try {
      file = await open(path.join(resolvedFolder, path.basename(candidate)), constants.O_RDONLY | constants.O_NOFOLLOW);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw missingImage(ref, realRoot);
      // ELOOP: the file itself is a symlink, which may point anywhere
      if (code === 'ELOOP') return readImageFile(await resolveInsideReal(realRoot, ref), ref);
      throw unreadableImage(ref, error);
    }
    try {
      return await file.readFile();
    } catch (error) {
      throw unreadableImage(ref, error);
    } finally {
      await file.close();
    }
  }
}

function unreadableImage(ref: string, error: unknown): ImageError {
  return new ImageError('unreadable', `cannot read image ${ref}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
}

async function readImageFile(file: string, ref: string): Promise<Uint8Array> {
  try {
    return await readFile(file);
  } catch (error) {
    throw unreadableImage(ref, error);
  }
}

/** The bytes an image reference points at, with a label for where they came from. */
export async function loadImageBytes(ref: ImageRef, root: ImageRoot): Promise<{ bytes: Uint8Array; origin: string }> {
  if (ref.kind === 'url') throw new ImageError('refused', `image is a URL (${ref.url.slice(0, 80)}); no network fetches: download it and pass a path`);
  if (ref.kind === 'bytes') return { bytes: ref.bytes, origin: ref.path ?? '<bytes>' };
  return { bytes: await root.read(ref.path), origin: ref.path };
}

/** The common formats from their signatures, saving sharp a header parse; undefined for the rest. */
function sniffFormat(bytes: Uint8Array): string | undefined {
  const ascii = (from: number, to: number) => String.fromCharCode(...bytes.subarray(from, to));
  if (bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return 'jpeg';
  if (ascii(0, 8) === '\x89PNG\r\n\x1a\n') return 'png';
  if (ascii(0, 4) === 'RIFF' && ascii(8, 12) === 'WEBP') return 'webp';
  if (ascii(0, 4) === 'GIF8') return 'gif';
  return undefined;
}

/** Decodes, validates and (optionally) downscales image bytes. `imageId` is the sha256 of the original bytes. */
export async function decodeImage(bytes: Uint8Array, origin: string, options: Pick<ImageOptions, 'maxSide' | 'maxPixels'>,
  imageId = sha256Hex(bytes)): Promise<StoredImage> {
  const limitInputPixels = options.maxPixels ?? DEFAULT_MAX_PIXELS;
  let info: OutputInfo;
  let format = sniffFormat(bytes);
  try {
    const image = sharp(bytes, { limitInputPixels, failOn: 'error' });
    format ??= (await image.metadata()).format;
    // Every pixel is decoded (so truncation and corruption anywhere fail here), but only one band is copied out:
    // the pixels themselves are not needed, and the copy into JavaScript is a tenth of the decoding time.
    ({ info } = await image.extractChannel(0).raw().toBuffer({ resolveWithObject: true }));
  } catch (error) {
    const message = (error as Error).message;
    if (/pixel limit/i.test(message)) throw new ImageError('refused', `image ${origin} has more than ${limitInputPixels} pixels; refused (raise --max-pixels if it is genuine)`);
    throw new ImageError('unreadable', `image ${origin} cannot be decoded: ${message}`);
  }
  if (!format) throw new ImageError('unreadable', `image ${origin}: unknown image format`);
  const stored: StoredImage = {
    imageId, sha256: imageId, width: info.width, height: info.height, origWidth: info.width, origHeight: info.height,
    format, bytes, origin,
  };
  const { maxSide } = options;
  if (maxSide && Math.max(info.width, info.height) > maxSide) {
    const keepFormat = ['jpeg', 'png', 'webp'].includes(format) ? format as 'jpeg' | 'png' | 'webp' : 'png';
    const { data, info: resized } = await sharp(bytes, { limitInputPixels })
      .resize({ width: maxSide, height: maxSide, fit: 'inside' })
      .toFormat(keepFormat)
      .toBuffer({ resolveWithObject: true });
    Object.assign(stored, { bytes: data, sha256: sha256Hex(data), width: resized.width, height: resized.height, format: keepFormat });
  }
  return stored;
}
