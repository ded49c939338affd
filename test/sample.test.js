// `ncp-native sample` and sample() on a tiny SD1.5-style folder (test/tiny-model.js): PNGs of the requested size,
// seeded determinism, DDIM and Euler, LoRA at a scale, guidance, and errors that name what is wrong.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { encodePng, sample, sampleToFile, sizeRules } from '../dist/sampler.js';
import { TINY_SD15, makeTinyModel, makeTinySdxlModel } from './tiny-model.js';

const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const run = (...args) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
const tmp = mkdtempSync(join(tmpdir(), 'ncp-sample-'));
const model = join(tmp, 'tiny');
const kohya = join(TINY_SD15, 'lora', 'kohya.safetensors');
const base = { model, prompt: 'a photo of a cute cat', steps: 3, cfg: 4, seed: 7 };

test.before(async () => {
  await makeTinyModel(model);
});
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));

const png = async (opts) => Buffer.from(await encodePng(await sample(opts)));

test('size rules come from the VAE and U-Net depths', async (t) => {
  // VAE 2 levels (x2), U-Net 3 levels (latent multiple of 4): pixels in multiples of 8; sample_size 16 -> 32 px.
  t.deepEqual(await sizeRules(model), { vaeDownscale: 2, unetFactor: 4, multiple: 8, defaultWidth: 32, defaultHeight: 32 });
});

test('ncp-native sample writes a PNG of the requested size', async (t) => {
  const out = join(tmp, 'cli.png');
  const r = run('sample', '--model', model, '--prompt', 'a red car', '--steps', '3', '--cfg', '5', '--seed', '1', '--width', '40', '--height', '24', '--out', out);
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /wrote .*cli\.png \(40x24, ddim, 3 steps\)/);
  t.is(r.stderr, '', 'no progress bar when stderr is not a TTY');
  const meta = await sharp(out).metadata();
  t.like(meta, { format: 'png', width: 40, height: 24, channels: 3 });
  const { data, info } = await sharp(out).raw().toBuffer({ resolveWithObject: true });
  t.is(info.width * info.height * 3, data.length);
  t.true(new Set(data).size > 16, 'an image, not a constant');
});

test('the default size is unet sample_size x the VAE downscale', async (t) => {
  const img = await sample(base);
  t.is(img.width, 32);
  t.is(img.height, 32);
  t.deepEqual(img.latents.shape, [1, 4, 16, 16]);
  t.is(img.rgb.length, 32 * 32 * 3);
});

test('deterministic under a seed, different with another', async (t) => {
  const a = await png(base);
  const b = await png(base);
  t.true(a.equals(b), 'same seed, same bytes');
  t.false(a.equals(await png({ ...base, seed: 8 })), 'another seed, another image');
  // and through the command line: the same bytes as the library
  const out = join(tmp, 'seeded.png');
  const r = run('sample', '--model', model, '--prompt', base.prompt, '--steps', '3', '--cfg', '4', '--seed', '7', '--out', out);
  t.is(r.status, 0, r.stderr);
  t.true(readFileSync(out).equals(a));
});

test('DDIM and Euler both sample, differently; the folder class picks the default', async (t) => {
  const ddim = await sample({ ...base, scheduler: 'ddim' });
  const euler = await sample({ ...base, scheduler: 'euler' });
  t.is(ddim.scheduler, 'ddim');
  t.is(euler.scheduler, 'euler');
  t.deepEqual(ddim.timesteps, [667, 334, 1]); // leading, steps_offset 1
  t.deepEqual(euler.timesteps, [667, 334, 1]);
  t.false(Buffer.from(ddim.rgb).equals(Buffer.from(euler.rgb)));
  t.true(Buffer.from(euler.rgb).equals(Buffer.from((await sample({ ...base, scheduler: 'euler' })).rgb)));
  t.true(euler.latents.data.every(Number.isFinite));

  const eulerModel = await makeTinyModel(await mkdtemp(join(tmp, 'euler-')), {
    scheduler: { _class_name: 'EulerDiscreteScheduler', timestep_spacing: 'trailing', prediction_type: 'v_prediction' },
  });
  const v = await sample({ ...base, model: eulerModel });
  t.is(v.scheduler, 'euler');
  t.deepEqual(v.timesteps, [999, 666, 332]);
});

test('a LoRA changes the image; at scale 0 it is the base model exactly', async (t) => {
  const plain = await png(base);
  const withLora = await png({ ...base, lora: kohya, loraScale: 1 });
  t.false(plain.equals(withLora));
  t.true(withLora.equals(await png({ ...base, lora: kohya })), 'scale 1 is the default');
  t.true(plain.equals(await png({ ...base, lora: kohya, loraScale: 0 })));
  const out = join(tmp, 'lora.png');
  const r = run('sample', '--model', model, '--prompt', base.prompt, '--steps', '3', '--cfg', '4', '--seed', '7', '--lora', kohya, '--lora-scale', '1', '--out', out);
  t.is(r.status, 0, r.stderr);
  t.true(readFileSync(out).equals(withLora));
  t.like(await sharp(out).metadata(), { format: 'png', width: 32, height: 32 });
});

test('guidance: cfg <= 1 skips the unconditional pass, the negative prompt matters above 1', async (t) => {
  const noGuidance = await png({ ...base, cfg: 1 });
  t.false(noGuidance.equals(await png(base)));
  t.true(noGuidance.equals(await png({ ...base, cfg: 1, negative: 'a blue sky' })), 'no unconditional pass at cfg 1');
  t.false((await png(base)).equals(await png({ ...base, negative: 'a blue sky' })));
});

test('sampleToFile writes the PNG atomically', async (t) => {
  const out = join(tmp, 'lib.png');
  const img = await sampleToFile({ ...base, out, width: 16, height: 48 });
  t.like(await sharp(out).metadata(), { format: 'png', width: 16, height: 48 });
  t.deepEqual(img.latents.shape, [1, 4, 24, 8]);
});

test('errors: size, scheduler config, LoRA file, tokenizer length', async (t) => {
  const size = await t.throwsAsync(sample({ ...base, width: 36 }));
  t.is(size.code, 'NCP_EINVAL');
  t.regex(size.message, /width 36 is not a positive multiple of 8/);
  const cliSize = run('sample', '--model', model, '--prompt', 'x', '--steps', '2', '--height', '20', '--out', join(tmp, 'never.png'));
  t.is(cliSize.status, 1);
  t.regex(cliSize.stderr, /height 20 is not a positive multiple of 8 .*\[NCP_EINVAL\]/);

  const missingField = await makeTinyModel(await mkdtemp(join(tmp, 'nofield-')), { scheduler: { num_train_timesteps: undefined } });
  const e1 = await t.throwsAsync(sample({ ...base, model: missingField }));
  t.is(e1.code, 'NCP_ESCHEDULER');
  t.regex(e1.message, /scheduler_config\.json: field 'num_train_timesteps' is missing/);
  const badValue = await makeTinyModel(await mkdtemp(join(tmp, 'badvalue-')), { scheduler: { beta_schedule: 'cosine' } });
  const e2 = await t.throwsAsync(sample({ ...base, model: badValue }));
  t.is(e2.code, 'NCP_ESCHEDULER');
  t.regex(e2.message, /field 'beta_schedule' is "cosine"/);
  const badSpacing = run('sample', '--model', badValue, '--prompt', 'x', '--steps', '2', '--out', join(tmp, 'never.png'));
  t.is(badSpacing.status, 1);
  t.regex(badSpacing.stderr, /\[NCP_ESCHEDULER\]/);

  const noLora = await t.throwsAsync(sample({ ...base, lora: join(tmp, 'missing-lora.safetensors') }));
  t.is(noLora.code, 'NCP_ESAFETENSORS');
  t.regex(noLora.message, /missing-lora\.safetensors: does not exist/);
  const cliLora = run('sample', '--model', model, '--prompt', 'x', '--steps', '2', '--lora', join(tmp, 'missing-lora.safetensors'), '--out', join(tmp, 'never.png'));
  t.is(cliLora.status, 1);
  t.regex(cliLora.stderr, /missing-lora\.safetensors: does not exist/);

  const long = await makeTinyModel(await mkdtemp(join(tmp, 'long-')));
  const cfgPath = join(long, 'tokenizer', 'tokenizer_config.json');
  writeFileSync(cfgPath, JSON.stringify({ ...JSON.parse(readFileSync(cfgPath, 'utf8')), model_max_length: 77 }));
  const e3 = await t.throwsAsync(sample({ ...base, model: long }));
  t.is(e3.code, 'NCP_ETOKENIZER');
  t.regex(e3.message, /model_max_length 77 exceeds the text encoder's max_position_embeddings 16/);

  t.is((await t.throwsAsync(sample({ ...base, steps: 0 }))).code, 'NCP_EINVAL');
  t.is(run('sample', '--model', model, '--prompt', 'x', '--steps', '1.5', '--out', join(tmp, 'never.png')).status, 2);
  t.is(run('sample', '--model', model, '--prompt', 'x', '--scheduler', 'pndm', '--out', join(tmp, 'never.png')).status, 2);
});

test('SDXL folder: two encoders, pooled text_embeds, time_ids; zero unconditional embeddings unless told otherwise', async (t) => {
  const sdxl = await makeTinySdxlModel(join(tmp, 'sdxl'));
  const opts = { model: sdxl, prompt: 'a photo of a dog', steps: 3, cfg: 5, seed: 3 };
  const img = await sample(opts);
  t.is(img.scheduler, 'euler'); // the folder's EulerDiscreteScheduler
  t.deepEqual(img.latents.shape, [1, 4, 16, 16]);
  t.true(new Set(img.rgb).size > 16);
  const zeros = await png(opts);
  const empty = await png({ ...opts, negative: '' });
  t.false(zeros.equals(empty), 'no --negative: zero embeddings (force_zeros_for_empty_prompt), not the empty prompt');
  const noForce = await makeTinySdxlModel(join(tmp, 'sdxl-noforce'), { forceZeros: false });
  t.true((await png({ ...opts, model: noForce })).equals(empty), 'force_zeros_for_empty_prompt false: the empty prompt');
  const wide = await sample({ ...opts, width: 48, height: 32 });
  t.is(wide.rgb.length, 48 * 32 * 3);
  t.like(await sharp(Buffer.from(await encodePng(wide))).metadata(), { format: 'png', width: 48, height: 32 });
});
