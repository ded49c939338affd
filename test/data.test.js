// Training data: dataset detection, Pick-a-Pic parquet (labels, ties, byte columns, absolute winners, shards),
// JSONL, the encode cache, image preparation (resize, crops, flips, time ids, [-1, 1]), corrupt images, seeded
// order and resuming from a data position.
import test from 'ava';
import { mkdtemp, rm, writeFile, mkdir, copyFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { parquetWriteBuffer } from 'hyparquet-writer';
import {
  detectDataset,
  openDataset,
  PairLoader,
  prepareImage,
  resizedSize,
  stackImageBatch,
  stackEncodedBatch,
  CacheWriter,
  WinnerTracker,
} from '../dist/data/index.js';
import { Rng } from '../dist/rng.js';

const FIXTURES = fileURLToPath(new URL('./fixtures/data/', import.meta.url));
const PICKAPIC = join(FIXTURES, 'pickapic');
const tmpDirs = [];
async function tempDir() {
  const d = await mkdtemp(join(tmpdir(), 'ncp-data-'));
  tmpDirs.push(d);
  return d;
}
test.after.always(async () => {
  await Promise.all(tmpDirs.map((d) => rm(d, { recursive: true, force: true })));
});

// Raw RGB -> encoded image; `f(x, y)` gives [r, g, b].
async function makeImage(width, height, f, format = 'png') {
  const raw = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) raw.set(f(x, y), (y * width + x) * 3);
  const img = sharp(raw, { raw: { width, height, channels: 3 } });
  return new Uint8Array(await (format === 'png' ? img.png() : img.jpeg()).toBuffer());
}
const solid = (w, h, rgb, fmt = 'png') => makeImage(w, h, () => rgb, fmt);

// Pick-a-Pic-like rows -> a parquet file.
async function writePickapic(path, rows, { uids = true, rowGroupSize = 2, drop = [] } = {}) {
  const col = (name, data, type) => ({ name, data, type });
  const cols = [
    col('caption', rows.map((r) => r.caption), 'STRING'),
    col('jpg_0', rows.map((r) => r.jpg0), 'BYTE_ARRAY'),
    col('jpg_1', rows.map((r) => r.jpg1), 'BYTE_ARRAY'),
    col('label_0', rows.map((r) => r.label), 'DOUBLE'),
    col('label_1', rows.map((r) => 1 - r.label), 'DOUBLE'),
  ];
  if (uids) cols.push(col('image_0_uid', rows.map((r) => r.uid0), 'STRING'), col('image_1_uid', rows.map((r) => r.uid1), 'STRING'));
  await writeFile(path, new Uint8Array(parquetWriteBuffer({ columnData: cols.filter((c) => !drop.includes(c.name)), rowGroupSize })));
}

async function collect(loader) {
  const out = [];
  for await (const p of loader.pairs()) out.push(p);
  return out;
}

const IMG = { resolution: 8, centerCrop: true, randomFlip: false };

// --- detection ----------------------------------------------------------------------------------------------------

test('detects a parquet file, a folder of shards, JSONL and an encode cache', async (t) => {
  t.is((await detectDataset(join(PICKAPIC, 'train-00000.parquet'))).kind, 'parquet-file');
  const folder = await detectDataset(PICKAPIC);
  t.is(folder.kind, 'parquet-folder');
  t.deepEqual(folder.files.map((f) => f.split('/').pop()), ['train-00000.parquet', 'train-00001.parquet']);
  t.is((await detectDataset(join(FIXTURES, 'pairs.jsonl'))).kind, 'jsonl');
  const dir = await tempDir();
  const w = new CacheWriter(dir, cacheSpec('F32'), 2);
  await w.add(encodedPair(0));
  await w.finish();
  t.is((await detectDataset(dir)).kind, 'cache');
});

test('detection errors name the path and say what is accepted', async (t) => {
  const dir = await tempDir();
  const e1 = await t.throwsAsync(detectDataset(join(dir, 'nope.parquet')), { code: 'NCP_EDATA' });
  t.regex(e1.message, /nope\.parquet: does not exist/);
  await writeFile(join(dir, 'notes.txt'), 'hello world\n');
  const e2 = await t.throwsAsync(detectDataset(join(dir, 'notes.txt')), { code: 'NCP_EDATA' });
  t.regex(e2.message, /unrecognised file.*parquet.*JSON Lines/);
  await writeFile(join(dir, 'fake.parquet'), 'not parquet at all');
  const e3 = await t.throwsAsync(detectDataset(join(dir, 'fake.parquet')), { code: 'NCP_EDATA' });
  t.regex(e3.message, /fake\.parquet: not a parquet file/);
  await writeFile(join(dir, 'list.jsonl'), '[1, 2]\n');
  const e4 = await t.throwsAsync(detectDataset(join(dir, 'list.jsonl')), { code: 'NCP_EDATA' });
  t.regex(e4.message, /not a JSON Lines file/);
  // A folder whose shards sit one level down (as in a Hugging Face clone): the message points there.
  await mkdir(join(dir, 'hf', 'data'), { recursive: true });
  await copyFile(join(PICKAPIC, 'train-00000.parquet'), join(dir, 'hf', 'data', 'train-00000.parquet'));
  const e5 = await t.throwsAsync(detectDataset(join(dir, 'hf')), { code: 'NCP_EDATA' });
  t.regex(e5.message, /no \.parquet files.*hf\/data: pass that folder/);
});

// --- parquet ------------------------------------------------------------------------------------------------------

test('parquet: label_0 picks the preferred image, ties are dropped and counted, image bytes stay bytes', async (t) => {
  const dir = await tempDir();
  const a = await solid(12, 10, [255, 0, 0]);
  const b = await solid(12, 10, [0, 0, 255]);
  const c = await solid(10, 12, [0, 255, 0]);
  const path = join(dir, 'p.parquet');
  await writePickapic(path, [
    { caption: 'first', jpg0: a, jpg1: b, label: 1, uid0: 'a', uid1: 'b' },
    { caption: 'second', jpg0: a, jpg1: c, label: 0, uid0: 'a2', uid1: 'c' },
    { caption: 'tie', jpg0: b, jpg1: c, label: 0.5, uid0: 'b2', uid1: 'c2' },
  ]);
  const src = await openDataset(path);
  t.deepEqual(await src.count(), { rows: 3, pairs: 2, dropped: { tie: 1 } });
  const rows = await src.read([0, 1, 2].map((i) => ({ block: i >> 1, row: i & 1 })));
  t.true(rows[0].pair.chosen instanceof Uint8Array);
  t.deepEqual(Buffer.from(rows[0].pair.chosen), Buffer.from(a));
  t.deepEqual(Buffer.from(rows[0].pair.rejected), Buffer.from(b));
  t.is(rows[0].pair.prompt, 'first');
  t.like(rows[0].pair.meta, { row: 0, chosenUid: 'a', rejectedUid: 'b' });
  t.deepEqual(Buffer.from(rows[1].pair.chosen), Buffer.from(c)); // label_0 == 0: image 1 preferred
  t.like(rows[1].pair.meta, { row: 1, chosenUid: 'c', rejectedUid: 'a2' });
  t.is(rows[2].dropped, 'tie');

  const loader = new PairLoader(src, { seed: 0, shuffle: false, image: IMG });
  const pairs = await collect(loader);
  t.deepEqual(pairs.map((p) => p.prompt), ['first', 'second']);
  // preferred of pair 0 is red: R = 1, G = B = -1
  t.is(pairs[0].chosen.pixels[0], 1);
  t.is(pairs[0].chosen.pixels[64], -1);
  t.like(loader.stats(), { rows: 3, pairs: 2, dropped: { tie: 1 }, corrupt: 0 });
});

test('parquet: a file without the needed columns is refused, naming the file and the columns', async (t) => {
  const dir = await tempDir();
  const img = await solid(8, 8, [1, 2, 3]);
  const path = join(dir, 'nolabels.parquet');
  await writePickapic(path, [{ caption: 'x', jpg0: img, jpg1: img, label: 1, uid0: 'a', uid1: 'b' }], { drop: ['label_0', 'jpg_1'] });
  const e = await t.throwsAsync(openDataset(path), { code: 'NCP_EDATA' });
  t.regex(e.message, /nolabels\.parquet: missing columns jpg_1, label_0/);
  t.regex(e.message, /found: caption, jpg_0, label_1/);
});

test('parquet: a dataset of ties only fails with a clear message', async (t) => {
  const dir = await tempDir();
  const img = await solid(8, 8, [1, 2, 3]);
  const path = join(dir, 'ties.parquet');
  await writePickapic(path, [0, 1, 2].map((i) => ({ caption: `t${i}`, jpg0: img, jpg1: img, label: 0.5, uid0: `a${i}`, uid1: `b${i}` })));
  const src = await openDataset(path);
  const e = await t.throwsAsync(collect(new PairLoader(src, { seed: 0, image: IMG })), { code: 'NCP_EDATA' });
  t.regex(e.message, /ties\.parquet: no usable preference pair in epoch 0 of 3 rows \(3 ties\)/);
});

test('parquet: the fixture shards read in name order, with one corrupt image skipped and reported', async (t) => {
  const src = await openDataset(PICKAPIC);
  t.is(src.kind, 'parquet-folder');
  t.regex(src.describe(), /2 parquet shards.*10 rows in 6 row groups/);
  t.deepEqual(await src.count(), { rows: 10, pairs: 8, dropped: { tie: 2 } });
  const loader = new PairLoader(src, { seed: 0, shuffle: false, image: { resolution: 16, centerCrop: true, randomFlip: false }, maxCorruptFraction: 0.5 });
  const pairs = await collect(loader);
  t.deepEqual(pairs.map((p) => p.meta.row + (p.meta.source.endsWith('1.parquet') ? 5 : 0)), [0, 1, 3, 4, 5, 6, 9]);
  const s = loader.stats();
  t.is(s.corrupt, 1);
  t.is(s.rows, 10);
  t.like(s.corruptExamples[0], { row: 3, image: 'rejected' });
  t.regex(s.corruptExamples[0].source, /train-00001\.parquet/);
  t.true(s.corruptExamples[0].reason.length > 0);
});

test('corrupt images beyond --max-corrupt-fraction fail the run, naming the file, row and reason', async (t) => {
  const src = await openDataset(PICKAPIC);
  const loader = new PairLoader(src, { seed: 0, shuffle: false, image: { resolution: 16, centerCrop: true, randomFlip: false }, maxCorruptFraction: 0.1 });
  const e = await t.throwsAsync(collect(loader), { code: 'NCP_EDATA' });
  t.regex(e.message, /1 of 8 pairs had an unusable image, more than the allowed fraction 0\.1 \(--max-corrupt-fraction\)/);
  t.regex(e.message, /train-00001\.parquet row 3 \(rejected\)/);
});

test('absolute winners: keeps pairs whose preferred image won every comparison it took part in', async (t) => {
  // Pure logic first: A beats B and C; B beats C; D ties E; F beats G but G beats F elsewhere (duplicate ids).
  const w = new WinnerTracker();
  w.add('A', 'B', 1);
  w.add('C', 'A', 0);
  w.add('B', 'C', 1);
  w.add('D', 'E', 0.5);
  w.add('D', 'H', 1);
  t.true(w.keeps('A', 'B', 1));
  t.true(w.keeps('C', 'A', 0));
  t.false(w.keeps('B', 'C', 1)); // B lost to A
  t.false(w.keeps('D', 'H', 1)); // D tied once: not an absolute winner
  t.false(w.keeps('D', 'E', 0.5));

  const dir = await tempDir();
  const imgs = await Promise.all([0, 1, 2, 3].map((i) => solid(8, 8, [i * 60, 0, 0])));
  const rows = [
    { caption: 'p', jpg0: imgs[0], jpg1: imgs[1], label: 1, uid0: 'A', uid1: 'B' }, // kept (A)
    { caption: 'p', jpg0: imgs[2], jpg1: imgs[0], label: 0, uid0: 'C', uid1: 'A' }, // kept (A)
    { caption: 'p', jpg0: imgs[1], jpg1: imgs[2], label: 1, uid0: 'B', uid1: 'C' }, // dropped: B lost to A
    { caption: 'q', jpg0: imgs[3], jpg1: imgs[2], label: 0.5, uid0: 'D', uid1: 'C2' }, // tie
    { caption: 'q', jpg0: imgs[3], jpg1: imgs[1], label: 1, uid0: 'D', uid1: 'B2' }, // dropped: D tied
  ];
  const path = join(dir, 'w.parquet');
  await writePickapic(path, rows);
  const src = await openDataset(path, { absoluteWinners: true });
  t.deepEqual(await src.count(), { rows: 5, pairs: 2, dropped: { filtered: 2, tie: 1 } });
  t.regex(src.describe(), /absolute winners: 2 pairs kept/);
  const pairs = await collect(new PairLoader(src, { seed: 0, shuffle: false, image: IMG }));
  t.deepEqual(pairs.map((p) => p.meta.row), [0, 1]);
  t.deepEqual(pairs.map((p) => p.meta.chosenUid), ['A', 'A']);

  // Without uid columns the images themselves (their bytes) identify them: same result here.
  const path2 = join(dir, 'w-nouid.parquet');
  await writePickapic(path2, rows.map((r, i) => (i === 4 ? { ...r, jpg1: imgs[2] } : r)), { uids: false });
  const src2 = await openDataset(path2, { absoluteWinners: true });
  // row 4 now compares D with image 2 (C), which lost to A: still dropped because D tied
  t.is((await src2.count()).pairs, 2);

  await t.throwsAsync(openDataset(join(FIXTURES, 'pairs.jsonl'), { absoluteWinners: true }), { code: 'NCP_EDATA', message: /needs Pick-a-Pic parquet/ });
});

// --- JSONL --------------------------------------------------------------------------------------------------------

test('JSONL: image paths resolve against the file; prepared pairs come out', async (t) => {
  const src = await openDataset(join(FIXTURES, 'pairs.jsonl'));
  t.is(src.kind, 'jsonl');
  t.deepEqual(await src.count(), { rows: 4, pairs: 4, dropped: {} });
  const [r] = await src.read([{ block: 0, row: 2 }]);
  t.is(r.pair.chosen, join(FIXTURES, 'images', '2-chosen.jpg'));
  t.is(r.pair.prompt, 'a bowl of ramen');
  const pairs = await collect(new PairLoader(src, { seed: 3, image: { resolution: 16, centerCrop: true, randomFlip: true } }));
  t.is(pairs.length, 4);
  t.deepEqual(pairs.map((p) => p.meta.row).sort(), [0, 1, 2, 3]);
  for (const p of pairs) {
    t.is(p.chosen.pixels.length, 3 * 16 * 16);
    t.true(p.chosen.pixels.every((v) => v >= -1 && v <= 1));
  }
});

test('JSONL: bad lines are errors naming the file and line; missing images are skipped and reported', async (t) => {
  const dir = await tempDir();
  const bad = join(dir, 'bad.jsonl');
  await writeFile(bad, '{"prompt": "a", "chosen": "x.png", "rejected": "y.png"}\n\n{"prompt": "b", "chosen": 3}\n');
  const e = await t.throwsAsync(openDataset(bad), { code: 'NCP_EDATA' });
  t.regex(e.message, /bad\.jsonl line 3: field 'chosen' is 3, not a string/);
  await writeFile(bad, '{"prompt": "a", "chosen": "x.png", "rejected": "y.png"}\n{oops}\n');
  t.regex((await t.throwsAsync(openDataset(bad))).message, /bad\.jsonl line 2: not JSON/);

  await writeFile(join(dir, 'ok.png'), await solid(8, 8, [9, 9, 9]));
  const lines = [];
  for (let i = 0; i < 10; i++) lines.push(JSON.stringify({ prompt: `p${i}`, chosen: 'ok.png', rejected: i === 4 ? 'missing/nope.png' : 'ok.png' }));
  await writeFile(join(dir, 'some-missing.jsonl'), lines.join('\n'));
  const loader = new PairLoader(await openDataset(join(dir, 'some-missing.jsonl')), { seed: 0, shuffle: false, image: IMG, maxCorruptFraction: 0.2 });
  const pairs = await collect(loader);
  t.is(pairs.length, 9);
  const s = loader.stats();
  t.is(s.corrupt, 1);
  t.regex(s.corruptExamples[0].reason, /missing\/nope\.png: file not found/);

  // Every image missing: the run stops with the path in the message.
  await writeFile(join(dir, 'all-missing.jsonl'), JSON.stringify({ prompt: 'p', chosen: 'gone.png', rejected: 'gone2.png' }));
  const e2 = await t.throwsAsync(collect(new PairLoader(await openDataset(join(dir, 'all-missing.jsonl')), { seed: 0, image: IMG })));
  t.regex(e2.message, /1 of 1 pairs had an unusable image.*gone\.png: file not found/);
});

// --- images -------------------------------------------------------------------------------------------------------

test('image: resize shorter side, centre crop, values in [-1, 1] and SDXL time ids', async (t) => {
  t.deepEqual(resizedSize(64, 32, 16), { width: 32, height: 16 });
  t.deepEqual(resizedSize(30, 45, 20), { width: 20, height: 30 });
  // 64 x 32: left quarter red, then green, blue, white columns of 16 px
  const colours = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]];
  const img = await makeImage(64, 32, (x) => colours[Math.floor(x / 16)]);
  const out = await prepareImage(img, { resolution: 16, centerCrop: true, randomFlip: false }, new Rng(0));
  t.deepEqual(out.timeIds, [32, 64, 0, 8, 16, 16]);
  t.false(out.flipped);
  // Resized to 32 x 16, cropped at x 8..24: columns 0..3 green, 4..11 blue... (red and white are cut off).
  const R = (x, y) => out.pixels[y * 16 + x];
  const G = (x, y) => out.pixels[256 + y * 16 + x];
  const B = (x, y) => out.pixels[512 + y * 16 + x];
  t.is(G(1, 5), 1);
  t.is(R(1, 5), -1);
  t.is(B(12, 9), 1);
  t.is(G(12, 9), -1);
  t.true(out.pixels.every((v) => v >= -1 && v <= 1));
  // ToTensor + Normalize in float32: 128 -> (128/255 - 0.5) / 0.5
  const grey = await prepareImage(await solid(8, 8, [128, 128, 128]), { resolution: 8, centerCrop: true, randomFlip: false }, new Rng(0));
  t.is(grey.pixels[0], Math.fround(Math.fround(Math.fround(128 / 255) - 0.5) / 0.5));
});

test('image: a flip mirrors the columns; random crops and flips are seeded', async (t) => {
  const img = await makeImage(48, 16, (x) => [x * 5, 0, 255 - x * 5]);
  const opts = { resolution: 16, centerCrop: true, randomFlip: true };
  let flipped;
  let plain;
  for (let seed = 0; seed < 40 && !(flipped && plain); seed++) {
    const o = await prepareImage(img, opts, new Rng(seed));
    if (o.flipped) flipped ??= o;
    else plain ??= o;
  }
  t.truthy(flipped && plain);
  for (let y = 0; y < 16; y += 5) for (let x = 0; x < 16; x++) t.is(flipped.pixels[y * 16 + x], plain.pixels[y * 16 + 15 - x]);
  t.deepEqual(flipped.timeIds, [16, 48, 0, 16, 16, 16]);

  // Random crop: offsets from the generator, the same for the same seed, covering more than one position.
  const ropts = { resolution: 16, centerCrop: false, randomFlip: false };
  const a = await prepareImage(img, ropts, new Rng(7));
  const b = await prepareImage(img, ropts, new Rng(7));
  t.deepEqual(a.timeIds, b.timeIds);
  t.deepEqual(a.pixels, b.pixels);
  const lefts = new Set();
  for (let s = 0; s < 30; s++) lefts.add((await prepareImage(img, ropts, new Rng(s))).timeIds[3]);
  t.true(lefts.size > 5);
  t.true([...lefts].every((l) => l >= 0 && l <= 32));
  // The crop offset says where the pixels came from: column 0 of the crop is column `left` of the image.
  const left = a.timeIds[3];
  t.is(a.pixels[0], Math.fround(Math.fround(Math.fround(((left * 5) & 255) / 255) - 0.5) / 0.5));
});

test('image: unreadable input throws NCP_EIMAGE with the reason', async (t) => {
  const e1 = await t.throwsAsync(prepareImage(new Uint8Array([1, 2, 3, 4, 5]), IMG, new Rng(0)), { code: 'NCP_EIMAGE' });
  t.regex(e1.reason, /unsupported|unknown|not an image/i);
  const jpg = await solid(32, 32, [10, 200, 30], 'jpeg');
  await t.throwsAsync(prepareImage(jpg.slice(0, jpg.length >> 1), IMG, new Rng(0)), { code: 'NCP_EIMAGE' });
  const e3 = await t.throwsAsync(prepareImage('/nonexistent/x.png', IMG, new Rng(0)), { code: 'NCP_EIMAGE' });
  t.is(e3.reason, 'file not found');
});

// --- order, resume, batches ---------------------------------------------------------------------------------------

async function manyRowsParquet(n, rowGroupSize) {
  const dir = await tempDir();
  const img = await solid(8, 8, [50, 60, 70]);
  const rows = [];
  for (let i = 0; i < n; i++) rows.push({ caption: `c${i}`, jpg0: img, jpg1: img, label: i % 7 === 3 ? 0.5 : 1, uid0: `a${i}`, uid1: `b${i}` });
  const path = join(dir, 'many.parquet');
  await writePickapic(path, rows, { rowGroupSize });
  return path;
}

async function manyRowsJsonl(n) {
  const dir = await tempDir();
  await writeFile(join(dir, 'i.png'), await solid(8, 8, [1, 2, 3]));
  await writeFile(join(dir, 'd.jsonl'), Array.from({ length: n }, (_, i) => JSON.stringify({ prompt: `c${i}`, chosen: 'i.png', rejected: 'i.png' })).join('\n'));
  return join(dir, 'd.jsonl');
}

for (const [name, make] of [
  ['parquet (row-group blocks)', () => manyRowsParquet(23, 4)],
  ['JSONL (full permutation)', () => manyRowsJsonl(23)],
]) {
  test(`order: seeded, a permutation per epoch, and resumable from any position: ${name}`, async (t) => {
    const path = await make();
    const src = await openDataset(path);
    const run = async (opts) => (await collect(new PairLoader(src, { image: IMG, prefetch: 3, ...opts }))).map((p) => ({ prompt: p.prompt, pos: p.position, flip: p.chosen.flipped }));
    const full = await run({ seed: 11, epochs: 2 });
    const again = await run({ seed: 11, epochs: 2 });
    t.deepEqual(full, again);
    const usable = (await src.count()).pairs;
    t.is(full.length, 2 * usable);
    const e0 = full.slice(0, usable).map((p) => p.prompt);
    const e1 = full.slice(usable).map((p) => p.prompt);
    t.is(new Set(e0).size, usable);
    t.deepEqual([...e0].sort(), [...e1].sort());
    t.notDeepEqual(e0, e1); // a new order each epoch
    t.notDeepEqual(e0, [...e0].sort((a, b) => Number(a.slice(1)) - Number(b.slice(1)))); // shuffled
    const other = await run({ seed: 12, epochs: 1 });
    t.notDeepEqual(other.map((p) => p.prompt), e0);
    // Resume after pair k (within epoch 0, at the epoch boundary, within epoch 1): the rest is identical, flips too.
    for (const k of [0, 5, usable - 1, usable + 3]) {
      const rest = await run({ seed: 11, epochs: 2, start: full[k].pos });
      t.deepEqual(rest, full.slice(k + 1), `resume after pair ${k}`);
    }
    // Fractional epochs stop part-way.
    t.true((await run({ seed: 11, epochs: 0.5 })).length < usable);
  });
}

test('loader: batches carry the position after their last pair; early exit is clean', async (t) => {
  const src = await openDataset(await manyRowsParquet(10, 3));
  const loader = new PairLoader(src, { seed: 2, image: IMG, epochs: 1, prefetch: 4 });
  const batches = [];
  for await (const b of loader.batches(3)) batches.push(b);
  t.deepEqual(batches.map((b) => b.pairs.length), [3, 3, 3]); // 10 rows, 1 tie
  t.deepEqual(batches[2].position, { epoch: 1, index: 0 });
  const stacked = stackImageBatch(batches[0].pairs);
  t.is(stacked.images.length, 6 * 3 * 64);
  t.deepEqual(Array.from(stacked.timeIds.subarray(0, 6)), [8, 8, 0, 0, 8, 8]);
  t.deepEqual(stacked.position, batches[0].position);
  // Leaving the loop early stops the reader and the decoders.
  let n = 0;
  for await (const _ of new PairLoader(src, { seed: 2, image: IMG, prefetch: 8 }).pairs()) if (++n === 2) break;
  t.is(n, 2);
  // A position from another dataset is refused.
  t.throws(() => new PairLoader(src, { seed: 2, image: IMG, start: { epoch: 0, index: 999 } }), { code: 'NCP_EDATA', message: /outside this dataset/ });
});

test('loader: an AbortSignal stops the stream', async (t) => {
  const src = await openDataset(await manyRowsJsonl(30));
  const ac = new AbortController();
  let n = 0;
  const e = await t.throwsAsync(async () => {
    for await (const _ of new PairLoader(src, { seed: 0, image: IMG, signal: ac.signal }).pairs()) if (++n === 3) ac.abort(new Error('stop now'));
  });
  t.is(e.message, 'stop now');
  t.is(n, 3);
});

// --- encode cache -------------------------------------------------------------------------------------------------

function cacheSpec(dtype, sdxl = false) {
  return {
    model: '/models/x',
    model_kind: sdxl ? 'sdxl' : 'sd15',
    resolution: 16,
    latent_shape: [4, 2, 2],
    text_shape: [3, 5],
    pooled_dim: sdxl ? 7 : null,
    dtype,
    augment: { center_crop: true, random_flip: false },
    source: { data: '/data/x.parquet', kind: 'parquet-file' },
  };
}
function encodedPair(i, sdxl = false) {
  const f = (n, k) => Float32Array.from({ length: n }, (_, j) => (i * 100 + k * 10 + j) / 64);
  const p = { prompt: `prompt ${i}`, chosen: f(16, 1), rejected: f(16, 2), encoderHiddenStates: f(15, 3), meta: { source: 'src', row: i } };
  if (sdxl) Object.assign(p, { textEmbeds: f(7, 4), chosenTimeIds: f(6, 5), rejectedTimeIds: f(6, 6) });
  return p;
}

test('encode cache: written in shards with cache.json last, read back exactly (F32, F16, SDXL fields)', async (t) => {
  for (const [dtype, sdxl] of [['F32', false], ['F16', true]]) {
    const dir = await tempDir();
    const w = new CacheWriter(dir, cacheSpec(dtype, sdxl), 3);
    for (let i = 0; i < 7; i++) await w.add(encodedPair(i, sdxl));
    const m = await w.finish();
    t.is(m.pairs, 7);
    t.deepEqual(m.shards.map((s) => s.pairs), [3, 3, 1]);
    const manifest = JSON.parse(await readFile(join(dir, 'cache.json'), 'utf8'));
    t.is(manifest.format, 'ncp-encode-cache');
    const src = await openDataset(dir);
    t.is(src.kind, 'cache');
    t.regex(src.describe(), /7 pairs in 3 shards/);
    const pairs = await collect(new PairLoader(src, { seed: 5, epochs: 1 }));
    t.is(pairs.length, 7);
    for (const p of pairs) {
      const i = Number(p.prompt.split(' ')[1]);
      const ref = encodedPair(i, sdxl);
      // values are multiples of 1/64 below 8: exact in F16 too
      t.deepEqual(p.chosen, ref.chosen);
      t.deepEqual(p.rejected, ref.rejected);
      t.deepEqual(p.encoderHiddenStates, ref.encoderHiddenStates);
      if (sdxl) {
        t.deepEqual(p.textEmbeds, ref.textEmbeds);
        t.deepEqual(p.chosenTimeIds, ref.chosenTimeIds);
      } else t.is(p.textEmbeds, undefined);
    }
    const b = stackEncodedBatch(pairs.slice(0, 2));
    t.is(b.x0w.length, 32);
    t.is(b.encoderHiddenStates.length, 30);
  }
});

test('encode cache: a bad manifest or shard is reported by file and field', async (t) => {
  const dir = await tempDir();
  const w = new CacheWriter(dir, cacheSpec('F32'), 2);
  for (let i = 0; i < 3; i++) await w.add(encodedPair(i));
  await w.finish();
  const manifest = JSON.parse(await readFile(join(dir, 'cache.json'), 'utf8'));
  await writeFile(join(dir, 'cache.json'), JSON.stringify({ ...manifest, latent_shape: [4, 2] }));
  t.regex((await t.throwsAsync(openDataset(dir), { code: 'NCP_EDATA' })).message, /cache\.json: field 'latent_shape' is \[4,2\]; expected \[C, H, W\]/);
  await writeFile(join(dir, 'cache.json'), JSON.stringify({ ...manifest, pairs: 4 }));
  t.regex((await t.throwsAsync(openDataset(dir))).message, /field 'pairs' is 4; expected the sum of the shards' pairs \(3\)/);
  await writeFile(join(dir, 'cache.json'), JSON.stringify(manifest));
  const shard = join(dir, manifest.shards[1].file);
  const bytes = await readFile(shard);
  await writeFile(shard, bytes.subarray(0, bytes.length - 10));
  t.regex((await t.throwsAsync(openDataset(dir))).message, /shard-00001\.safetensors.*truncated/);
  await t.throwsAsync(w.add({ ...encodedPair(0), chosen: new Float32Array(3) }), { message: /chosen latent has 3 values, expected 16/ });
});
