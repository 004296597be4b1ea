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
