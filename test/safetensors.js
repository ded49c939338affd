// A minimal safetensors reader/writer for the tests, independent of the native one (so each checks the other).
import { readFileSync, writeFileSync } from 'node:fs';

const decoders = {
  F32: (buf) => new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength)),
  I64: (buf) => Float32Array.from(new BigInt64Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength)), Number),
};

export function readSafetensors(path) {
  const file = readFileSync(path);
  const n = Number(file.readBigUInt64LE(0));
  const header = JSON.parse(file.subarray(8, 8 + n).toString('utf8'));
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [b, e] = t.data_offsets;
    out[name] = { shape: t.shape, dtype: t.dtype, data: decoders[t.dtype](file.subarray(8 + n + b, 8 + n + e)) };
  }
  return out;
}

// tensors: { name: { dtype: 'F32' | 'I64' | 'F16', shape, bytes: Uint8Array } }
export function writeSafetensors(path, tensors) {
  const header = {};
  const parts = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.byteLength] };
    parts.push(Buffer.from(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength));
    offset += t.bytes.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([len, Buffer.from(json), ...parts]));
}
