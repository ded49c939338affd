// safetensors in TypeScript: header parsing with the checks a corrupt or truncated file needs, float32 decoding of
// the storage dtypes, and an atomic writer. The native core has its own mmap reader for model weights; this one
// serves the TypeScript side (LoRA files, checkpoints, encode caches) and the tests, which use each to check the
// other.
//
// Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [b, e]}, ...,
// "__metadata__": {string: string}}, then the data buffer; offsets are relative to the start of the data buffer.
import { open, readFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { CodedError, describeFsError } from './errors.js';
import { writeFileAtomic } from './atomic-fs.js';

export type SafetensorsDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

const ITEM_SIZE: Record<SafetensorsDType, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

/** Refuse headers beyond this size: a corrupt length field must not make us allocate gigabytes. */
const MAX_HEADER = 100 * 1024 * 1024;

export interface TensorInfo {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Byte range in the file (absolute, not relative to the data buffer). */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** Tensors in file order (sorted by offset). */
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
  /** Absolute offset of the data buffer. */
  dataStart: number;
  /** File size the header implies (dataStart + end of the last tensor). */
  size: number;
}

export interface StoredTensor {
  dtype: SafetensorsDType;
  shape: number[];
  /** Raw little-endian bytes (a view into the file buffer when read with readSafetensors). */
  bytes: Uint8Array;
}

function stError(path: string, message: string): CodedError {
  return new CodedError('NCP_ESAFETENSORS', `${path}: ${message}`);
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function itemSize(dtype: SafetensorsDType): number {
  return ITEM_SIZE[dtype];
}

/**
 * Parses and validates a header. `prefix` holds at least the 8 length bytes and the JSON; `fileSize` is the size of
 * the whole file (checked against the offsets so a truncated file is reported by name, not read past its end).
 */
export function parseHeader(path: string, prefix: Uint8Array, fileSize: number): SafetensorsHeader {
  if (fileSize < 8 || prefix.byteLength < 8) throw stError(path, `not a safetensors file: ${fileSize} bytes, shorter than the 8-byte header length`);
  const view = new DataView(prefix.buffer, prefix.byteOffset, prefix.byteLength);
  const n64 = view.getBigUint64(0, true);
  if (n64 > BigInt(MAX_HEADER)) throw stError(path, `not a safetensors file: header length ${n64} is over ${MAX_HEADER} bytes`);
  const n = Number(n64);
  if (8 + n > fileSize) throw stError(path, `truncated: the header says ${n} header bytes but the file has ${fileSize} bytes`);
  if (prefix.byteLength < 8 + n) throw stError(path, 'internal: header prefix too short');
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(prefix.buffer, prefix.byteOffset + 8, n).toString('utf8'));
  } catch (err) {
    throw stError(path, `not a safetensors file: the header is not JSON (${(err as Error).message})`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw stError(path, 'not a safetensors file: the header is not a JSON object');
  const dataStart = 8 + n;
  const entries: TensorInfo[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw stError(path, '__metadata__ is not an object');
      metadata = {};
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== 'string') throw stError(path, `__metadata__.${k} is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    const t = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (t === null || typeof t !== 'object') throw stError(path, `tensor ${name}: entry is not an object`);
    if (typeof t.dtype !== 'string' || !(t.dtype in ITEM_SIZE)) throw stError(path, `tensor ${name}: unsupported dtype ${JSON.stringify(t.dtype)} (supported: ${Object.keys(ITEM_SIZE).join(', ')})`);
    const dtype = t.dtype as SafetensorsDType;
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw stError(path, `tensor ${name}: bad shape ${JSON.stringify(t.shape)}`);
    const off = t.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[0] > off[1])
      throw stError(path, `tensor ${name}: bad data_offsets ${JSON.stringify(off)}`);
    const shape = t.shape as number[];
    const expected = numel(shape) * ITEM_SIZE[dtype];
    if (off[1] - off[0] !== expected)
      throw stError(path, `tensor ${name}: data_offsets span ${off[1] - off[0]} bytes, but ${dtype} [${shape.join(', ')}] needs ${expected}`);
    entries.push({ name, dtype, shape, begin: dataStart + off[0], end: dataStart + off[1] });
  }
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let last = dataStart;
  for (const e of entries) {
    if (e.begin < last && e.end > e.begin) throw stError(path, `tensor ${e.name}: its bytes overlap another tensor's`);
    last = Math.max(last, e.end);
  }
  if (last > fileSize) {
    const cut = entries.find((e) => e.end > fileSize);
    throw stError(path, `truncated: tensor ${cut?.name} ends at byte ${cut?.end} but the file has ${fileSize} bytes`);
  }
  return { tensors: new Map(entries.map((e) => [e.name, e])), metadata, dataStart, size: last };
}

/** Reads only the header of a file (a few reads, whatever the file size). */
export async function readHeader(path: string): Promise<SafetensorsHeader> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    throw new CodedError('NCP_ESAFETENSORS', `${path}: ${describeFsError(err)}`, { cause: err });
  }
  try {
    const { size } = await fh.stat();
    const first = Buffer.alloc(Math.min(size, 8));
    await fh.read(first, 0, first.byteLength, 0);
    if (size < 8) return parseHeader(path, first, size);
    const n = Number(first.readBigUInt64LE(0));
    if (n > MAX_HEADER || 8 + n > size) return parseHeader(path, first, size); // reports the problem
    const prefix = Buffer.alloc(8 + n);
    await fh.read(prefix, 0, prefix.byteLength, 0);
    return parseHeader(path, prefix, size);
  } finally {
    await fh.close();
  }
}

/** A whole safetensors file in memory. */
export interface SafetensorsFile {
  path: string;
  metadata: Record<string, string>;
  tensors: Map<string, StoredTensor>;
}

/** Reads a whole file (fine for LoRA files and checkpoints; model weights go through the native mmap reader). */
export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    throw new CodedError('NCP_ESAFETENSORS', `${path}: ${describeFsError(err)}`, { cause: err });
  }
  return parseSafetensors(buf, path);
}

/** Synchronous readSafetensors (for scripts and tests). */
export function readSafetensorsSync(path: string): SafetensorsFile {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (err) {
    throw new CodedError('NCP_ESAFETENSORS', `${path}: ${describeFsError(err)}`, { cause: err });
  }
  return parseSafetensors(buf, path);
}

/** Parses a file already in memory. Tensor bytes are views into `buf`. */
export function parseSafetensors(buf: Uint8Array, path = '<buffer>'): SafetensorsFile {
  const header = parseHeader(path, buf, buf.byteLength);
  const tensors = new Map<string, StoredTensor>();
  for (const t of header.tensors.values())
    tensors.set(t.name, { dtype: t.dtype, shape: t.shape, bytes: buf.subarray(t.begin, t.end) });
  return { path, metadata: header.metadata, tensors };
}

/** Reads the bytes of one tensor with a positioned read (for large files read piecewise). */
export async function readTensorBytes(path: string, info: TensorInfo, rowBegin?: number, rowEnd?: number): Promise<Uint8Array> {
  let begin = info.begin;
  let end = info.end;
  if (rowBegin !== undefined) {
    const rowBytes = info.shape.length === 0 ? 0 : numel(info.shape.slice(1)) * ITEM_SIZE[info.dtype];
    const rows = info.shape[0] ?? 0;
    const e = rowEnd ?? rows;
    if (rowBegin < 0 || e > rows || rowBegin > e) throw stError(path, `tensor ${info.name}: rows ${rowBegin}..${e} outside 0..${rows}`);
    begin = info.begin + rowBegin * rowBytes;
    end = info.begin + e * rowBytes;
  }
  const out = Buffer.alloc(end - begin);
  const fh = await open(path, 'r').catch((err) => {
    throw new CodedError('NCP_ESAFETENSORS', `${path}: ${describeFsError(err)}`, { cause: err });
  });
  try {
    let off = 0;
    while (off < out.byteLength) {
      const { bytesRead } = await fh.read(out, off, out.byteLength - off, begin + off);
      if (bytesRead === 0) throw stError(path, `truncated while reading tensor ${info.name}`);
      off += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return out;
}

// --- dtype conversion -------------------------------------------------------------------------------------------

/** A copy of the bytes, aligned for a typed-array view (file buffers are not aligned to the element size). */
function aligned(bytes: Uint8Array): ArrayBuffer {
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
}

const F16_TABLE = (() => {
  // All 65536 half-precision values, so decoding is a table lookup (exact: every f16 is a float32).
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) t[h] = sign * frac * 2 ** -24;
    else if (exp === 31) t[h] = frac ? NaN : sign * Infinity;
    else t[h] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return t;
})();

/** Decodes little-endian storage values to float32 (integers and bools by value). */
export function toFloat32(bytes: Uint8Array, dtype: SafetensorsDType): Float32Array {
  const n = bytes.byteLength / ITEM_SIZE[dtype];
  if (!Number.isInteger(n)) throw new CodedError('NCP_ESAFETENSORS', `${bytes.byteLength} bytes is not a whole number of ${dtype} values`);
  switch (dtype) {
    case 'F32':
      return new Float32Array(aligned(bytes));
    case 'F64':
      return Float32Array.from(new Float64Array(aligned(bytes)));
    case 'F16': {
      const h = new Uint16Array(aligned(bytes));
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = F16_TABLE[h[i]!]!;
      return out;
    }
    case 'BF16': {
      const h = new Uint16Array(aligned(bytes));
      const u = new Uint32Array(n);
      for (let i = 0; i < n; i++) u[i] = h[i]! << 16;
      return new Float32Array(u.buffer);
    }
    case 'I64':
      return Float32Array.from(new BigInt64Array(aligned(bytes)), Number);
    case 'I32':
      return Float32Array.from(new Int32Array(aligned(bytes)));
    case 'I16':
      return Float32Array.from(new Int16Array(aligned(bytes)));
    case 'I8':
      return Float32Array.from(new Int8Array(aligned(bytes)));
    case 'U8':
    case 'BOOL':
      return Float32Array.from(bytes);
  }
}

/** Encodes float32 values as F32, F16 (round to nearest even) or BF16 (round to nearest even). */
export function fromFloat32(values: Float32Array, dtype: 'F32' | 'F16' | 'BF16'): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength));
  const bits = new Uint32Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength));
  const out = new Uint16Array(values.length);
  if (dtype === 'BF16') {
    for (let i = 0; i < bits.length; i++) {
      const x = bits[i]!;
      if ((x & 0x7fffffff) > 0x7f800000) out[i] = (x >>> 16) | 0x40; // NaN stays NaN
      else out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
    }
  } else {
    for (let i = 0; i < bits.length; i++) out[i] = f32BitsToF16(bits[i]!);
  }
  return new Uint8Array(out.buffer);
}

function f32BitsToF16(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let h = mant >>> shift;
    if (rest > half || (rest === half && (h & 1))) h++;
    return sign | h;
  }
  const rest = mant & 0x1fff;
  let h = (e << 10) | (mant >>> 13);
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h++;
  return sign | h;
}

// --- writing ----------------------------------------------------------------------------------------------------

/** A tensor to write: raw bytes with their dtype, or float32 values (written as F32). */
export type TensorToWrite = StoredTensor | { shape: number[]; data: Float32Array };

function asStored(name: string, t: TensorToWrite): StoredTensor {
  const s: StoredTensor = 'data' in t ? { dtype: 'F32', shape: t.shape, bytes: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength) } : t;
  const expected = numel(s.shape) * ITEM_SIZE[s.dtype];
  if (s.bytes.byteLength !== expected)
    throw new CodedError('NCP_ESAFETENSORS', `tensor ${name}: ${s.bytes.byteLength} bytes for ${s.dtype} [${s.shape.join(', ')}], expected ${expected}`);
  return s;
}

/**
 * Serialises tensors (in the order given; pass a sorted Map for a canonical file) and string metadata. The header is
 * padded with spaces to a multiple of 8 bytes so the data buffer starts aligned.
 */
export function serializeSafetensors(
  tensors: Map<string, TensorToWrite> | Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
): Uint8Array[] {
  const entries = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) {
    for (const [k, v] of Object.entries(metadata))
      if (typeof v !== 'string') throw new CodedError('NCP_ESAFETENSORS', `metadata ${k}: values must be strings, got ${typeof v}`);
    header['__metadata__'] = metadata;
  }
  const parts: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of entries) {
    const s = asStored(name, t);
    header[name] = { dtype: s.dtype, shape: s.shape, data_offsets: [offset, offset + s.bytes.byteLength] };
    parts.push(s.bytes);
    offset += s.bytes.byteLength;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (json.byteLength % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.byteLength));
  return [len, json, ...parts];
}

/** Writes a safetensors file atomically (temporary sibling + fsync + rename). */
export async function writeSafetensors(
  path: string,
  tensors: Map<string, TensorToWrite> | Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
): Promise<void> {
  await writeFileAtomic(path, serializeSafetensors(tensors, metadata));
}
