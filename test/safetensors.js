// The tests' safetensors helpers. Reading goes through the library's TypeScript reader (dist/safetensors.js), which
// is independent of the native mmap reader, so each checks the other. Writing is raw on purpose: tests build
// deliberately inconsistent files (a dtype that does not match the bytes, ...) to check the native reader's errors.
import { writeFileSync } from 'node:fs';
import { readSafetensorsSync, toFloat32 } from '../dist/safetensors.js';

// { name: { shape, dtype, data: Float32Array } } (integer tensors converted by value), metadata left out.
export function readSafetensors(path) {
  const out = {};
  for (const [name, t] of readSafetensorsSync(path).tensors) out[name] = { shape: t.shape, dtype: t.dtype, data: toFloat32(t.bytes, t.dtype) };
  return out;
}

// tensors: { name: { dtype: 'F32' | 'I64' | 'F16' | ..., shape, bytes: Uint8Array } }, written as given, unchecked.
// headerPad: extra header spaces (the format allows any length): 2 puts every tensor at a 2 mod 8 byte address.
export function writeSafetensors(path, tensors, metadata, headerPad = 0) {
  const header = metadata ? { __metadata__: metadata } : {};
  const parts = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.byteLength] };
    parts.push(Buffer.from(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength));
    offset += t.bytes.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8 + headerPad);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([len, Buffer.from(json), ...parts]));
}
