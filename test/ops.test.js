// The op binding: results against independent JavaScript references, and errors that name the tensor and shapes.
import test from 'ava';
import { runOp } from '../dist/index.js';
import { randomTensor, relError } from './helpers.js';

test('linear matches a JavaScript reference (odd sizes, bias)', async (t) => {
  const x = randomTensor([3, 5, 7], 1), w = randomTensor([11, 7], 2), b = randomTensor([11], 3);
  const { y } = await runOp('linear', { x, weight: w, bias: b });
  t.deepEqual(y.shape, [3, 5, 11]);
  const ref = new Float32Array(15 * 11);
  for (let r = 0; r < 15; r++)
    for (let o = 0; o < 11; o++) {
      let acc = b.data[o];
      for (let i = 0; i < 7; i++) acc += x.data[r * 7 + i] * w.data[o * 7 + i];
      ref[r * 11 + o] = acc;
    }
  t.true(relError(y.data, ref) < 1e-6);
});

test('conv2d 3x3 stride 2 matches a direct convolution', async (t) => {
  const x = randomTensor([2, 3, 7, 5], 4), w = randomTensor([4, 3, 3, 3], 5), b = randomTensor([4], 6);
  const { y } = await runOp('conv2d', { x, weight: w, bias: b }, { stride: 2, padding: 1 });
  t.deepEqual(y.shape, [2, 4, 4, 3]);
  const ref = new Float32Array(2 * 4 * 4 * 3);
  for (let n = 0; n < 2; n++)
    for (let o = 0; o < 4; o++)
      for (let i = 0; i < 4; i++)
        for (let j = 0; j < 3; j++) {
          let acc = b.data[o];
          for (let c = 0; c < 3; c++)
            for (let ky = 0; ky < 3; ky++)
              for (let kx = 0; kx < 3; kx++) {
                const yy = i * 2 - 1 + ky, xx = j * 2 - 1 + kx;
                if (yy < 0 || yy >= 7 || xx < 0 || xx >= 5) continue;
                acc += x.data[((n * 3 + c) * 7 + yy) * 5 + xx] * w.data[((o * 3 + c) * 3 + ky) * 3 + kx];
              }
          ref[((n * 4 + o) * 4 + i) * 3 + j] = acc;
        }
  t.true(relError(y.data, ref) < 1e-6);
});

test('group_norm normalises each group before the affine transform', async (t) => {
  const x = randomTensor([2, 6, 3, 3], 7);
  const { y } = await runOp('group_norm', { x }, { groups: 3, eps: 1e-6 });
  for (let n = 0; n < 2; n++)
    for (let g = 0; g < 3; g++) {
      const vals = Array.from(y.data.subarray((n * 6 + g * 2) * 9, (n * 6 + g * 2 + 2) * 9));
      const mean = vals.reduce((a, b) => a + b) / vals.length;
      const variance = vals.reduce((a, b) => a + (b - mean) ** 2, 0) / vals.length;
      t.true(Math.abs(mean) < 1e-5);
      t.true(Math.abs(variance - 1) < 1e-3);
    }
});

test('activation kinds at known points', async (t) => {
  const x = { data: new Float32Array([-1, 0, 2]), shape: [3] };
  const silu = (await runOp('activation', { x }, { kind: 'silu' })).y.data;
  t.true(Math.abs(silu[2] - 2 / (1 + Math.exp(-2))) < 1e-6);
  const gelu = (await runOp('activation', { x }, { kind: 'gelu' })).y.data;
  t.true(Math.abs(gelu[0] - -0.15865525393145707) < 1e-6); // -1 * Phi(-1)
  const quick = (await runOp('activation', { x }, { kind: 'quick_gelu' })).y.data;
  t.true(Math.abs(quick[2] - 2 / (1 + Math.exp(-3.404))) < 1e-6);
});

test('causal attention: the first query sees only the first key', async (t) => {
  const q = randomTensor([1, 4, 6], 8), k = randomTensor([1, 4, 6], 9), v = randomTensor([1, 4, 6], 10);
  const { y } = await runOp('attention', { q, k, v }, { heads: 2, causal: true });
  t.true(relError(y.data.subarray(0, 6), v.data.subarray(0, 6)) < 1e-6);
});

test('timestep embedding matches diffusers for t = 37, dim 8, flip_sin_to_cos', async (t) => {
  const { y } = await runOp('timestep_embedding', { t: { data: new Float32Array([37]), shape: [1] } }, { dim: 8, flipSinToCos: true, freqShift: 0 });
  const freqs = [0, 1, 2, 3].map((i) => Math.exp((-Math.log(10000) * i) / 4));
  const ref = [...freqs.map((f) => Math.cos(37 * f)), ...freqs.map((f) => Math.sin(37 * f))];
  t.true(relError(y.data, ref) < 1e-6);
});

test('shape errors name the op, the tensor and both shapes', async (t) => {
  const err = await t.throwsAsync(() =>
    runOp('linear', { x: randomTensor([2, 4], 1), weight: randomTensor([3, 5], 2) }),
  );
  t.is(err.code, 'NCP_ESHAPE');
  t.regex(err.message, /linear: tensor 'x' has shape \[2, 4\].*weight \[3, 5\]/);
  const bias = await t.throwsAsync(() => runOp('linear', { x: randomTensor([2, 5], 1), weight: randomTensor([3, 5], 2), bias: randomTensor([4], 3) }));
  t.is(bias.code, 'NCP_ESHAPE');
  t.regex(bias.message, /'bias' has shape \[4\], expected \[3\]/);
});

test('bad arguments become coded errors, not crashes', async (t) => {
  const short = await t.throwsAsync(() => runOp('linear', { x: { data: new Float32Array(3), shape: [2, 2] }, weight: randomTensor([2, 2], 1) }));
  t.is(short.code, 'NCP_ESHAPE');
  t.regex(short.message, /'x': data has 3 values but shape \[2, 2\] needs 4/);
  const missing = await t.throwsAsync(() => runOp('conv2d', { x: randomTensor([1, 1, 3, 3], 1) }));
  t.regex(missing.message, /missing tensor 'weight'/);
  const unknown = await t.throwsAsync(() => runOp('fft', {}));
  t.is(unknown.code, 'NCP_EINVAL');
  t.regex(unknown.message, /unknown op 'fft'/);
  const kind = await t.throwsAsync(() => runOp('activation', { x: randomTensor([2], 1) }, { kind: 'relu6' }));
  t.regex(kind.message, /unknown kind 'relu6'/);
  const empty = await t.throwsAsync(() => runOp('group_norm', { x: { data: new Float32Array(0), shape: [0, 4, 3] } }, { groups: 2 }));
  t.is(empty.code, 'NCP_EINVAL');
  t.regex(empty.message, /'x': shape\[0\] must be a positive integer/);
  const notFloat = await t.throwsAsync(() => runOp('activation', { x: { data: new Float64Array(2), shape: [2] } }));
  t.regex(notFloat.message, /'x': data must be a Float32Array/);
});

test('long calls return promises and leave the event loop free', async (t) => {
  const x = randomTensor([2, 64, 32, 32], 11), w = randomTensor([64, 64, 3, 3], 12);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const p = runOp('conv2d', { x, weight: w });
  t.true(p instanceof Promise);
  await Promise.all(Array.from({ length: 4 }, () => runOp('conv2d', { x, weight: w })).concat([p]));
  clearInterval(timer);
  t.true(ticks > 0);
});
