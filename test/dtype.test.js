// Storage dtypes: f16 and bf16 decode and encode with the rounding PyTorch uses.
import test from 'ava';
import { fromFloat32, toFloat32 } from '../dist/index.js';

const u16 = (...v) => new Uint8Array(new Uint16Array(v).buffer);

test('f16 special values decode exactly', (t) => {
  // 1, -2, 65504 (max), smallest subnormal 2^-24, +inf, 0.333 (0x3555)
  const out = toFloat32(u16(0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x3555), 'F16');
  t.deepEqual(Array.from(out.subarray(0, 5)), [1, -2, 65504, 2 ** -24, Infinity]);
  t.is(out[5], 0.333251953125);
});

test('bf16 decodes as the top half of a float32', (t) => {
  t.deepEqual(Array.from(toFloat32(u16(0x3f80, 0xc040, 0x3e20), 'BF16')), [1, -3, 0.15625]);
});

test('f16 and bf16 encode with round-to-nearest-even', (t) => {
  const v = new Float32Array([1 + 2 ** -11, 1 + 3 * 2 ** -11, 70000, 2 ** -25 * 1.5, 1 + 2 ** -8, 1 + 3 * 2 ** -8]);
  t.deepEqual(Array.from(new Uint16Array(fromFloat32(v, 'F16').buffer)).slice(0, 4), [0x3c00, 0x3c02, 0x7c00, 0x0001]);
  t.deepEqual(Array.from(new Uint16Array(fromFloat32(v, 'BF16').buffer)).slice(4), [0x3f80, 0x3f82]);
});

test('round trips and bad input', (t) => {
  const v = new Float32Array([0.5, -1.25, 3]);
  t.deepEqual(Array.from(toFloat32(fromFloat32(v, 'F16'), 'F16')), [0.5, -1.25, 3]);
  const odd = t.throws(() => toFloat32(new Uint8Array(3), 'F16'));
  t.is(odd.code, 'NCP_ESHAPE');
  t.regex(odd.message, /3 bytes is not a whole number of F16 values/);
  t.is(t.throws(() => toFloat32(new Uint8Array(4), 'F8')).code, 'NCP_EDTYPE');
});
