// Text-to-image sampling with a diffusers folder (SD1.x or SDXL) and optionally a LoRA: the CLIP prompt
// conditioning of each family, seeded initial latents, DDIM or Euler steps with classifier-free guidance, and the
// VAE decode to 8-bit RGB (and a PNG). The U-Net, text encoders and VAE run in the native core; the scheduler
// arithmetic here.
//
// Conditioning, as diffusers' pipelines build it:
//   SD1.x  encoder_hidden_states = last_hidden_state of text_encoder.
//   SDXL   encoder_hidden_states = concat(penultimate of text_encoder, penultimate of text_encoder_2) on features;
//          text_embeds = the projected pooled output of text_encoder_2; time_ids = [H, W, 0, 0, H, W] (pixels).
//          With no negative prompt and force_zeros_for_empty_prompt (model_index.json, true by default) the
//          unconditional embeddings are zeros, not the encoded empty prompt.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { writeFileAtomic } from './atomic-fs.js';
import { CodedError, describeFsError } from './errors.js';
import { native, type NativeTextEncoder, type NativeUNet, type NativeVae, type Tensor, type UNetInputs } from './native.js';
import { Rng } from './rng.js';
import { createScheduler, defaultSchedulerKind, readSchedulerConfig, type SchedulerKind } from './schedulers.js';
import { ClipTokenizer } from './tokenizer.js';
import { readComponentConfig, readUNetLora, unetLoraModules } from './unet-lora.js';

export interface SampleOptions {
  /** A diffusers folder: unet/, vae/, text_encoder/ (+ text_encoder_2/ for SDXL), tokenizer/(_2), scheduler/. */
  model: string;
  prompt: string;
  /** The unconditional prompt of classifier-free guidance (default: the empty prompt; SDXL: zeros, see above). */
  negative?: string;
  /** A LoRA file (kohya, diffusers or PEFT layout) and its scale (default 1). */
  lora?: string;
  loraScale?: number;
  /** Default: the folder's scheduler class (EulerDiscreteScheduler -> euler, else ddim). */
  scheduler?: SchedulerKind;
  steps: number;
  /** Guidance scale; classifier-free guidance runs when it is above 1 (as in diffusers). */
  cfg: number;
  seed: number;
  /** Pixels; default unet sample_size x the VAE downscale. Multiples of sizeMultiple(). */
  width?: number;
  height?: number;
  variant?: string;
  /** Where the U-Net runs: 'cpu' (default), 'cuda' or 'cuda:N' (the text encoders and the VAE stay on the CPU). */
  device?: string;
  /** Called with 0 before the first step, then after each step (for progress display). */
  onStep?: (done: number, total: number) => void;
}

export interface SampledImage {
  width: number;
  height: number;
  /** RGB, 8 bits, row-major [height, width, 3]. */
  rgb: Uint8Array;
  /** The final latents (before 1/scaling_factor) [1, C, h, w]. */
  latents: Tensor;
  scheduler: SchedulerKind;
  timesteps: number[];
}

function invalid(message: string): CodedError {
  return new CodedError('NCP_EINVAL', message);
}

async function readJsonIfPresent(path: string): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new CodedError('NCP_EMISSING', `${path}: ${describeFsError(err)}`, { cause: err });
  }
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch (err) {
    throw new CodedError('NCP_ECONFIG', `${path}: not valid JSON (${(err as Error).message})`);
  }
}

/** What fixes the image size: the VAE's downscale (2^(levels-1)) and the U-Net's 2^(levels-1) on latents. */
export interface SizeRules {
  vaeDownscale: number;
  unetFactor: number;
  /** width and height must be multiples of this (vaeDownscale * unetFactor). */
  multiple: number;
  defaultWidth: number;
  defaultHeight: number;
}

function levelsOf(config: Record<string, unknown>, source: string): number {
  const b = config['block_out_channels'];
  if (!Array.isArray(b) || b.length < 1) throw new CodedError('NCP_ECONFIG', `${source}: block_out_channels must be a non-empty list`);
  return b.length;
}

/** Reads the size rules from unet/config.json and vae/config.json (no weights loaded). */
export async function sizeRules(modelDir: string): Promise<SizeRules> {
  const unet = await readComponentConfig(modelDir, 'unet');
  const vae = await readComponentConfig(modelDir, 'vae');
  const vaeDownscale = 2 ** (levelsOf(vae, join(modelDir, 'vae', 'config.json')) - 1);
  const unetFactor = 2 ** (levelsOf(unet, join(modelDir, 'unet', 'config.json')) - 1);
  const s = unet['sample_size'];
  const [sh, sw] = Array.isArray(s) ? [Number(s[0]), Number(s[1])] : [Number(s ?? 64), Number(s ?? 64)];
  return { vaeDownscale, unetFactor, multiple: vaeDownscale * unetFactor, defaultHeight: sh * vaeDownscale, defaultWidth: sw * vaeDownscale };
}

function checkSize(name: string, v: number, rules: SizeRules): void {
  if (!Number.isInteger(v) || v < rules.multiple || v % rules.multiple !== 0)
    throw invalid(
      `${name} ${v} is not a positive multiple of ${rules.multiple} (the VAE downscales by ${rules.vaeDownscale} and the U-Net needs latent sides that are multiples of ${rules.unetFactor})`,
    );
}

interface Conditioning {
  /** [1, tokens, D] */
  hidden: Tensor;
  /** SDXL: [1, pooled] */
  pooled?: Tensor;
}

function zerosLike(t: Tensor): Tensor {
  return { data: new Float32Array(t.data.length), shape: [...t.shape] };
}

function ids(tok: ClipTokenizer, text: string): { data: Int32Array; shape: number[] } {
  const row = tok.encode(text);
  return { data: Int32Array.from(row), shape: [1, row.length] };
}

function checkTokenizerFits(tok: ClipTokenizer, enc: NativeTextEncoder, folder: string): void {
  const c = enc.config();
  if (tok.maxLength > c.maxPositionEmbeddings)
    throw new CodedError('NCP_ETOKENIZER', `${folder}: model_max_length ${tok.maxLength} exceeds the text encoder's max_position_embeddings ${c.maxPositionEmbeddings}`);
}

/** Concatenates [1, L, D1] and [1, L, D2] on the feature axis. */
function concatFeatures(a: Tensor, b: Tensor, what: string): Tensor {
  const [, L, D1] = a.shape as [number, number, number];
  const [, L2, D2] = b.shape as [number, number, number];
  if (L !== L2) throw invalid(`${what}: the two tokenizers give ${L} and ${L2} tokens; SDXL needs the same length from both`);
  const out = new Float32Array(L * (D1 + D2));
  for (let i = 0; i < L; i++) {
    out.set(a.data.subarray(i * D1, (i + 1) * D1), i * (D1 + D2));
    out.set(b.data.subarray(i * D2, (i + 1) * D2), i * (D1 + D2) + D1);
  }
  return { data: out, shape: [1, L, D1 + D2] };
}

/** Stacks rows [1, ...] into [n, ...]. */
function stack(ts: Tensor[]): Tensor {
  const n = ts[0]!.data.length;
  const out = new Float32Array(n * ts.length);
  ts.forEach((t, i) => out.set(t.data, i * n));
  return { data: out, shape: [ts.length, ...ts[0]!.shape.slice(1)] };
}

/** latents / scaling_factor (+ shift_factor) -> VAE -> [-1, 1] -> 8-bit RGB, HWC. */
function toRgb(image: Tensor): Uint8Array {
  const [, C, H, W] = image.shape as [number, number, number, number];
  if (C !== 3) throw new CodedError('NCP_ESHAPE', `the VAE decodes to ${C} channels; an RGB image needs 3`);
  const out = new Uint8Array(H * W * 3);
  const plane = H * W;
  for (let c = 0; c < 3; c++)
    for (let p = 0; p < plane; p++) {
      const v = Math.min(1, Math.max(0, image.data[c * plane + p]! / 2 + 0.5));
      out[p * 3 + c] = Math.round(v * 255);
    }
  return out;
}

/** Generates one image. Everything that can be checked without weights is checked before any loads. */
export async function sample(options: SampleOptions): Promise<SampledImage> {
  const { model } = options;
  if (typeof options.prompt !== 'string') throw invalid('prompt must be a string');
  if (!Number.isFinite(options.cfg)) throw invalid(`cfg must be a finite number, got ${options.cfg}`);
  if (!Number.isSafeInteger(options.seed) || options.seed < 0) throw invalid(`seed must be a non-negative integer, got ${options.seed}`);
  const loraScale = options.loraScale ?? 1;
  if (!Number.isFinite(loraScale)) throw invalid(`LoRA scale must be a finite number, got ${options.loraScale}`);

  const rules = await sizeRules(model);
  const width = options.width ?? rules.defaultWidth;
  const height = options.height ?? rules.defaultHeight;
  checkSize('width', width, rules);
  checkSize('height', height, rules);
  const schedCfg = await readSchedulerConfig(model);
  const kind = options.scheduler ?? defaultSchedulerKind(schedCfg);
  const scheduler = createScheduler(kind, schedCfg, options.steps);
  const lora = options.lora !== undefined ? unetLoraModules((await readUNetLora(model, options.lora)).weights, options.lora) : undefined;

  const n = native();
  const variant = options.variant ?? '';
  const unet: NativeUNet = await n.loadUNet(model, variant, options.device ?? 'cpu');
  const uc = unet.config();
  const sdxl = uc.sdxl;
  if (lora) unet.setLora(lora, loraScale);

  // --- prompt conditioning
  const te1 = await n.loadTextEncoder(model, 'text_encoder', variant);
  const tok1 = await ClipTokenizer.fromFolder(join(model, 'tokenizer'));
  checkTokenizerFits(tok1, te1, join(model, 'tokenizer'));
  let te2: NativeTextEncoder | undefined;
  let tok2: ClipTokenizer | undefined;
  if (sdxl) {
    te2 = await n.loadTextEncoder(model, 'text_encoder_2', variant);
    tok2 = await ClipTokenizer.fromFolder(join(model, 'tokenizer_2'));
    checkTokenizerFits(tok2, te2, join(model, 'tokenizer_2'));
    if (!te2.config().hasProjection) throw new CodedError('NCP_ECONFIG', `${join(model, 'text_encoder_2')}: SDXL needs a text_projection for the pooled condition`);
  }
  const encode = async (text: string): Promise<Conditioning> => {
    const o1 = await te1.encode({ input_ids: ids(tok1, text) });
    if (!sdxl) return { hidden: o1.last_hidden_state };
    const o2 = await te2!.encode({ input_ids: ids(tok2!, text) });
    return { hidden: concatFeatures(o1.penultimate_hidden_state, o2.penultimate_hidden_state, model), pooled: o2.text_embeds! };
  };
  const cond = await encode(options.prompt);
  const guided = options.cfg > 1;
  let uncond: Conditioning | undefined;
  if (guided) {
    const index = sdxl ? await readJsonIfPresent(join(model, 'model_index.json')) : undefined;
    const zeros = sdxl && options.negative === undefined && index?.['force_zeros_for_empty_prompt'] !== false;
    uncond = zeros ? { hidden: zerosLike(cond.hidden), pooled: zerosLike(cond.pooled!) } : await encode(options.negative ?? '');
  }
  if (cond.hidden.shape[2] !== uc.crossAttentionDim)
    throw new CodedError('NCP_ESHAPE', `${model}: the text encoder(s) give ${cond.hidden.shape[2]} features, the U-Net's cross_attention_dim is ${uc.crossAttentionDim}`);

  const rows = guided ? [uncond!, cond] : [cond]; // diffusers' order: unconditional first
  const B = rows.length;
  const base: Omit<UNetInputs, 'sample' | 'timestep'> = { encoder_hidden_states: stack(rows.map((r) => r.hidden)) };
  if (sdxl) {
    base.text_embeds = stack(rows.map((r) => r.pooled!));
    const tid = new Float32Array(6 * B);
    for (let b = 0; b < B; b++) tid.set([height, width, 0, 0, height, width], b * 6);
    base.time_ids = { data: tid, shape: [B, 6] };
  }

  // --- denoising
  const vae: NativeVae = await n.loadVae(model, variant);
  const vc = vae.config();
  if (vc.latentChannels !== uc.inChannels || uc.outChannels !== uc.inChannels)
    throw new CodedError('NCP_ECONFIG', `${model}: the VAE has ${vc.latentChannels} latent channels, the U-Net takes ${uc.inChannels} and gives ${uc.outChannels}`);
  const C = uc.inChannels;
  const h = height / rules.vaeDownscale;
  const w = width / rules.vaeDownscale;
  const size = C * h * w;
  const x = new Rng(options.seed).fillNormal(new Float32Array(size)) as Float32Array;
  if (scheduler.initNoiseSigma !== 1) for (let k = 0; k < size; k++) x[k] = x[k]! * scheduler.initNoiseSigma;
  const total = scheduler.timesteps.length;
  const eps = new Float32Array(size);
  options.onStep?.(0, total);
  for (let i = 0; i < total; i++) {
    const xin = scheduler.scaleModelInput(x, i);
    const batch = new Float32Array(size * B);
    for (let b = 0; b < B; b++) batch.set(xin, b * size);
    const out = await unet.forward({
      ...base,
      sample: { data: batch, shape: [B, C, h, w] },
      timestep: { data: new Float32Array(B).fill(scheduler.timesteps[i]!), shape: [B] },
    } as UNetInputs);
    const o = out.sample.data;
    if (guided) for (let k = 0; k < size; k++) eps[k] = o[k]! + options.cfg * (o[size + k]! - o[k]!);
    else eps.set(o.subarray(0, size));
    scheduler.step(eps, i, x);
    options.onStep?.(i + 1, total);
  }

  // --- decode
  const z = new Float32Array(size);
  for (let k = 0; k < size; k++) z[k] = x[k]! / vc.scalingFactor + (vc.shiftFactor || 0);
  const image = await vae.decode({ latent: { data: z, shape: [1, C, h, w] } }, { slice: 1 });
  if (image.shape[2] !== height || image.shape[3] !== width)
    throw new CodedError('NCP_ESHAPE', `the VAE decoded [${image.shape.join(', ')}], expected ${height}x${width}`);
  return { width, height, rgb: toRgb(image), latents: { data: x, shape: [1, C, h, w] }, scheduler: kind, timesteps: [...scheduler.timesteps] };
}

/** Encodes 8-bit RGB as PNG bytes. */
export async function encodePng(image: { width: number; height: number; rgb: Uint8Array }): Promise<Uint8Array> {
  return sharp(Buffer.from(image.rgb.buffer, image.rgb.byteOffset, image.rgb.byteLength), {
    raw: { width: image.width, height: image.height, channels: 3 },
  })
    .png()
    .toBuffer();
}

/** sample() and write the image to `out` as a PNG (atomically). */
export async function sampleToFile(options: SampleOptions & { out: string }): Promise<SampledImage> {
  const image = await sample(options);
  await writeFileAtomic(options.out, await encodePng(image));
  return image;
}
