/**
 * Images → model input: decoded with sharp, alpha flattened on white, resized to the
 * model's square size, RGB, scaled to [-1, 1]. Decoding happens once per image; the
 * trainer keeps the small float arrays and stacks them per batch.
 */
import sharp from 'sharp';
import { tf } from './backend.js';

/** [size·size·3] floats in [-1, 1], row-major HWC. */
export async function loadImagePixels(source: string | Buffer, size: number): Promise<Float32Array> {
  let raw: Buffer;
  try {
    raw = await sharp(source).flatten({ background: '#ffffff' }).removeAlpha()
      .resize(size, size, { fit: 'fill' }).toColourspace('srgb').raw().toBuffer();
  } catch (error) {
    const name = typeof source === 'string' ? source : '<bytes>';
    throw new Error(`cannot read image ${name}: ${(error as Error).message}`);
  }
  if (raw.length !== size * size * 3) throw new Error(`image decoded to ${raw.length} bytes, expected ${size * size * 3}`);
  return pixelsToInput(raw);
}

/** 8-bit RGB → [-1, 1]. */
export function pixelsToInput(raw: Uint8Array): Float32Array {
  const out = new Float32Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw[i]! / 127.5 - 1;
  return out;
}

/** Stacks per-image arrays into a [B, size, size, 3] tensor; null entries (no image) become zeros. */
export function stackImages(images: Array<Float32Array | null>, size: number): tf.Tensor4D {
  const per = size * size * 3;
  const data = new Float32Array(images.length * per);
  images.forEach((image, i) => {
    if (image) {
      if (image.length !== per) throw new Error(`image ${i} has ${image.length} values, expected ${per}`);
      data.set(image, i * per);
    }
  });
  return tf.tensor4d(data, [images.length, size, size, 3]);
}

/** Where a cache finds an image's bytes (or a file path) by its key: the store, a shard set, files. */
export type ImageSource = (key: string) => Promise<Uint8Array | string>;

/**
 * The one cache of decoded images: each (key, size) is decoded once, however many rows, sides or models ask. A failed
 * decode is remembered too, and every `get` of it rejects with the same error (callers add which pair or row).
 * It keeps what it decoded for as long as it lives: make one per batch where a stream must stay within memory.
 */
export class PixelCache {
  private readonly pixels = new Map<string, Promise<Float32Array>>();

  /** `source` gives an image's bytes, or a file path, by key; by default the key is the path itself. */
  constructor(private readonly source: ImageSource = async (key) => key) {}

  /** The image's model input at `size`×`size`. */
  get(key: string, size: number): Promise<Float32Array> {
    const cacheKey = `${size}:${key}`;
    let decoding = this.pixels.get(cacheKey);
    if (!decoding) {
      decoding = this.source(key).then((data) => loadImagePixels(typeof data === 'string' ? data : Buffer.from(data), size));
      decoding.catch(() => undefined); // awaited by the caller; not an unhandled rejection if it never is
      this.pixels.set(cacheKey, decoding);
    }
    return decoding;
  }

  /** Every distinct key of `keys` (nulls skipped) decoded, 16 at a time, as a map for synchronous batching. */
  async all(keys: Iterable<string | null>, size: number): Promise<Map<string, Float32Array>> {
    const unique = [...new Set([...keys].filter((k): k is string => k !== null))];
    const out = new Map<string, Float32Array>();
    for (let i = 0; i < unique.length; i += 16) {
      const part = unique.slice(i, i + 16);
      const pixels = await Promise.all(part.map((key) => this.get(key, size)));
      part.forEach((key, k) => out.set(key, pixels[k]!));
    }
    return out;
  }
}
