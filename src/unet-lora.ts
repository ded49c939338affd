// LoRA files applied to an inference U-Net: read a file in any layout (kohya, diffusers, PEFT; SDXL SGM names
// resolved against the model's unet/config.json), turn it into the adapters UNet.setLora takes, and the
// `ncp-native forward --lora` job (file in, file out) on top of that.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CodedError, describeFsError } from './errors.js';
import { readLoraFile, type LoraFile, type LoraWeights } from './lora-file.js';
import type { UNetArchConfig } from './lora-names.js';
import { native, type NativeUNet, type Tensor, type UNetInputs, type UNetLoraModule } from './native.js';
import { readSafetensors, toFloat32, writeSafetensors, type TensorToWrite } from './safetensors.js';

/** `<modelDir>/<component>/config.json` as parsed JSON (an object), with errors that name the file. */
export async function readComponentConfig(modelDir: string, component: string): Promise<Record<string, unknown>> {
  const path = join(modelDir, component, 'config.json');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new CodedError('NCP_EMISSING', `${path}: ${describeFsError(err)}`, { cause: err });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new CodedError('NCP_ECONFIG', `${path}: not valid JSON (${(err as Error).message})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new CodedError('NCP_ECONFIG', `${path}: must be a JSON object`);
  return parsed as Record<string, unknown>;
}

/**
 * The adapters of a LoRA file in UNet.setLora's form. Conv LoRAs with a 1x1 kernel (SD1.x proj_in/proj_out) go
 * as they are; larger kernels (resnet convs) have no Linear to attach to and are refused (NCP_EUNSUPPORTED).
 */
export function unetLoraModules(weights: LoraWeights, source = '<lora>'): UNetLoraModule[] {
  const out: UNetLoraModule[] = [];
  for (const [module, m] of weights) {
    if (m.kernel && (m.kernel[0] !== 1 || m.kernel[1] !== 1))
      throw new CodedError(
        'NCP_EUNSUPPORTED',
        `${source}: module ${module} is a ${m.kernel[0]}x${m.kernel[1]} conv LoRA; only Linear (and 1x1 conv) layers take adapters here`,
      );
    out.push({ module, A: { data: m.A, shape: [m.rank, m.inFeatures] }, B: { data: m.B, shape: [m.outFeatures, m.rank] }, alpha: m.alpha });
  }
  return out;
}

/** Reads a LoRA file for the U-Net of `modelDir` (its unet/config.json resolves kohya and SGM names). */
export async function readUNetLora(modelDir: string, path: string): Promise<LoraFile> {
  const unet = (await readComponentConfig(modelDir, 'unet')) as unknown as UNetArchConfig;
  return readLoraFile(path, { unet });
}

/**
 * Reads a LoRA file and attaches it to `unet` at `scale` (the update is scale * alpha / r * B A); scale 0 runs
 * the plain network. Resolves to the file as read (layout, modules).
 */
export async function applyLoraFile(unet: NativeUNet, modelDir: string, path: string, scale = 1): Promise<LoraFile> {
  if (!Number.isFinite(scale)) throw new CodedError('NCP_EINVAL', `LoRA scale must be a finite number, got ${scale}`);
  const file = await readUNetLora(modelDir, path);
  unet.setLora(unetLoraModules(file.weights, path), scale);
  return file;
}

const INPUTS = ['sample', 'timestep', 'encoder_hidden_states', 'text_embeds', 'time_ids'] as const;

/** The in.* tensors of a forward case file as float32 (int64 timesteps by value). */
export async function readForwardInputs(path: string, sdxl: boolean): Promise<UNetInputs> {
  const file = await readSafetensors(path);
  const get = (name: (typeof INPUTS)[number], required: boolean): Tensor | undefined => {
    const t = file.tensors.get(`in.${name}`);
    if (!t) {
      if (required) throw new CodedError('NCP_EMISSING', `${path}: no tensor in.${name}${sdxl && (name === 'text_embeds' || name === 'time_ids') ? ' (an SDXL U-Net needs it)' : ''}`);
      return undefined;
    }
    return { data: toFloat32(t.bytes, t.dtype), shape: [...t.shape] };
  };
  const inputs: UNetInputs = {
    sample: get('sample', true)!,
    timestep: get('timestep', true)!,
    encoder_hidden_states: get('encoder_hidden_states', true)!,
  };
  const te = get('text_embeds', sdxl);
  const ti = get('time_ids', sdxl);
  if (te) inputs.text_embeds = te;
  if (ti) inputs.time_ids = ti;
  return inputs;
}

/**
 * `ncp-native forward --component unet --lora FILE`: the U-Net of `model` with the LoRA at `loraScale` on the in.*
 * tensors of `input`; writes out.sample (and with `trace`, trace.*) to `output` atomically. Resolves to the names.
 */
export async function unetLoraForwardFile(options: { model: string; input: string; output: string; lora: string; loraScale?: number; trace?: boolean; variant?: string },
): Promise<string[]> {
  const scale = options.loraScale ?? 1;
  if (!Number.isFinite(scale)) throw new CodedError('NCP_EINVAL', `--lora-scale must be a finite number, got ${scale}`);
  // The LoRA file first: a bad file fails before the weights load.
  const lora = await readUNetLora(options.model, options.lora);
  const modules = unetLoraModules(lora.weights, options.lora);
  const unet = await native().loadUNet(options.model, options.variant ?? '');
  const inputs = await readForwardInputs(options.input, unet.config().sdxl);
  unet.setLora(modules, scale);
  const { sample, trace } = await unet.forward(inputs, { trace: options.trace ?? false });
  const tensors = new Map<string, TensorToWrite>([['out.sample', sample]]);
  for (const [name, t] of Object.entries(trace ?? {}).sort(([a], [b]) => (a < b ? -1 : 1))) tensors.set(`trace.${name}`, t);
  await writeSafetensors(options.output, tensors, { 'ncp.lora': options.lora, 'ncp.lora_scale': String(scale) });
  return [...tensors.keys()];
}
