// The seeded generator: the same stream as the native core's ncp::model::Rng (reference values printed by
// native/model/rng.h compiled with g++), state export/import for resume, derived streams, shuffles and normals.
import test from 'ava';
import { Rng } from '../dist/rng.js';

// seed -> first three 64-bit outputs, then uniform(), normal(), below(1000), then the state words.
const NATIVE = [
  [0, ['99ec5f36cb75f2b4', 'bf6e1f784956452a', '1a5f849d4933e6e0'], 0.4165890778296456, 0.78817916144876576, 422, ['fb2e3c20d6c3489c', '02e9a66e1b3996e4', '3a7d8cab4ea61b5b', '15d33f99b34c4243']],
  [42, ['15780b2e0c2ec716', '6104d9866d113a7e', 'ae17533239e499a1'], 0.92469294532538759, 0.015871293375984964, 719, ['9173a4db713bbbd5', '062bcdf65e0a7c00', '92e16d82bc7f193d', 'a8ab3d377a169b66']],
  [123456789012345, ['9854c4f3279070d9', '3a39855d9628454d', '3d70c7186eac8536'], 0.64948145940871116, -1.2490647286042083, 2, ['29180596b9462a27', '0d8e4cba8c36d89b', 'aad4f30ef84153c5', 'c4e949e285b75e3d']],
];

for (const [seed, outs, u, n, b, state] of NATIVE) {
  test(`matches the native generator bit for bit (seed ${seed})`, (t) => {
    const r = new Rng(seed);
    t.deepEqual([r.nextHex(), r.nextHex(), r.nextHex()], outs);
    t.is(r.uniform(), u);
    t.true(Math.abs(r.normal() - n) < 1e-15); // log/cos of V8 and glibc may differ in the last bit
    t.is(r.below(1000), b);
    t.deepEqual(r.getState(), state);
  });
}

test('state export/import continues the exact stream', (t) => {
  const a = new Rng(7);
  for (let i = 0; i < 1000; i++) a.uniform();
  const b = Rng.fromState(a.getState());
  for (let i = 0; i < 100; i++) t.is(b.normal(), a.normal());
  t.throws(() => Rng.fromState(['0', '1']), { message: /four 16-digit/ });
  t.throws(() => Rng.fromState(['0000000000000000', '0000000000000000', '0000000000000000', '0000000000000000']), { message: /all zeros/ });
  t.throws(() => new Rng(-1), { message: /non-negative integer/ });
  t.is(new Rng('0x2a').nextHex(), new Rng(42).nextHex());
});

test('derived streams are reproducible and differ by id', (t) => {
  const x = Rng.derive(5, 1, 0).nextHex();
  t.is(Rng.derive(5, 1, 0).nextHex(), x);
  t.not(Rng.derive(5, 1, 1).nextHex(), x);
  t.not(Rng.derive(5, 2, 0).nextHex(), x);
  t.not(Rng.derive(6, 1, 0).nextHex(), x);
  t.not(Rng.derive(5, 0).nextHex(), new Rng(5).nextHex());
});

test('permutations, uniform range and normal moments', (t) => {
  const r = new Rng(3);
  const p = r.permutation(1000);
  t.deepEqual(Array.from(p).sort((a, b) => a - b), Array.from({ length: 1000 }, (_, i) => i));
  t.notDeepEqual(Array.from(p.subarray(0, 10)), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  const xs = r.fillNormal(new Float64Array(200000));
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const variance = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / xs.length;
  t.true(Math.abs(mean) < 0.01, `mean ${mean}`);
  t.true(Math.abs(variance - 1) < 0.01, `variance ${variance}`);
  let lo = 1;
  let hi = 0;
  const counts = new Array(10).fill(0);
  for (let i = 0; i < 100000; i++) {
    const u = r.uniform();
    lo = Math.min(lo, u);
    hi = Math.max(hi, u);
    counts[r.below(10)]++;
  }
  t.true(lo >= 0 && hi < 1);
  for (const c of counts) t.true(Math.abs(c - 10000) < 500, `bucket ${c}`);
});
