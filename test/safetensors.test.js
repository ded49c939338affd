// The TypeScript safetensors reader/writer: round trips, dtype conversions, and the checks a damaged file needs.
import test from 'ava';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensors, readHeader, writeSafetensors, serializeSafetensors, toFloat32, fromFloat32, parseSafetensors, readTensorBytes } from '../dist/safetensors.js';

const tmpDirs = [];
async function tempDir() {
  const d = await mkdtemp(join(tmpdir(), 'ncp-st-'));
  tmpDirs.push(d);
  return d;
}
test.after.always(async () => {
  await Promise.all(tmpDirs.map((d) => rm(d, { recursive: true, force: true })));
});

test('write and read back tensors and metadata; header aligned to 8 bytes', async (t) => {
  const dir = await tempDir();
  const path = join(dir, 'a.safetensors');
  const a = Float32Array.from([1, -2.5, 3e-8, 65504]);
  const ids = new BigInt64Array([37n, -811n]);
  await writeSafetensors(path, { 'x.a': { shape: [2, 2], data: a }, ids: { dtype: 'I64', shape: [2], bytes: new Uint8Array(ids.buffer) }, scalar: { shape: [], data: Float32Array.of(8) } }, { rank: '4' });
  const f = await readSafetensors(path);
  t.deepEqual(f.metadata, { rank: '4' });
  t.deepEqual(toFloat32(f.tensors.get('x.a').bytes, 'F32'), a);
  t.deepEqual(Array.from(toFloat32(f.tensors.get('ids').bytes, 'I64')), [37, -811]);
  t.deepEqual(f.tensors.get('scalar').shape, []);
  const bytes = await readFile(path);
  t.is(Number(bytes.readBigUInt64LE(0)) % 8, 0);
  const h = await readHeader(path);
  t.deepEqual(Array.from(toFloat32(await readTensorBytes(path, h.tensors.get('x.a'), 1, 2), 'F32')), [3e-8, 65504].map(Math.fround));
});

test('F16 and BF16 conversions round to nearest even and decode exactly', (t) => {
  const v = Float32Array.from([0, -0, 1, -2, 0.1, 65504, 65520, 1e-7, 6e-8, Infinity, -Infinity, 1 + 2 ** -11, 1 + 3 * 2 ** -11]);
  const h = toFloat32(fromFloat32(v, 'F16'), 'F16');
  t.deepEqual(Array.from(h), [0, -0, 1, -2, 0.0999755859375, 65504, Infinity, 1.1920928955078125e-7, 5.960464477539063e-8, Infinity, -Infinity, 1, 1 + 2 ** -9]);
  const b = toFloat32(fromFloat32(Float32Array.from([1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -3.140625]), 'BF16'), 'BF16');
  t.deepEqual(Array.from(b), [1, 1, 1 + 4 * 2 ** -8, -3.140625]);
  t.true(Number.isNaN(toFloat32(fromFloat32(Float32Array.of(NaN), 'F16'), 'F16')[0]));
  t.true(Number.isNaN(toFloat32(fromFloat32(Float32Array.of(NaN), 'BF16'), 'BF16')[0]));
});

test('damaged files are reported with the file name and the problem', async (t) => {
  const dir = await tempDir();
  const good = Buffer.concat(serializeSafetensors({ w: { shape: [4], data: new Float32Array(4) } }));
  const cases = [
    ['short.safetensors', good.subarray(0, 5), /short\.safetensors: not a safetensors file: 5 bytes/],
    ['hugeheader.safetensors', Buffer.concat([Buffer.from([0, 0, 0, 0, 0, 0, 0, 1]), Buffer.alloc(8)]), /header length \d+ is over/],
    ['cut.safetensors', good.subarray(0, good.length - 4), /cut\.safetensors: truncated: tensor w ends at byte \d+ but the file has \d+ bytes/],
    ['cuthead.safetensors', good.subarray(0, 12), /truncated: the header says \d+ header bytes/],
  ];
  for (const [name, bytes, re] of cases) {
    await writeFile(join(dir, name), bytes);
    t.regex((await t.throwsAsync(readSafetensors(join(dir, name)), { code: 'NCP_ESAFETENSORS' })).message, re);
    t.regex((await t.throwsAsync(readHeader(join(dir, name)), { code: 'NCP_ESAFETENSORS' })).message, re);
  }
  const header = (h) => {
    const json = Buffer.from(JSON.stringify(h));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    return Buffer.concat([len, json, Buffer.alloc(64)]);
  };
  t.throws(() => parseSafetensors(header({ w: { dtype: 'F32', shape: [4], data_offsets: [0, 12] } }), 'x'), { message: /x: tensor w: data_offsets span 12 bytes, but F32 \[4\] needs 16/ });
  t.throws(() => parseSafetensors(header({ w: { dtype: 'Q4', shape: [4], data_offsets: [0, 16] } }), 'x'), { message: /unsupported dtype "Q4"/ });
  t.throws(() => parseSafetensors(header({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] }, b: { dtype: 'F32', shape: [2], data_offsets: [8, 16] } }), 'x'), { message: /overlap/ });
  t.throws(() => parseSafetensors(Buffer.concat([Buffer.from([3, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('abc')]), 'x'), { message: /the header is not JSON/ });
  await t.throwsAsync(readSafetensors(join(dir, 'missing.safetensors')), { message: /missing\.safetensors: does not exist/ });
});
