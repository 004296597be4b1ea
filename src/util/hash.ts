import { createHash } from 'node:crypto';

/** sha256 of bytes or of a string's UTF-8, as 64 hex digits: the content key of images, texts and files. */
export function sha256Hex(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}
