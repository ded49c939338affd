// The conditioning encoder (src/pipeline.ts) and `ncp-native encode` (src/encode.ts): latents and text conditioning
// against the VAE and text encoder run directly, the cache read back against encoding on the fly, SDXL pieces, the
// corrupt fixture image, atomic output and the errors for a bad --data, a model without vae/ and an existing --out.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClipTokenizer, loadTextEncoder, loadVae } from '../dist/index.js';
import { PairEncoder, pairBatchFromCache } from '../dist/pipeline.js';
import { encodeBatchSeed, encodeDataset } from '../dist/encode.js';
import { CachePairSource, detectDataset, openDataset, PairLoader, readCacheManifest, stackEncodedBatch, stackImageBatch } from '../dist/data/index.js';
import { relError } from './helpers.js';
import { makeTinyModel, writeTinyTokenizer } from './tiny-model.js';

const golden = fileURLToPath(new URL('./fixtures/golden/', import.meta.url));
const dataDir = fileURLToPath(new URL('./fixtures/data/', import.meta.url));
const JSONL = join(dataDir, 'pairs.jsonl');
const PICKAPIC = join(dataDir, 'pickapic');
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const run = (...args) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
const tmp = mkdtempSync(join(tmpdir(), 'ncp-encode-'));
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));

// tiny-sd15's unet, vae and text_encoder plus a tokenizer that fits it (test/tiny-model.js).
async function makeTinySd15(dir) {
  return makeTinyModel(dir);
}

// An SDXL-style encoder folder with no unet/ (so SDXL is read from text_encoder_2/): tiny-sdxl's text encoder twice
// (40 + 40 features, projection 40) and tiny-sd15's VAE; tokenizer_2 pads with '!' as SDXL's does.
async function makeTinySdxlEncoders(dir) {
  cpSync(join(golden, 'tiny-sd15', 'vae'), join(dir, 'vae'), { recursive: true });
  cpSync(join(golden, 'tiny-sdxl', 'text_encoder'), join(dir, 'text_encoder'), { recursive: true });
  cpSync(join(golden, 'tiny-sdxl', 'text_encoder'), join(dir, 'text_encoder_2'), { recursive: true });
  await writeTinyTokenizer(dir, 'tokenizer');
  await writeTinyTokenizer(dir, 'tokenizer_2');
  const cfg = join(dir, 'tokenizer_2', 'tokenizer_config.json');
  writeFileSync(cfg, JSON.stringify({ ...JSON.parse(readFileSync(cfg, 'utf8')), pad_token: '!' }));
  return dir;
}

const sd15 = join(tmp, 'tiny-sd15');
const sdxl = join(tmp, 'tiny-sdxl');
test.before(async () => {
  await makeTinySd15(sd15);
  await makeTinySdxlEncoders(sdxl);
});
const IMG32 = { resolution: 32, centerCrop: true, randomFlip: false };

async function imageBatches(data, size, opts = {}) {
  const loader = new PairLoader(await openDataset(data), { seed: 0, shuffle: false, image: IMG32, ...opts });
  const out = [];
  for await (const b of loader.batches(size)) out.push(b.pairs);
  return out;
}

async function cacheBatches(dir, size) {
  const loader = new PairLoader(await CachePairSource.open(dir), { seed: 0, shuffle: false });
  const out = [];
  for await (const b of loader.batches(size)) out.push(stackEncodedBatch(b.pairs));
  return out;
}

function sameTensor(t, a, b, label) {
  t.deepEqual(a.shape, b.shape, `${label}: shape`);
  t.is(a.data.length, b.data.length, `${label}: length`);
  let worst = 0;
  for (let i = 0; i < a.data.length; i++) worst = Math.max(worst, Math.abs(a.data[i] - b.data[i]));
  t.is(worst, 0, `${label}: max abs difference`);
}

test('tiny tokenizer: prompts come out as known tokens, bos 298, eos 299, 16 ids', async (t) => {
  const tok = await ClipTokenizer.fromFolder(join(sd15, 'tokenizer'));
  t.deepEqual(tok.tokenize('a red cat'), ['a</w>', 'red</w>', 'cat</w>']);
  const ids = tok.encode('a red cat');
  t.is(ids.length, 16);
  t.is(ids[0], 298);
  t.is(ids[4], 299);
  t.true(ids.slice(1, 4).every((i) => i < 298), JSON.stringify(ids));
});

test('PairEncoder (SD1.5): sizes from the folder; encodeBatch matches the VAE and text encoder run directly', async (t) => {
  const pe = await PairEncoder.load(sd15);
  t.false(pe.sdxl);
  t.is(pe.resolution, 32); // vae/config.json sample_size
  t.is(pe.latentScale, 0.18215);
  t.is(pe.downscale, 2);
  t.deepEqual(pe.textShape, [16, 48]);
  t.is(pe.pooledDim, null);

  const [pairs] = await imageBatches(JSONL, 3);
  const batch = stackImageBatch(pairs);
  const enc = await pe.encodeBatch(batch, 7);
  t.deepEqual(enc.x0_w.shape, [3, 4, 16, 16]);
  t.deepEqual(enc.x0_l.shape, [3, 4, 16, 16]);
  t.deepEqual(enc.encoder_hidden_states.shape, [3, 16, 48]);
  t.is(enc.text_embeds, undefined);
  t.is(enc.time_ids, undefined);

  // Directly: VAE posterior sampled with the same seed, times scaling_factor; rows [w0 w1 w2 l0 l1 l2].
  const vae = await loadVae(sd15);
  const dist = await vae.encode({ data: batch.images, shape: [6, 3, 32, 32] });
  const z = await vae.sample(dist, 7);
  const scaled = Float32Array.from(z.data, (v) => Math.fround(0.18215 * v));
  const n = 3 * 4 * 16 * 16;
  sameTensor(t, enc.x0_w, { data: scaled.subarray(0, n), shape: [3, 4, 16, 16] }, 'x0_w');
  sameTensor(t, enc.x0_l, { data: scaled.subarray(n), shape: [3, 4, 16, 16] }, 'x0_l');
  // A sample, not the mean; and another seed gives another sample.
  t.true(relError(enc.x0_w.data, Float32Array.from(dist.mean.data.subarray(0, n), (v) => 0.18215 * v)) > 1e-3);
  const other = await pe.encodeImages({ data: batch.images, shape: [6, 3, 32, 32] }, 8);
  t.true(relError(other.data.subarray(0, n), enc.x0_w.data) > 1e-3);

  const te = await loadTextEncoder(sd15);
  const tok = await ClipTokenizer.fromFolder(join(sd15, 'tokenizer'));
  const direct = await te.encode(pairs.map((p) => tok.encode(p.prompt)));
  sameTensor(t, enc.encoder_hidden_states, direct.last_hidden_state, 'encoder_hidden_states');
});

test('PairEncoder (SDXL): concat of both penultimate states, text_embeds of text_encoder_2, time_ids passed through', async (t) => {
  const pe = await PairEncoder.load(sdxl);
  t.true(pe.sdxl);
  t.deepEqual(pe.textShape, [16, 80]);
  t.is(pe.pooledDim, 40);
  const [pairs] = await imageBatches(JSONL, 2);
  const batch = stackImageBatch(pairs);
  const enc = await pe.encodeBatch(batch, 3);
  t.deepEqual(enc.encoder_hidden_states.shape, [2, 16, 80]);
  t.deepEqual(enc.text_embeds.shape, [2, 40]);
  t.deepEqual(enc.time_ids.shape, [2, 6]);
  t.deepEqual(Array.from(enc.time_ids.data), [...pairs[0].chosen.timeIds, ...pairs[1].chosen.timeIds]);

  const prompts = pairs.map((p) => p.prompt);
  const t1 = await (await loadTextEncoder(sdxl)).encode(prompts.map(((tok) => (p) => tok.encode(p))(await ClipTokenizer.fromFolder(join(sdxl, 'tokenizer')))));
  const tok2 = await ClipTokenizer.fromFolder(join(sdxl, 'tokenizer_2'));
  t.is(tok2.padId, 0);
  const t2 = await (await loadTextEncoder(sdxl, { component: 'text_encoder_2' })).encode(prompts.map((p) => tok2.encode(p)));
  const h = enc.encoder_hidden_states.data;
  for (let r = 0; r < 2 * 16; r++) {
    t.deepEqual(h.subarray(r * 80, r * 80 + 40), t1.penultimate_hidden_state.data.subarray(r * 40, r * 40 + 40));
    t.deepEqual(h.subarray(r * 80 + 40, r * 80 + 80), t2.penultimate_hidden_state.data.subarray(r * 40, r * 40 + 40));
  }
  sameTensor(t, enc.text_embeds, t2.text_embeds, 'text_embeds');
  // tokenizer_2 pads with '!' (id 0), so the two halves differ past the eos.
  t.true(relError(h.subarray(15 * 80, 15 * 80 + 40), h.subarray(15 * 80 + 40, 15 * 80 + 80)) > 1e-3);
});

test('encode (CLI, JSONL, F32): the cache reads back as the same tensors as encoding on the fly', async (t) => {
  const parent = join(tmp, 'jsonl');
  mkdirSync(parent);
  const out = join(parent, 'cache-jsonl');
  const r = run('encode', '--model', sd15, '--data', JSONL, '--out', out, '--batch', '3', '--shard-pairs', '2', '--dtype', 'F32', '--seed', '5');
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /wrote 4 pairs in 2 shards to .*cache-jsonl .*\(sd15, 32px centre crop, no flip; latents \[4, 16, 16\], text \[16, 48\], F32\)/);
  t.is(r.stderr, ''); // no progress line when stderr is not a TTY
  t.is((await detectDataset(out)).kind, 'cache');
  const m = await readCacheManifest(out);
  t.like(m, { model_kind: 'sd15', resolution: 32, pooled_dim: null, dtype: 'F32', pairs: 4, augment: { center_crop: true, random_flip: false }, source: { data: JSONL, kind: 'jsonl' } });
  t.deepEqual(m.latent_shape, [4, 16, 16]);
  t.deepEqual(m.text_shape, [16, 48]);
  t.deepEqual(readdirSync(parent), ['cache-jsonl']); // the temporary folder was renamed, nothing left beside it

  const pe = await PairEncoder.load(sd15);
  const live = await imageBatches(JSONL, 3);
  const cached = await cacheBatches(out, 3);
  t.is(cached.length, 2);
  for (let k = 0; k < 2; k++) {
    const want = await pe.encodeBatch(stackImageBatch(live[k]), encodeBatchSeed(5, k));
    const got = pairBatchFromCache(cached[k], m);
    t.deepEqual(cached[k].prompts, live[k].map((p) => p.prompt));
    for (const name of ['x0_w', 'x0_l', 'encoder_hidden_states']) sameTensor(t, got[name], want[name], `batch ${k} ${name}`);
  }
});

test('encode (library, SDXL, F16): text_embeds and both time_ids stored; F16 within rounding of on-the-fly', async (t) => {
  const out = join(tmp, 'cache-xl');
  const progress = [];
  const report = await encodeDataset({ model: sdxl, data: JSONL, out, batch: 2, onProgress: (p) => progress.push(p.pairs) });
  t.deepEqual(progress, [2, 4]);
  t.like(report.manifest, { model_kind: 'sdxl', pooled_dim: 40, dtype: 'F16', pairs: 4 });
  t.deepEqual(report.manifest.text_shape, [16, 80]);
  const pe = await PairEncoder.load(sdxl);
  const live = await imageBatches(JSONL, 2);
  const src = await CachePairSource.open(out);
  const rows = await src.read([{ block: 0, row: 0 }, { block: 0, row: 1 }, { block: 0, row: 2 }, { block: 0, row: 3 }]);
  const cached = await cacheBatches(out, 2);
  for (let k = 0; k < 2; k++) {
    const want = await pe.encodeBatch(stackImageBatch(live[k]), encodeBatchSeed(0, k));
    const got = pairBatchFromCache(cached[k], report.manifest);
    for (const name of ['x0_w', 'x0_l', 'encoder_hidden_states', 'text_embeds']) {
      t.deepEqual(got[name].shape, want[name].shape, name);
      const err = relError(got[name].data, want[name].data);
      t.true(err < 1e-3, `batch ${k} ${name}: ${err}`);
    }
    sameTensor(t, got.time_ids, want.time_ids, 'time_ids (F32 always)');
    for (let i = 0; i < 2; i++) {
      const p = live[k][i];
      t.deepEqual(Array.from(rows[2 * k + i].pair.chosenTimeIds), p.chosen.timeIds);
      t.deepEqual(Array.from(rows[2 * k + i].pair.rejectedTimeIds), p.rejected.timeIds);
    }
  }
});

test('encode (parquet): the corrupt image is skipped and reported; ties dropped; --max-pairs stops early', async (t) => {
  const out = join(tmp, 'cache-pq');
  let r = run('encode', '--model', sd15, '--data', PICKAPIC, '--out', out, '--max-corrupt-fraction', '0.5', '--batch', '2');
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /wrote 7 pairs in 1 shard /);
  t.regex(r.stdout, /skipped 2 ties, 1 with an unusable image of 10 rows read/);
  t.regex(r.stdout, /unusable image: .*train-00001\.parquet row 3 \(rejected\): /);
  const m = await readCacheManifest(out);
  t.like(m, { pairs: 7, source: { kind: 'parquet-folder' } });
  const cached = await cacheBatches(out, 7);
  t.deepEqual(cached[0].prompts, ['a red fox in snow', 'a lighthouse at dusk', 'a tiny robot', 'a sailing boat', 'a cat on a sofa', 'mountains at dawn', 'an old library']);

  const few = join(tmp, 'cache-few');
  r = run('encode', '--model', sd15, '--data', PICKAPIC, '--out', few, '--max-pairs', '3', '--batch', '2');
  t.is(r.status, 0, r.stderr);
  t.is((await readCacheManifest(few)).pairs, 3);
});

test('encode: more corrupt images than --max-corrupt-fraction fails and leaves no --out and no temporary folder', (t) => {
  const parent = join(tmp, 'fail');
  mkdirSync(parent);
  const out = join(parent, 'cache');
  const r = run('encode', '--model', sd15, '--data', PICKAPIC, '--out', out);
  t.is(r.status, 1);
  t.regex(r.stderr, /1 of 8 pairs had an unusable image, more than the allowed fraction 0\.05.*train-00001\.parquet row 3 \(rejected\).*\[NCP_EDATA\]/);
  t.false(existsSync(out));
  t.deepEqual(readdirSync(parent), []);
});

test('encode: an interrupted run (abort after the first batch) leaves nothing at --out', async (t) => {
  const parent = join(tmp, 'abort');
  mkdirSync(parent);
  const out = join(parent, 'cache');
  const ac = new AbortController();
  const e = await t.throwsAsync(
    encodeDataset({ model: sd15, data: JSONL, out, batch: 1, shardPairs: 1, signal: ac.signal, onProgress: () => ac.abort(Object.assign(new Error('stop'), { code: 'NCP_EINTERRUPTED' })) }),
  );
  t.regex(e.message, /stop/);
  t.false(existsSync(out));
  t.deepEqual(readdirSync(parent), []);
});

test('encode: a bad --data path, an image-less --data and a model without vae/ fail naming the path', async (t) => {
  const missing = join(tmp, 'no-such-data.jsonl');
  let r = run('encode', '--model', sd15, '--data', missing, '--out', join(tmp, 'x1'));
  t.is(r.status, 1);
  t.true(r.stderr.includes(`--data ${missing}: does not exist`), r.stderr);
  t.regex(r.stderr, /\[NCP_EDATA\]/);

  const cache = join(tmp, 'cache-as-data');
  t.is(run('encode', '--model', sd15, '--data', JSONL, '--out', cache, '--max-pairs', '1').status, 0);
  r = run('encode', '--model', sd15, '--data', cache, '--out', join(tmp, 'x2'));
  t.is(r.status, 1);
  t.regex(r.stderr, /cache-as-data is already an encode cache/);

  const novae = join(tmp, 'no-vae');
  await makeTinySd15(novae);
  rmSync(join(novae, 'vae'), { recursive: true });
  r = run('encode', '--model', novae, '--data', JSONL, '--out', join(tmp, 'x3'));
  t.is(r.status, 1);
  t.true(r.stderr.includes(`model folder ${novae}: vae/ does not exist (${join(novae, 'vae')})`), r.stderr);
  t.regex(r.stderr, /\[NCP_EIO\]/);
  t.false(existsSync(join(tmp, 'x3')));

  r = run('encode', '--model', join(tmp, 'nowhere'), '--data', JSONL, '--out', join(tmp, 'x4'));
  t.is(r.status, 1);
  t.true(r.stderr.includes(`model folder ${join(tmp, 'nowhere')}: does not exist`), r.stderr);
});

test('encode: a non-empty --out is refused unless --overwrite, which replaces it', async (t) => {
  const out = join(tmp, 'busy');
  mkdirSync(out);
  writeFileSync(join(out, 'keep.txt'), 'mine');
  let r = run('encode', '--model', sd15, '--data', JSONL, '--out', out, '--max-pairs', '1');
  t.is(r.status, 1);
  t.regex(r.stderr, /--out .*busy exists and is not empty; pass --overwrite/);
  t.is(readFileSync(join(out, 'keep.txt'), 'utf8'), 'mine');
  r = run('encode', '--model', sd15, '--data', JSONL, '--out', out, '--max-pairs', '1', '--overwrite');
  t.is(r.status, 0, r.stderr);
  t.false(existsSync(join(out, 'keep.txt')));
  t.is((await readCacheManifest(out)).pairs, 1);
  r = run('encode', '--model', sd15, '--data', JSONL, '--out', out, '--resolution', '20');
  t.is(r.status, 1);
  t.regex(r.stderr, /--resolution 20 must be a positive multiple of 8/);
});
