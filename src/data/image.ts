// Image preparation for training, as the reference scripts do it with torchvision (Resize(res, BILINEAR), CenterCrop
// or RandomCrop, RandomHorizontalFlip, ToTensor, Normalize(0.5, 0.5)), with sharp (libvips) doing the decoding and
// resizing on libuv's thread pool, off the main thread:
//
//   decode -> RGB (alpha dropped, grey and CMYK converted, no EXIF rotation, as PIL's convert('RGB'))
//   -> resize so the shorter side is `resolution` (the longer one floor(res * long / short), torchvision's rule)
//   -> optional horizontal flip (p = 0.5) -> crop res x res (centre: round-half-even offsets as torchvision's
//   CenterCrop; random: uniform offsets) -> float32 CHW in [-1, 1] as (x / 255 - 0.5) / 0.5 in float32.
//
// SDXL's time_ids = [orig_h, orig_w, crop_top, crop_left, res, res]: the original size before any resize and the
// crop offsets in the resized (and, when flipped, flipped) image, i.e. where the crop was taken from the image the
// network sees (as diffusers' SDXL DPO script does by flipping before cropping).
//
// Randomness comes from a generator the caller derives per pair, so results do not depend on decode order.
import sharp from 'sharp';
import { CodedError } from '../errors.js';
import type { Rng } from '../rng.js';
import type { ImageSource } from './types.js';

export interface ImageOptions {
  resolution: number;
  centerCrop: boolean;
  randomFlip: boolean;
  /** resize filter (default 'linear', torchvision's bilinear with antialiasing) */
  kernel?: 'nearest' | 'linear' | 'cubic' | 'mitchell' | 'lanczos2' | 'lanczos3';
}

export interface PreparedImage {
  /** [3, res, res] float32 in [-1, 1] */
  pixels: Float32Array;
  /** [orig_h, orig_w, crop_top, crop_left, target_h, target_w] */
  timeIds: [number, number, number, number, number, number];
  flipped: boolean;
}

/** An image that cannot be used: not found, unreadable, corrupt, or too small. `reason` is one line. */
export class ImageError extends CodedError {
  constructor(
    readonly source: string,
    readonly reason: string,
  ) {
    super('NCP_EIMAGE', `${source}: ${reason}`);
  }
}

// ToTensor + Normalize(0.5, 0.5) in float32, as torch computes it.
const TO_UNIT = (() => {
  const t = new Float32Array(256);
  for (let i = 0; i < 256; i++) t[i] = Math.fround(Math.fround(i / 255) - 0.5) / 0.5;
  return t;
})();

/** Python's round(): halves to even. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The resized size: shorter side = res, longer side = floor(res * long / short). */
export function resizedSize(width: number, height: number, res: number): { width: number; height: number } {
  if (width <= height) return { width: res, height: Math.floor((res * height) / width) };
  return { width: Math.floor((res * width) / height), height: res };
}

function describeSource(src: ImageSource): string {
  return typeof src === 'string' ? src : `<${src.byteLength} bytes>`;
}

function reasonOf(err: unknown): string {
  const msg = (err as Error)?.message ?? String(err);
  if (/Input file is missing|ENOENT/.test(msg)) return 'file not found';
  if (/unsupported image format/i.test(msg)) return 'not an image (unsupported or unknown format)';
  return msg.split('\n')[0]!.replace(/^Error: /, '');
}

/**
 * Decodes and prepares one image. Throws ImageError (code NCP_EIMAGE) for anything unusable; the loader counts
 * those and skips the pair.
 */
export async function prepareImage(src: ImageSource, options: ImageOptions, rng: Rng): Promise<PreparedImage> {
  const res = options.resolution;
  const name = describeSource(src);
  // The random draws happen first and always in the same number, so the stream does not depend on the image.
  const flip = options.randomFlip ? rng.bernoulli(0.5) : false;
  const u1 = options.centerCrop ? 0 : rng.uniform();
  const u2 = options.centerCrop ? 0 : rng.uniform();
  let data: Buffer;
  let info: { width: number; height: number; channels: number };
  let orig: { width: number; height: number };
  let crop: { top: number; left: number };
  try {
    const input = typeof src === 'string' ? src : Buffer.from(src.buffer, src.byteOffset, src.byteLength);
    const img = sharp(input, { failOn: 'warning', limitInputPixels: 1 << 28 });
    const meta = await img.metadata();
    if (!meta.width || !meta.height) throw new ImageError(name, 'image has no size');
    orig = { width: meta.width, height: meta.height };
    const size = resizedSize(meta.width, meta.height, res);
    const spanY = size.height - res;
    const spanX = size.width - res;
    // Offsets in the flipped image when flipped (what the network sees); see the header comment.
    const top = options.centerCrop ? roundHalfEven(spanY / 2) : Math.floor(u1 * (spanY + 1));
    const leftSeen = options.centerCrop ? roundHalfEven(spanX / 2) : Math.floor(u2 * (spanX + 1));
    crop = { top, left: leftSeen };
    const leftInFile = flip ? spanX - leftSeen : leftSeen;
    ({ data, info } = await img
      .removeAlpha()
      .toColourspace('srgb')
      .resize(size.width, size.height, { fit: 'fill', kernel: options.kernel ?? 'linear' })
      .extract({ left: leftInFile, top, width: res, height: res })
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true }));
  } catch (err) {
    if (err instanceof ImageError) throw err;
    throw new ImageError(name, reasonOf(err));
  }
  if (info.width !== res || info.height !== res || info.channels !== 3)
    throw new ImageError(name, `decoded to ${info.width}x${info.height}x${info.channels}, expected ${res}x${res}x3`);
  const plane = res * res;
  const pixels = new Float32Array(3 * plane);
  for (let y = 0; y < res; y++) {
    const row = y * res;
    for (let x = 0; x < res; x++) {
      const sx = flip ? res - 1 - x : x;
      const s = (row + sx) * 3;
      const d = row + x;
      pixels[d] = TO_UNIT[data[s]!]!;
      pixels[plane + d] = TO_UNIT[data[s + 1]!]!;
      pixels[2 * plane + d] = TO_UNIT[data[s + 2]!]!;
    }
  }
  return { pixels, timeIds: [orig.height, orig.width, crop.top, crop.left, res, res], flipped: flip };
}
