// The U-Net of a diffusers folder against diffusers' own outputs (test/fixtures/golden, made by diffusers 0.25 in
// float64), through the CLI and the library, and what happens with broken inputs.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadUNet } from '../dist/index.js';
import { relError } from './helpers.js';
import { readSafetensors, writeSafetensors } from './safetensors.js';
import { fromFloat32, toFloat32 } from '../dist/safetensors.js';

const golden = fileURLToPath(new URL('./fixtures/golden/', import.meta.url));
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const run = (...args) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
const tmp = mkdtempSync(join(tmpdir(), 'ncp-unet-'));
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));

for (const model of ['tiny-sd15', 'tiny-sdxl']) {
  test(`${model}: forward --trace matches diffusers within 1e-4 for out.sample and every trace`, (t) => {
    const out = join(tmp, `${model}.safetensors`);
    const r = run('forward', '--model', join(golden, model), '--component', 'unet', '--input', join(golden, model, 'forward.safetensors'), '--output', out, '--trace');
    t.is(r.status, 0, r.stderr);
    const ref = readSafetensors(join(golden, model, 'forward.safetensors'));
    const ours = readSafetensors(out);
    const names = Object.keys(ref).filter((n) => n.startsWith('out.') || n.startsWith('trace.'));
    t.true(names.length >= 9);
    for (const name of names) {
      t.truthy(ours[name], `${name} missing from the output`);
      t.deepEqual(ours[name].shape, ref[name].shape, name);
      const err = relError(ours[name].data, ref[name].data);
      t.true(err < 1e-4, `${name}: relative error ${err}`);
    }
  });
}

test('library: loadUNet + forward and encode, with the same numbers as the file path', async (t) => {
  const ref = readSafetensors(join(golden, 'tiny-sdxl', 'forward.safetensors'));
  const unet = await loadUNet(join(golden, 'tiny-sdxl'));
  t.like(unet.config(), { sdxl: true, blockOutChannels: [32, 48, 64], numAttentionHeads: [2, 3, 4] });
  const tensor = (name) => ({ data: ref[name].data, shape: ref[name].shape });
  const inputs = {
    sample: tensor('in.sample'),
    timestep: tensor('in.timestep'),
    encoder_hidden_states: tensor('in.encoder_hidden_states'),
    text_embeds: tensor('in.text_embeds'),
    time_ids: tensor('in.time_ids'),
  };
  const { sample } = await unet.forward(inputs);
  t.true(relError(sample.data, ref['out.sample'].data) < 1e-4);
  const mid = await unet.encode(inputs, 'mid');
  t.deepEqual(mid.shape, ref['trace.mid_block'].shape);
  t.true(relError(mid.data, ref['trace.mid_block'].data) < 1e-4);
  const err = await t.throwsAsync(() => unet.forward({ ...inputs, time_ids: undefined }));
  t.is(err.code, 'NCP_EMISSING');
  t.regex(err.message, /in\.time_ids/);
});

test('library: an fp16 variant, and F16/F32 tensors at unaligned addresses, run exactly as their float32 widening', async (t) => {
  // The U-Net keeps weight matrices in the mapped file and widens halves inside the GEMMs; a misaligned float32
  // matrix is copied instead. Every form must give the float32 model of the same values, bit for bit.
  const ref = readSafetensors(join(golden, 'tiny-sd15', 'forward.safetensors'));
  const src = readSafetensors(weights(join(golden, 'tiny-sd15')));
  const half = {}, widened = {}, mixed = {};
  let parameters = 0, i = 0;
  for (const [name, w] of Object.entries(src)) {
    const bytes = fromFloat32(w.data, 'F16');
    half[name] = { dtype: 'F16', shape: w.shape, bytes };
    widened[name] = { dtype: 'F32', shape: w.shape, bytes: new Uint8Array(toFloat32(bytes, 'F16').buffer) };
    mixed[name] = i++ % 2 ? half[name] : widened[name];
    parameters += w.data.length;
  }
  const variantDir = join(tmp, 'fp16-variant'), mixedDir = join(tmp, 'mixed-unaligned');
  for (const d of [variantDir, mixedDir]) cpSync(join(golden, 'tiny-sd15'), d, { recursive: true });
  writeSafetensors(join(variantDir, 'unet', 'diffusion_pytorch_model.fp16.safetensors'), half);
  writeSafetensors(weights(variantDir), widened);
  writeSafetensors(weights(mixedDir), mixed, undefined, 2);
  const inputs = {
    sample: { data: ref['in.sample'].data, shape: ref['in.sample'].shape },
    timestep: { data: ref['in.timestep'].data, shape: ref['in.timestep'].shape },
    encoder_hidden_states: { data: ref['in.encoder_hidden_states'].data, shape: ref['in.encoder_hidden_states'].shape },
  };
  const forward = async (dir, variant) => (await (await loadUNet(dir, { variant })).forward(inputs)).sample.data;
  const float32 = await forward(variantDir, '');
  t.true(relError(float32, ref['out.sample'].data) < 1e-2, 'fp16-rounded weights stay near the golden output');
  t.deepEqual(await forward(variantDir, 'fp16'), float32);
  t.deepEqual(await forward(mixedDir, ''), float32);
  t.is((await loadUNet(variantDir, { variant: 'fp16' })).config().parameters, parameters);
});

// A copy of tiny-sd15 to break in various ways.
function brokenModel(name, breakIt) {
  const dir = join(tmp, name);
  cpSync(join(golden, 'tiny-sd15'), dir, { recursive: true });
  breakIt(dir);
  return dir;
}
const forwardOn = (dir, input = join(golden, 'tiny-sd15', 'forward.safetensors')) =>
  run('forward', '--model', dir, '--input', input, '--output', join(tmp, 'never.safetensors'));
const weights = (dir) => join(dir, 'unet', 'diffusion_pytorch_model.safetensors');

test('corrupt weights: truncated file, header length beyond the file', (t) => {
  const trunc = brokenModel('trunc', (d) => truncateSync(weights(d), 4_000_000));
  let r = forwardOn(trunc);
  t.is(r.status, 1);
  t.regex(r.stderr, /diffusion_pytorch_model\.safetensors/);
  t.regex(r.stderr, /NCP_EFORMAT/);
  const longHeader = brokenModel('header', (d) => {
    const buf = readFileSync(weights(d));
    buf.writeBigUInt64LE(10n ** 12n, 0);
    writeFileSync(weights(d), buf);
  });
  r = forwardOn(longHeader);
  t.is(r.status, 1);
  t.regex(r.stderr, /header length .* exceeds|beyond/i);
});

test('wrong dtype, missing tensor, wrong shape: each named', (t) => {
  const ref = readSafetensors(weights(join(golden, 'tiny-sd15')));
  const rewrite = (name, edit) =>
    brokenModel(name, (d) => {
      const tensors = {};
      for (const [n, x] of Object.entries(ref)) tensors[n] = { dtype: 'F32', shape: x.shape, bytes: new Uint8Array(x.data.buffer) };
      edit(tensors);
      writeSafetensors(weights(d), tensors);
    });
  let r = forwardOn(rewrite('dtype', (ts) => { ts['conv_in.bias'] = { ...ts['conv_in.bias'], dtype: 'U8' }; }));
  t.is(r.status, 1);
  t.regex(r.stderr, /NCP_EDTYPE|NCP_EFORMAT/);
  t.regex(r.stderr, /conv_in\.bias/);
  r = forwardOn(rewrite('missing', (ts) => { delete ts['mid_block.resnets.0.conv1.weight']; }));
  t.is(r.status, 1);
  t.regex(r.stderr, /missing: mid_block\.resnets\.0\.conv1\.weight/);
  r = forwardOn(rewrite('shape', (ts) => { ts['conv_in.bias'] = { dtype: 'F32', shape: [16], bytes: new Uint8Array(64) }; }));
  t.is(r.status, 1);
  t.regex(r.stderr, /conv_in\.bias.*\[16\].*\[32\]/);
});

test('a config with an unknown block type names the field and the value', (t) => {
  const dir = brokenModel('config', (d) => {
    const path = join(d, 'unet', 'config.json');
    const c = JSON.parse(readFileSync(path, 'utf8'));
    c.down_block_types[1] = 'FooBlock2D';
    writeFileSync(path, JSON.stringify(c));
  });
  const r = forwardOn(dir);
  t.is(r.status, 1);
  t.regex(r.stderr, /down_block_types/);
  t.regex(r.stderr, /FooBlock2D/);
});

test('bad inputs file: missing tensor and wrong latent channels are named', (t) => {
  const ref = readSafetensors(join(golden, 'tiny-sd15', 'forward.safetensors'));
  const f32 = (x, shape = x.shape) => ({ dtype: 'F32', shape, bytes: new Uint8Array(x.data.buffer) });
  const noText = join(tmp, 'no-text.safetensors');
  writeSafetensors(noText, { 'in.sample': f32(ref['in.sample']), 'in.timestep': f32(ref['in.timestep']) });
  let r = forwardOn(join(golden, 'tiny-sd15'), noText);
  t.is(r.status, 1);
  t.regex(r.stderr, /in\.encoder_hidden_states/);
  const badChannels = join(tmp, 'channels.safetensors');
  writeSafetensors(badChannels, {
    'in.sample': f32(ref['in.sample'], [4, 2, 16, 16]),
    'in.timestep': f32(ref['in.timestep']),
    'in.encoder_hidden_states': f32(ref['in.encoder_hidden_states']),
  });
  r = forwardOn(join(golden, 'tiny-sd15'), badChannels);
  t.is(r.status, 1);
  t.regex(r.stderr, /in\.sample.*\[4, 2, 16, 16\]/);
  r = run('forward', '--model', join(tmp, 'nowhere'), '--input', noText, '--output', join(tmp, 'x.safetensors'));
  t.is(r.status, 1);
  t.regex(r.stderr, /nowhere/);
});
