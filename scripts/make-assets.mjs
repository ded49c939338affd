// Writes the embedded default that `ncp-native train` uses when given no --model/--data (committed under assets/;
// rerun only to change them): assets/tiny-sd15, a complete diffusers folder of a tiny SD1.5-style model (the golden
// test model's U-Net, VAE and text encoder, a small CLIP-style BPE vocabulary that fits its 300-token text
// encoder, a DDPM scheduler config), and assets/tiny-pairs, 16 preference pairs of small images with prompts.
//
// The pairs are synthetic and learnable: the preferred image is a smooth gradient in the colours the prompt names,
// the rejected one a noisy grey. Deterministic (a fixed LCG), so rerunning rewrites identical files.
import { cpSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { fromFloat32, readSafetensorsSync, serializeSafetensors, toFloat32 } from '../dist/safetensors.js';
import { writeTinyTokenizer } from '../test/tiny-model.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const golden = join(root, 'test', 'fixtures', 'golden', 'tiny-sd15');
const model = join(root, 'assets', 'tiny-sd15');
const pairs = join(root, 'assets', 'tiny-pairs');

// ---- Model folder.
rmSync(model, { recursive: true, force: true });
mkdirSync(join(model, 'unet'), { recursive: true });
cpSync(join(golden, 'unet', 'config.json'), join(model, 'unet', 'config.json'));
// The U-Net as the fp16 variant only (half the bytes; the loader falls back to the variant).
const unet = readSafetensorsSync(join(golden, 'unet', 'diffusion_pytorch_model.safetensors'));
const half = new Map();
for (const [name, t] of unet.tensors) half.set(name, { dtype: 'F16', shape: t.shape, bytes: fromFloat32(toFloat32(t.bytes, t.dtype), 'F16') });
writeFileSync(join(model, 'unet', 'diffusion_pytorch_model.fp16.safetensors'), Buffer.concat(serializeSafetensors(half, { format: 'pt' })));
cpSync(join(golden, 'vae'), join(model, 'vae'), { recursive: true });
cpSync(join(golden, 'text_encoder'), join(model, 'text_encoder'), { recursive: true });
await writeTinyTokenizer(model);
mkdirSync(join(model, 'scheduler'), { recursive: true });
writeFileSync(
  join(model, 'scheduler', 'scheduler_config.json'),
  JSON.stringify(
    { _class_name: 'DDIMScheduler', num_train_timesteps: 1000, beta_start: 0.00085, beta_end: 0.012, beta_schedule: 'scaled_linear', prediction_type: 'epsilon', clip_sample: false, set_alpha_to_one: false, steps_offset: 1, timestep_spacing: 'leading' },
    null,
    2,
  ) + '\n',
);
writeFileSync(
  join(model, 'model_index.json'),
  JSON.stringify(
    { _class_name: 'StableDiffusionPipeline', _diffusers_version: '0.25.0', scheduler: ['diffusers', 'DDIMScheduler'], text_encoder: ['transformers', 'CLIPTextModel'], tokenizer: ['transformers', 'CLIPTokenizer'], unet: ['diffusers', 'UNet2DConditionModel'], vae: ['diffusers', 'AutoencoderKL'] },
    null,
    2,
  ) + '\n',
);
writeFileSync(
  join(model, 'README.md'),
  '# tiny-sd15\n\nThe embedded default model of `ncp-native train`: a diffusers folder with the architecture of Stable Diffusion 1.5 at toy size (U-Net widths 32/64/64, 2-level VAE, 2-layer CLIP text encoder with a 300-token vocabulary). Random weights: it shows the whole pipeline in seconds, it does not make pictures. Made by scripts/make-assets.mjs.\n',
);

// ---- Preference pairs.
rmSync(pairs, { recursive: true, force: true });
mkdirSync(join(pairs, 'images'), { recursive: true });
let state = 12345;
const rand = () => ((state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 4294967296);
const colours = { red: [220, 40, 40], green: [40, 180, 60], blue: [40, 80, 220], yellow: [230, 210, 40], orange: [240, 140, 30], purple: [140, 60, 190], white: [240, 240, 240], black: [20, 20, 20] };
const things = ['a cat', 'a house', 'a boat', 'a tree', 'a flower', 'a car', 'a bird', 'a mountain'];
const names = Object.keys(colours);
const lines = [];
for (let i = 0; i < 16; i++) {
  const c1 = names[i % names.length], c2 = names[(i * 3 + 1) % names.length];
  const prompt = `${things[i % things.length]} in ${c1} and ${c2}`;
  const w = 32 + 8 * (i % 3), h = 32 + 8 * ((i + 1) % 2);
  const good = Buffer.alloc(w * h * 3), bad = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const f = (x + y) / (w + h - 2);
      for (let k = 0; k < 3; k++) {
        good[(y * w + x) * 3 + k] = Math.round(colours[c1][k] * (1 - f) + colours[c2][k] * f);
        bad[(y * w + x) * 3 + k] = Math.round(128 + (rand() - 0.5) * 160);
      }
    }
  const chosen = `images/${i}-chosen.png`, rejected = `images/${i}-rejected.png`;
  await sharp(good, { raw: { width: w, height: h, channels: 3 } }).png().toFile(join(pairs, chosen));
  await sharp(bad, { raw: { width: w, height: h, channels: 3 } }).png().toFile(join(pairs, rejected));
  lines.push(JSON.stringify({ prompt, chosen, rejected }));
}
writeFileSync(join(pairs, 'pairs.jsonl'), lines.join('\n') + '\n');
writeFileSync(
  join(pairs, 'README.md'),
  '# tiny-pairs\n\nThe embedded default dataset of `ncp-native train`: 16 synthetic preference pairs (JSONL with image paths). Preferred: a smooth gradient in the colours the prompt names; rejected: noisy grey. Made by scripts/make-assets.mjs.\n',
);
console.log(`wrote ${model} and ${pairs}`);
