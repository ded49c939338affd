// The CLIP text encoders and the VAE of a diffusers folder against transformers' and diffusers' own outputs
// (test/fixtures/golden, computed in float64), through `forward --component ...` and the library, and what happens
// with broken weights, configs and inputs.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { forwardFile, loadTextEncoder, loadVae } from '../dist/index.js';
import { relError } from './helpers.js';
import { readSafetensors, writeSafetensors } from './safetensors.js';

const golden = fileURLToPath(new URL('./fixtures/golden/', import.meta.url));
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const run = (...args) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
const tmp = mkdtempSync(join(tmpdir(), 'ncp-encoders-'));
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));

// Every out.* of `ours` (a written file) against the golden file, by name and shape, within 1e-4.
function expectGolden(t, oursPath, refPath, names) {
  const ref = readSafetensors(refPath);
  const ours = readSafetensors(oursPath);
  t.deepEqual(Object.keys(ours).sort(), [...names].sort());
  for (const name of names) {
    t.deepEqual(ours[name].shape, ref[name].shape, name);
    const err = relError(ours[name].data, ref[name].data);
    t.true(err < 1e-4, `${name}: relative error ${err}`);
  }
}

const textOutputs = ['out.last_hidden_state', 'out.penultimate_hidden_state', 'out.pooled', 'out.text_embeds'];
const vaeCase = join(golden, 'tiny-sd15', 'vae.safetensors');

test('forward --component vae-encoder and vae-decoder match diffusers within 1e-4', (t) => {
  const enc = join(tmp, 'vae-enc.safetensors');
  let r = run('forward', '--model', join(golden, 'tiny-sd15'), '--component', 'vae-encoder', '--input', vaeCase, '--output', enc);
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /out\.mean, out\.logvar/);
  expectGolden(t, enc, vaeCase, ['out.mean', 'out.logvar']);
  const dec = join(tmp, 'vae-dec.safetensors');
  r = run('forward', '--model', join(golden, 'tiny-sd15'), '--component', 'vae-decoder', '--input', vaeCase, '--output', dec, '--slice', '0');
  t.is(r.status, 0, r.stderr);
  expectGolden(t, dec, vaeCase, ['out.decoded']);
});

for (const model of ['tiny-sd15', 'tiny-sdxl']) {
  test(`${model}: forward --component text-encoder matches transformers within 1e-4`, (t) => {
    const out = join(tmp, `${model}-te.safetensors`);
    const input = join(golden, model, 'text_encoder.safetensors');
    const r = run('forward', '--model', join(golden, model), '--component', 'text-encoder', '--input', input, '--output', out);
    t.is(r.status, 0, r.stderr);
    expectGolden(t, out, input, textOutputs);
  });
}

test('forward --component text-encoder-2 reads <model>/text_encoder_2', (t) => {
  const dir = join(tmp, 'xl-two');
  cpSync(join(golden, 'tiny-sdxl', 'text_encoder'), join(dir, 'text_encoder_2'), { recursive: true });
  const out = join(tmp, 'te2.safetensors');
  const input = join(golden, 'tiny-sdxl', 'text_encoder.safetensors');
  let r = run('forward', '--model', dir, '--component', 'text-encoder-2', '--input', input, '--output', out);
  t.is(r.status, 0, r.stderr);
  expectGolden(t, out, input, textOutputs);
  r = run('forward', '--model', dir, '--component', 'text-encoder', '--input', input, '--output', out);
  t.is(r.status, 1);
  t.regex(r.stderr, /text_encoder\b.*NCP_EIO/s);
});

test('library: loadTextEncoder + encode from a tensor and from rows of ids; SDXL conditioning pieces', async (t) => {
  const ref = readSafetensors(join(golden, 'tiny-sdxl', 'text_encoder.safetensors'));
  const te = await loadTextEncoder(join(golden, 'tiny-sdxl'));
  t.like(te.config(), { component: 'text_encoder', hiddenSize: 40, numHiddenLayers: 3, numAttentionHeads: 5, hiddenAct: 'gelu', hasProjection: true, projectionDim: 40 });
  const ids = ref['in.input_ids'];
  const out = await te.encode({ data: ids.data, shape: ids.shape });
  for (const name of ['last_hidden_state', 'penultimate_hidden_state', 'pooled', 'text_embeds']) {
    t.deepEqual(out[name].shape, ref[`out.${name}`].shape, name);
    t.true(relError(out[name].data, ref[`out.${name}`].data) < 1e-4, name);
  }
  const rows = [Array.from(ids.data.subarray(0, 16)), Array.from(ids.data.subarray(16, 32))];
  const again = await te.encode(rows);
  t.deepEqual(again.pooled.data, out.pooled.data);
  let err = await t.throwsAsync(() => te.encode([[1, 2, 300]]));
  t.is(err.code, 'NCP_EINVAL');
  t.regex(err.message, /input_ids\[0, 2\] = 300/);
  err = await t.throwsAsync(() => te.encode([[1.5]]));
  t.is(err.code, 'NCP_EINVAL');
  err = await t.throwsAsync(() => te.encode({ data: new Int32Array(17), shape: [1, 17] }));
  t.is(err.code, 'NCP_ESHAPE');
  t.regex(err.message, /max_position_embeddings = 16/);
  const sd15 = await loadTextEncoder(join(golden, 'tiny-sd15'));
  t.is(sd15.config().hiddenAct, 'quick_gelu');
});

test('library: loadVae encode, sample with a seed, decode', async (t) => {
  const ref = readSafetensors(vaeCase);
  const vae = await loadVae(join(golden, 'tiny-sd15'));
  t.like(vae.config(), { scalingFactor: 0.18215, latentChannels: 4, blockOutChannels: [16, 32], downscale: 2 });
  const image = { data: ref['in.image'].data, shape: ref['in.image'].shape };
  const { mean, logvar } = await vae.encode(image);
  t.true(relError(mean.data, ref['out.mean'].data) < 1e-4);
  t.true(relError(logvar.data, ref['out.logvar'].data) < 1e-4);
  const z1 = await vae.sample({ mean, logvar }, 7);
  const z2 = await vae.sample({ mean, logvar }, 7n);
  const z3 = await vae.sample({ mean, logvar }, 8);
  t.deepEqual(z1.shape, mean.shape);
  t.deepEqual(z1.data, z2.data);
  t.notDeepEqual(z1.data, z3.data);
  // (z - mean) / exp(logvar / 2) is standard normal (2048 draws).
  const eps = Array.from(z1.data, (z, i) => (z - mean.data[i]) / Math.exp(logvar.data[i] / 2));
  const m = eps.reduce((a, b) => a + b, 0) / eps.length;
  const v = eps.reduce((a, b) => a + (b - m) ** 2, 0) / eps.length;
  t.true(Math.abs(m) < 0.1 && Math.abs(v - 1) < 0.15, `eps mean ${m}, variance ${v}`);
  const decoded = await vae.decode({ data: ref['in.latent'].data, shape: ref['in.latent'].shape }, { slice: 2 });
  t.true(relError(decoded.data, ref['out.decoded'].data) < 1e-4);
  let err = await t.throwsAsync(() => vae.encode({ data: new Float32Array(4 * 32 * 32), shape: [1, 4, 32, 32] }));
  t.is(err.code, 'NCP_ESHAPE');
  t.regex(err.message, /image.*\[1, 4, 32, 32\]/);
  err = await t.throwsAsync(() => vae.sample({ mean, logvar }, -1));
  t.is(err.code, 'NCP_EINVAL');
  const viaFile = await forwardFile({ model: join(golden, 'tiny-sd15'), component: 'vae-encoder', input: vaeCase, output: join(tmp, 'lib-enc.safetensors') });
  t.deepEqual(viaFile, ['out.mean', 'out.logvar']);
});

// A copy of tiny-sd15 whose text encoder or VAE is broken by `breakIt`.
function brokenModel(name, breakIt) {
  const dir = join(tmp, name);
  mkdirSync(dir, { recursive: true });
  for (const part of ['text_encoder', 'vae']) cpSync(join(golden, 'tiny-sd15', part), join(dir, part), { recursive: true });
  breakIt(dir);
  return dir;
}
function rewriteWeights(path, edit) {
  const tensors = {};
  for (const [n, x] of Object.entries(readSafetensors(path))) tensors[n] = { dtype: 'F32', shape: x.shape, bytes: new Uint8Array(x.data.buffer) };
  edit(tensors);
  writeSafetensors(path, tensors);
}
function editConfig(path, edit) {
  const c = JSON.parse(readFileSync(path, 'utf8'));
  edit(c);
  writeFileSync(path, JSON.stringify(c));
}
const textOn = (dir) =>
  run('forward', '--model', dir, '--component', 'text-encoder', '--input', join(golden, 'tiny-sd15', 'text_encoder.safetensors'), '--output', join(tmp, 'never.safetensors'));
const vaeOn = (dir, component = 'vae-decoder', input = vaeCase) =>
  run('forward', '--model', dir, '--component', component, '--input', input, '--output', join(tmp, 'never.safetensors'));

test('missing tensor, wrong shape: each named with the file', (t) => {
  let dir = brokenModel('te-missing', (d) => rewriteWeights(join(d, 'text_encoder', 'model.safetensors'), (ts) => delete ts['text_model.encoder.layers.0.self_attn.k_proj.bias']));
  let r = textOn(dir);
  t.is(r.status, 1);
  t.regex(r.stderr, /missing: text_model\.encoder\.layers\.0\.self_attn\.k_proj\.bias \[48\]/);
  t.regex(r.stderr, /model\.safetensors/);
  t.regex(r.stderr, /NCP_EWEIGHTS/);
  dir = brokenModel('te-shape', (d) =>
    rewriteWeights(join(d, 'text_encoder', 'model.safetensors'), (ts) => {
      ts['text_projection.weight'] = { dtype: 'F32', shape: [48, 40], bytes: new Uint8Array(48 * 40 * 4) };
    }));
  r = textOn(dir);
  t.is(r.status, 1);
  t.regex(r.stderr, /text_projection\.weight file \[48, 40\] expected \[48, 48\]/);
  dir = brokenModel('vae-missing', (d) => rewriteWeights(join(d, 'vae', 'diffusion_pytorch_model.safetensors'), (ts) => delete ts['post_quant_conv.weight']));
  r = vaeOn(dir);
  t.is(r.status, 1);
  t.regex(r.stderr, /missing: post_quant_conv\.weight \[4, 4, 1, 1\]/);
  dir = brokenModel('vae-shape', (d) =>
    rewriteWeights(join(d, 'vae', 'diffusion_pytorch_model.safetensors'), (ts) => {
      ts['decoder.mid_block.attentions.0.to_q.weight'] = { dtype: 'F32', shape: [32, 32, 1, 1], bytes: new Uint8Array(32 * 32 * 4) };
    }));
  r = vaeOn(dir);
  t.is(r.status, 1);
  t.regex(r.stderr, /decoder\.mid_block\.attentions\.0\.to_q\.weight file \[32, 32, 1, 1\] expected \[32, 32\]/);
});

test('unknown hidden_act and unsupported VAE blocks name the field and the value', (t) => {
  let dir = brokenModel('te-act', (d) => editConfig(join(d, 'text_encoder', 'config.json'), (c) => { c.hidden_act = 'relu6'; }));
  let r = textOn(dir);
  t.is(r.status, 1);
  t.regex(r.stderr, /hidden_act = "relu6"/);
  t.regex(r.stderr, /quick_gelu/);
  t.regex(r.stderr, /NCP_ECONFIG/);
  dir = brokenModel('vae-block', (d) => editConfig(join(d, 'vae', 'config.json'), (c) => { c.down_block_types[1] = 'AttnDownEncoderBlock2D'; }));
  r = vaeOn(dir, 'vae-encoder');
  t.is(r.status, 1);
  t.regex(r.stderr, /down_block_types\[1\] = "AttnDownEncoderBlock2D"/);
});

test('bad inputs: wrong channels, missing tensor, --trace, unknown component', (t) => {
  const ref = readSafetensors(vaeCase);
  const bad = join(tmp, 'bad-image.safetensors');
  writeSafetensors(bad, { 'in.image': { dtype: 'F32', shape: [2, 1, 96, 32], bytes: new Uint8Array(ref['in.image'].data.buffer) } });
  let r = vaeOn(join(golden, 'tiny-sd15'), 'vae-encoder', bad);
  t.is(r.status, 1);
  t.regex(r.stderr, /in\.image.*\[2, 1, 96, 32\].*NCP_ESHAPE/);
  r = vaeOn(join(golden, 'tiny-sd15'), 'vae-decoder', bad);
  t.is(r.status, 1);
  t.regex(r.stderr, /in\.latent.*NCP_EMISSING/);
  r = run('forward', '--model', join(golden, 'tiny-sd15'), '--component', 'text-encoder', '--input', vaeCase, '--output', join(tmp, 'x.safetensors'));
  t.is(r.status, 1);
  t.regex(r.stderr, /in\.input_ids/);
  r = run('forward', '--model', join(golden, 'tiny-sd15'), '--component', 'vae-encoder', '--input', vaeCase, '--output', join(tmp, 'x.safetensors'), '--trace');
  t.is(r.status, 1);
  t.regex(r.stderr, /unet only/);
  r = run('forward', '--model', join(golden, 'tiny-sd15'), '--component', 'clip', '--input', vaeCase, '--output', join(tmp, 'x.safetensors'));
  t.is(r.status, 2);
  t.regex(r.stderr, /vae-encoder/);
});
