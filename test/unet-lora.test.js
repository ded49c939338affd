// LoRA on the inference U-Net: UNet.setLora at a scale, `forward --lora` against the golden LoRA forward for every
// file layout, scale 0 = the plain network, and refusing to swap adapters under a running call.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { forwardFile, loadUNet, readUNetLora, unetLoraModules } from '../dist/index.js';
import { readSafetensorsSync, toFloat32 } from '../dist/safetensors.js';
import { writeLoraFile } from '../dist/lora-file.js';
import { relError } from './helpers.js';

const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const golden = (m) => fileURLToPath(new URL(`fixtures/golden/tiny-${m}`, import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'ncp-unet-lora-'));
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));

const run = (...args) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
const tensor = (file, name) => {
  const t = readSafetensorsSync(file).tensors.get(name);
  return { data: toFloat32(t.bytes, t.dtype), shape: t.shape };
};
const inputsOf = (file, sdxl) => {
  const names = ['sample', 'timestep', 'encoder_hidden_states', ...(sdxl ? ['text_embeds', 'time_ids'] : [])];
  return Object.fromEntries(names.map((n) => [n, tensor(file, `in.${n}`)]));
};

for (const m of ['sd15', 'sdxl'])
  for (const layout of ['kohya', 'diffusers', 'peft'])
    test(`forwardFile with a ${layout} LoRA (tiny-${m}) matches the golden LoRA forward`, async (t) => {
      const dir = golden(m);
      const out = join(tmp, `${m}-${layout}.safetensors`);
      const names = await forwardFile({ model: dir, input: join(dir, 'lora-forward.safetensors'), output: out, lora: join(dir, 'lora', `${layout}.safetensors`), trace: true });
      t.true(names.includes('out.sample') && names.includes('trace.mid_block'));
      const err = relError(tensor(out, 'out.sample').data, tensor(join(dir, 'lora-forward.safetensors'), 'out.sample').data);
      t.true(err < 1e-4, `relative error ${err}`);
    });

test('ncp-native forward --lora (kohya, SDXL) matches the golden LoRA forward', (t) => {
  const dir = golden('sdxl');
  const out = join(tmp, 'cli-sdxl-kohya.safetensors');
  const r = run('forward', '--model', dir, '--input', join(dir, 'lora-forward.safetensors'), '--output', out, '--lora', join(dir, 'lora', 'kohya.safetensors'), '--lora-scale', '1');
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /wrote 1 tensors to .*: out\.sample/);
  const err = relError(tensor(out, 'out.sample').data, tensor(join(dir, 'lora-forward.safetensors'), 'out.sample').data);
  t.true(err < 1e-4, `relative error ${err}`);
});

test('forward --lora-scale 0 equals the plain forward exactly', (t) => {
  const dir = golden('sdxl');
  const input = join(dir, 'lora-forward.safetensors');
  const plain = join(tmp, 'plain.safetensors');
  const zero = join(tmp, 'zero.safetensors');
  t.is(run('forward', '--model', dir, '--input', input, '--output', plain).status, 0);
  const r = run('forward', '--model', dir, '--input', input, '--output', zero, '--lora', join(dir, 'lora', 'peft.safetensors'), '--lora-scale', '0');
  t.is(r.status, 0, r.stderr);
  t.deepEqual(tensor(zero, 'out.sample').data, tensor(plain, 'out.sample').data);
  t.true(relError(tensor(zero, 'out.sample').data, tensor(join(dir, 'forward.safetensors'), 'out.sample').data) < 1e-4);
});

test('forward --lora is refused for other components and for a missing file', (t) => {
  const dir = golden('sd15');
  const other = run('forward', '--model', dir, '--component', 'vae-decoder', '--input', 'x', '--output', 'y', '--lora', 'z');
  t.is(other.status, 2);
  t.regex(other.stderr, /--lora applies to --component unet only/);
  const missing = run('forward', '--model', dir, '--input', join(dir, 'forward.safetensors'), '--output', join(tmp, 'never.safetensors'), '--lora', join(tmp, 'nope.safetensors'));
  t.is(missing.status, 1);
  t.regex(missing.stderr, /nope\.safetensors: does not exist \[NCP_ESAFETENSORS\]/);
});

test('setLora: scale folds into alpha, clearLora and scale 0 restore the plain network', async (t) => {
  const dir = golden('sd15');
  const unet = await loadUNet(dir);
  const inputs = inputsOf(join(dir, 'lora-forward.safetensors'), false);
  const plain = (await unet.forward(inputs)).sample.data;
  const modules = unetLoraModules((await readUNetLora(dir, join(dir, 'lora', 'kohya.safetensors'))).weights);
  const expected = JSON.parse(readFileSync(join(dir, 'lora', 'lora.json'), 'utf8')).modules;
  t.deepEqual(modules.map((m) => m.module).sort(), [...expected].sort());
  t.true(modules.every((m) => m.alpha === 8));

  unet.setLora(modules, 1);
  t.deepEqual(unet.loraInfo(), { modules: expected.length, scale: 1 });
  const one = (await unet.forward(inputs)).sample.data;
  t.true(relError(one, tensor(join(dir, 'lora-forward.safetensors'), 'out.sample').data) < 1e-4);
  t.true(relError(one, plain) > 1e-3, 'the LoRA changes the output');

  unet.setLora(modules, 2);
  const two = (await unet.forward(inputs)).sample.data;
  unet.setLora(modules.map((m) => ({ ...m, alpha: 16 })), 1);
  t.deepEqual((await unet.forward(inputs)).sample.data, two, 'scale 2 at alpha 8 = scale 1 at alpha 16');

  // encode (the NCP encoder) runs with the adapters too
  const encLora = await unet.encode(inputs, 'mid');
  unet.clearLora();
  t.deepEqual(unet.loraInfo(), { modules: 0, scale: 0 });
  t.deepEqual((await unet.forward(inputs)).sample.data, plain);
  t.true(relError(encLora.data, (await unet.encode(inputs, 'mid')).data) > 1e-4);

  unet.setLora(modules, 0);
  t.is(unet.loraInfo().modules, 0);
  t.deepEqual((await unet.forward(inputs)).sample.data, plain);
  unet.setLora(modules, 1);
  unet.setLora([], 0);
  t.deepEqual((await unet.forward(inputs)).sample.data, plain);
});

test('setLora refuses while a call runs (NCP_EBUSY) and checks modules (NCP_ELORA)', async (t) => {
  const dir = golden('sd15');
  const unet = await loadUNet(dir);
  const inputs = inputsOf(join(dir, 'forward.safetensors'), false);
  const modules = unetLoraModules((await readUNetLora(dir, join(dir, 'lora', 'diffusers.safetensors'))).weights);
  const pending = unet.forward(inputs);
  t.is(t.throws(() => unet.setLora(modules, 1)).code, 'NCP_EBUSY');
  t.is(t.throws(() => unet.clearLora()).code, 'NCP_EBUSY');
  const plain = (await pending).sample.data;
  unet.setLora(modules, 1); // free again once the call settled

  const bad = t.throws(() => unet.setLora([{ ...modules[0], module: 'down_blocks.0.attentions.0.nope' }], 1));
  t.is(bad.code, 'NCP_ELORA');
  t.regex(bad.message, /down_blocks\.0\.attentions\.0\.nope/);
  t.is(unet.loraInfo().modules, 0, 'a failed setLora leaves no adapters attached');
  t.deepEqual((await unet.forward(inputs)).sample.data, plain);

  const wide = modules[0];
  const shape = t.throws(() => unet.setLora([{ ...wide, A: { data: new Float32Array(4 * 7), shape: [4, 7] } }], 1));
  t.is(shape.code, 'NCP_ELORA');
  t.is(t.throws(() => unet.setLora(modules, Number.NaN)).code, 'NCP_EINVAL');
  t.is(t.throws(() => unet.setLora([modules[0], modules[0]], 1)).code, 'NCP_ELORA');
});

test('unetLoraModules refuses conv LoRAs with a kernel larger than 1x1', (t) => {
  const w = new Map([['down_blocks.0.resnets.0.conv1', { A: new Float32Array(4 * 8 * 9), B: new Float32Array(8 * 4), rank: 4, alpha: 4, inFeatures: 8, outFeatures: 8, kernel: [3, 3] }]]);
  const e = t.throws(() => unetLoraModules(w, 'x.safetensors'));
  t.is(e.code, 'NCP_EUNSUPPORTED');
  t.regex(e.message, /x\.safetensors: module down_blocks\.0\.resnets\.0\.conv1 is a 3x3 conv LoRA/);
});

test('a kohya file with SDXL SGM block names (as sd-scripts writes) gives the same LoRA forward', async (t) => {
  const dir = golden('sdxl');
  const { weights } = await readUNetLora(dir, join(dir, 'lora', 'peft.safetensors'));
  const unetConfig = JSON.parse(readFileSync(join(dir, 'unet', 'config.json'), 'utf8'));
  const sgm = join(tmp, 'sgm.safetensors');
  await writeLoraFile(sgm, weights, { layout: 'kohya', sgmNames: true, unet: unetConfig });
  t.true([...readSafetensorsSync(sgm).tensors.keys()].some((k) => k.startsWith('lora_unet_input_blocks_')));
  const out = join(tmp, 'sgm-out.safetensors');
  await forwardFile({ model: dir, input: join(dir, 'lora-forward.safetensors'), output: out, lora: sgm });
  const err = relError(tensor(out, 'out.sample').data, tensor(join(dir, 'lora-forward.safetensors'), 'out.sample').data);
  t.true(err < 1e-4, `relative error ${err}`);
});
