// LoRA files: the three layouts of METHOD.md section 5 against the golden files (every layout read, every layout
// written, tensors exact), metadata, SDXL kohya files with SGM block names, kohya name resolution, and bad files.
import test from 'ava';
import { mkdtemp, rm, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readLoraFile, writeLoraFile, loraTensors, detectLoraLayout } from '../dist/lora-file.js';
import { unetModules, targetModules, guessDottedName, sgmToDiffusers, underscored, KohyaNameResolver } from '../dist/lora-names.js';
import { readSafetensors, readHeader, toFloat32, fromFloat32, serializeSafetensors } from '../dist/safetensors.js';

const GOLDEN = fileURLToPath(new URL('./fixtures/golden/', import.meta.url));
const LAYOUTS = ['kohya', 'diffusers', 'peft'];
const MODELS = ['tiny-sd15', 'tiny-sdxl'];
const tmpDirs = [];
async function tempDir() {
  const d = await mkdtemp(join(tmpdir(), 'ncp-lora-'));
  tmpDirs.push(d);
  return d;
}
test.after.always(async () => {
  await Promise.all(tmpDirs.map((d) => rm(d, { recursive: true, force: true })));
});

const unetConfig = async (model) => JSON.parse(await readFile(join(GOLDEN, model, 'unet', 'config.json'), 'utf8'));
const loraJson = async (model) => JSON.parse(await readFile(join(GOLDEN, model, 'lora', 'lora.json'), 'utf8'));
const goldenFile = (model, layout) => join(GOLDEN, model, 'lora', `${layout}.safetensors`);

// Real architectures (diffusers' unet/config.json of SD 1.5 and SDXL base), the parts that fix module names.
const SD15 = {
  block_out_channels: [320, 640, 1280, 1280],
  down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
  up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
  layers_per_block: 2,
};
const SDXL = {
  block_out_channels: [320, 640, 1280],
  down_block_types: ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
  up_block_types: ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
  layers_per_block: 2,
  transformer_layers_per_block: [1, 2, 10],
  addition_embed_type: 'text_time',
};

function sameBits(t, a, b, what) {
  t.is(a.length, b.length, what);
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  let diff = 0;
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) diff++;
  t.is(diff, 0, `${what}: ${diff} values differ`);
}

for (const model of MODELS) {
  for (const from of LAYOUTS) {
    test(`golden ${model}: reading ${from} and writing every layout reproduces the reference tensors exactly`, async (t) => {
      const unet = await unetConfig(model);
      const info = await loraJson(model);
      const lora = await readLoraFile(goldenFile(model, from), { unet });
      t.is(lora.layout, from);
      t.false(lora.sgmNames);
      t.deepEqual([...lora.weights.keys()].sort(), [...info.modules].sort());
      for (const m of lora.weights.values()) {
        t.is(m.rank, info.rank);
        t.is(m.alpha, info.alpha);
      }
      for (const to of LAYOUTS) {
        const ref = await readSafetensors(goldenFile(model, to));
        const ours = loraTensors(lora.weights, to);
        t.deepEqual([...ours.keys()].sort(), [...ref.tensors.keys()].sort(), `${from} -> ${to}: tensor names`);
        for (const [name, r] of ref.tensors) {
          const o = ours.get(name);
          t.deepEqual(o.shape, r.shape, `${name} shape`);
          sameBits(t, o.data, toFloat32(r.bytes, r.dtype), `${from} -> ${to}: ${name}`);
        }
      }
    });
  }

  test(`golden ${model}: the LoRA covers exactly the default targets of this U-Net`, async (t) => {
    const unet = await unetConfig(model);
    const info = await loraJson(model);
    t.deepEqual(targetModules(unet).map((m) => m.name).sort(), [...info.modules].sort());
  });
}

test('write -> read round trip through files, with metadata (kohya by default)', async (t) => {
  const dir = await tempDir();
  const unet = await unetConfig('tiny-sdxl');
  const { weights } = await readLoraFile(goldenFile('tiny-sdxl', 'peft'), { unet });
  for (const layout of LAYOUTS) {
    const path = join(dir, `${layout}.safetensors`);
    const meta = { targets: ['to_q', 'to_k', 'to_v', 'to_out.0'], baseModel: 'tiny-sdxl', objective: 'dpo', space: 'ncp', beta: 2500, steps: 12, seed: 7 };
    await writeLoraFile(path, weights, layout === 'kohya' ? { metadata: meta } : { layout, metadata: meta });
    const h = await readHeader(path);
    t.like(h.metadata, {
      'ncp.format': layout,
      'ncp.rank': '4',
      'ncp.alpha': '8.0',
      'ncp.targets': JSON.stringify(meta.targets),
      'ncp.base_model': 'tiny-sdxl',
      'ncp.objective': 'dpo',
      'ncp.space': 'ncp',
      'ncp.beta': '2500',
      'ncp.steps': '12',
      'ncp.seed': '7',
    });
    if (layout === 'kohya') t.like(h.metadata, { ss_network_dim: '4', ss_network_alpha: '8.0', ss_network_module: 'networks.lora' });
    const back = await readLoraFile(path);
    t.is(back.layout, layout);
    t.is(back.weights.size, weights.size);
    for (const [name, m] of weights) {
      const b = back.weights.get(name);
      t.truthy(b, name);
      t.is(b.alpha, m.alpha);
      sameBits(t, b.A, m.A, `${layout} ${name} A`);
      sameBits(t, b.B, m.B, `${layout} ${name} B`);
    }
  }
  // No stray temporary files after atomic writes.
  const { readdir } = await import('node:fs/promises');
  t.deepEqual((await readdir(dir)).sort(), ['diffusers.safetensors', 'kohya.safetensors', 'peft.safetensors']);
});

test('diffusers/PEFT files from other tools (no alpha anywhere) load with alpha = rank and B as stored', async (t) => {
  const dir = await tempDir();
  const golden = await readSafetensors(goldenFile('tiny-sd15', 'peft'));
  const path = join(dir, 'other-tool.safetensors');
  await writeFile(path, Buffer.concat(serializeSafetensors(golden.tensors))); // same tensors, no metadata
  const lora = await readLoraFile(path);
  const name = 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q';
  const m = lora.weights.get(name);
  t.is(m.alpha, 4);
  const storedB = golden.tensors.get(`unet.${name}.lora_B.weight`);
  sameBits(t, m.B, toFloat32(storedB.bytes, storedB.dtype), 'B');
});

test('kohya files stored in F16 are read (values widened exactly)', async (t) => {
  const dir = await tempDir();
  const golden = await readSafetensors(goldenFile('tiny-sd15', 'kohya'));
  const half = new Map();
  for (const [name, tt] of golden.tensors) half.set(name, { dtype: 'F16', shape: tt.shape, bytes: fromFloat32(toFloat32(tt.bytes, tt.dtype), 'F16') });
  const path = join(dir, 'half.safetensors');
  await writeFile(path, Buffer.concat(serializeSafetensors(half)));
  const lora = await readLoraFile(path, { unet: await unetConfig('tiny-sd15') });
  const name = 'mid_block.attentions.0.transformer_blocks.0.attn2.to_v';
  const ref = toFloat32(half.get(`lora_unet_${underscored(name)}.lora_up.weight`).bytes, 'F16');
  sameBits(t, lora.weights.get(name).B, ref, 'B');
  t.is(lora.weights.get(name).alpha, 8);
});

// --- SGM (ldm) names of SDXL kohya files ---------------------------------------------------------------------------

const SGM_CASES = [
  // [config, SGM path, diffusers path]
  [SDXL, 'input_blocks.4.1.transformer_blocks.0.attn1.to_q', 'down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q'],
  [SDXL, 'input_blocks.5.1.transformer_blocks.1.attn2.to_out.0', 'down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_out.0'],
  [SDXL, 'input_blocks.8.1.transformer_blocks.9.attn2.to_k', 'down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k'],
  [SDXL, 'middle_block.1.transformer_blocks.3.ff.net.2', 'mid_block.attentions.0.transformer_blocks.3.ff.net.2'],
  [SDXL, 'output_blocks.0.1.transformer_blocks.9.attn2.to_k', 'up_blocks.0.attentions.0.transformer_blocks.9.attn2.to_k'],
  [SDXL, 'output_blocks.5.1.proj_out', 'up_blocks.1.attentions.2.proj_out'],
  [SDXL, 'output_blocks.2.2.conv', 'up_blocks.0.upsamplers.0.conv'],
  [SDXL, 'output_blocks.8.0.skip_connection', 'up_blocks.2.resnets.2.conv_shortcut'],
  [SDXL, 'input_blocks.3.0.op', 'down_blocks.0.downsamplers.0.conv'],
  [SDXL, 'input_blocks.1.0.in_layers.2', 'down_blocks.0.resnets.0.conv1'],
  [SDXL, 'input_blocks.7.0.emb_layers.1', 'down_blocks.2.resnets.0.time_emb_proj'],
  [SDXL, 'label_emb.0.0', 'add_embedding.linear_1'],
  [SDXL, 'time_embed.2', 'time_embedding.linear_2'],
  [SD15, 'input_blocks.1.1.transformer_blocks.0.attn1.to_v', 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v'],
  [SD15, 'input_blocks.6.0.op', 'down_blocks.1.downsamplers.0.conv'],
  [SD15, 'input_blocks.11.0.out_layers.3', 'down_blocks.3.resnets.1.conv2'],
  [SD15, 'output_blocks.2.1.conv', 'up_blocks.0.upsamplers.0.conv'], // UpBlock2D: no attention, upsampler at J = 1
  [SD15, 'output_blocks.3.1.proj_in', 'up_blocks.1.attentions.0.proj_in'],
  [SD15, 'output_blocks.11.1.transformer_blocks.0.ff.net.0.proj', 'up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj'],
  [SD15, 'middle_block.2.in_layers.2', 'mid_block.resnets.1.conv1'],
  [SD15, 'input_blocks.0.0', 'conv_in'],
  [SD15, 'out.2', 'conv_out'],
];

test('SGM block names map to diffusers module names (SD 1.5 and SDXL layouts)', (t) => {
  for (const [cfg, sgm, name] of SGM_CASES) t.is(sgmToDiffusers(sgm, cfg), name, sgm);
  // Every module has a distinct SGM name, and the module counts are the real ones.
  for (const cfg of [SD15, SDXL]) {
    const mods = unetModules(cfg);
    t.is(new Set(mods.map((m) => m.sgm)).size, mods.length);
    t.is(new Set(mods.map((m) => underscored(m.sgm))).size, mods.length);
  }
  t.is(targetModules(SDXL).length, 560); // 70 transformer blocks x 2 attentions x 4 projections
  t.is(targetModules(SD15).length, 128); // 16 x 2 x 4
});

test('an SDXL kohya file with SGM names reads back to the reference LoRA', async (t) => {
  const dir = await tempDir();
  const unet = await unetConfig('tiny-sdxl');
  const { weights } = await readLoraFile(goldenFile('tiny-sdxl', 'kohya'), { unet });
  const path = join(dir, 'sgm.safetensors');
  await writeLoraFile(path, weights, { sgmNames: true, unet });
  const keys = [...(await readHeader(path)).tensors.keys()];
  t.true(keys.includes('lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight'));
  t.true(keys.includes('lora_unet_middle_block_1_transformer_blocks_1_attn2_to_out_0.alpha'));
  t.false(keys.some((k) => k.includes('down_blocks')));
  const back = await readLoraFile(path, { unet });
  t.true(back.sgmNames);
  t.deepEqual([...back.weights.keys()].sort(), [...weights.keys()].sort());
  const ref = await readSafetensors(goldenFile('tiny-sdxl', 'diffusers'));
  for (const [name, r] of loraTensors(back.weights, 'diffusers')) sameBits(t, r.data, toFloat32(ref.tensors.get(name).bytes, 'F32'), name);
  // Without the U-Net config SGM names cannot be placed: a clear error, naming the tensor.
  const e = await t.throwsAsync(readLoraFile(path), { code: 'NCP_ELORA' });
  t.regex(e.message, /sgm\.safetensors: tensor lora_unet_\w+\.\w+.*SGM \(ldm\) block names need the U-Net config/);
});

test('kohya names: exact against the module list, and the fallback guess is exact for every real module', (t) => {
  for (const cfg of [SD15, SDXL]) {
    for (const m of unetModules(cfg)) t.is(guessDottedName(underscored(m.name)), m.name);
  }
  const r = new KohyaNameResolver({ config: SDXL });
  t.deepEqual(r.resolve('down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0'), { name: 'down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0', sgm: false });
  t.deepEqual(r.resolve('input_blocks_4_1_transformer_blocks_0_attn1_to_out_0'), { name: 'down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0', sgm: true });
  t.truthy(r.resolve('down_blocks_9_attentions_0_proj_in').error);
  const byList = new KohyaNameResolver({ modules: ['a.b_c.d'] });
  t.deepEqual(byList.resolve('a_b_c_d'), { name: 'a.b_c.d', sgm: false });
});

// --- bad files ------------------------------------------------------------------------------------------------------

test('bad LoRA files fail with messages naming the file and tensor', async (t) => {
  const dir = await tempDir();
  const write = async (name, tensors, meta) => {
    const p = join(dir, name);
    await writeFile(p, Buffer.concat(serializeSafetensors(tensors, meta)));
    return p;
  };
  const f = (shape) => ({ shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(0.5) });
  const mod = 'lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q';
  const onlyDown = await write('only-down.safetensors', { [`${mod}.lora_down.weight`]: f([4, 8]) });
  t.regex((await t.throwsAsync(readLoraFile(onlyDown), { code: 'NCP_ELORA' })).message, /only-down\.safetensors: module mid_block\.attentions\.0\.transformer_blocks\.0\.attn1\.to_q: has a down \(A\) tensor but no up \(B\) tensor/);
  const rank = await write('rank.safetensors', { [`${mod}.lora_down.weight`]: f([4, 8]), [`${mod}.lora_up.weight`]: f([8, 2]) });
  t.regex((await t.throwsAsync(readLoraFile(rank))).message, /rank mismatch/);
  const mixed = await write('mixed.safetensors', { [`${mod}.lora_down.weight`]: f([4, 8]), [`${mod}.lora_up.weight`]: f([8, 4]), 'unet.x.lora_A.weight': f([4, 8]) });
  t.regex((await t.throwsAsync(readLoraFile(mixed))).message, /mixes LoRA layouts \(kohya, peft\)/);
  const none = await write('none.safetensors', { 'model.weight': f([2, 2]) });
  t.regex((await t.throwsAsync(readLoraFile(none))).message, /no U-Net LoRA tensors found/);
  const unknown = await write('unknown.safetensors', { 'unet.down_blocks.7.attentions.0.proj_in.lora_A.weight': f([4, 8]), 'unet.down_blocks.7.attentions.0.proj_in.lora_B.weight': f([8, 4]) });
  t.regex((await t.throwsAsync(readLoraFile(unknown, { unet: await unetConfig('tiny-sd15') }))).message, /'down_blocks\.7\.attentions\.0\.proj_in' is not a module of this U-Net/);
  // Text-encoder LoRAs beside the U-Net's are left out and listed.
  const withTe = await write('te.safetensors', { [`${mod}.lora_down.weight`]: f([4, 8]), [`${mod}.lora_up.weight`]: f([8, 4]), 'lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight': f([4, 8]) });
  const l = await readLoraFile(withTe);
  t.deepEqual(l.skipped, ['lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight']);
  t.is(l.weights.size, 1);
  // A truncated file names the file.
  const trunc = join(dir, 'trunc.safetensors');
  const bytes = await readFile(goldenFile('tiny-sd15', 'kohya'));
  await writeFile(trunc, bytes.subarray(0, bytes.length - 100));
  const e = await t.throwsAsync(readLoraFile(trunc), { code: 'NCP_ESAFETENSORS' });
  t.regex(e.message, /trunc\.safetensors: truncated: tensor .* ends at byte \d+ but the file has \d+ bytes/);
  t.throws(() => detectLoraLayout(['foo']), { message: /no U-Net LoRA tensors/ });
  // Writing checks shapes.
  await t.throwsAsync(writeLoraFile(join(dir, 'w.safetensors'), new Map([['x.to_q', { A: new Float32Array(3), B: new Float32Array(8), rank: 2, alpha: 2, inFeatures: 2, outFeatures: 4 }]])), {
    message: /module x\.to_q: A has 3 values, expected rank 2 x in 2/,
  });
});
