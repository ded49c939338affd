// LoRA files in the three layouts other tools load (METHOD.md section 5), read with layout detection and written
// atomically. In memory a LoRA is one entry per diffusers module name with A [r, in] and B [out, r] *unscaled*
// (the update is (alpha / r) * B A), whatever layout the file had.
//
//   kohya     lora_unet_<module, dots as _>.lora_down.weight (A), .lora_up.weight (B), .alpha (0-d): alpha explicit,
//             B unscaled. Also read with SDXL SGM block names (input_blocks / middle_block / output_blocks).
//   diffusers unet.<module>.lora.down.weight (A), unet.<module>.lora.up.weight (B * alpha / r)
//   peft      unet.<module>.lora_A.weight (A), unet.<module>.lora_B.weight (B * alpha / r)
//
// Most loaders of the last two layouts read no alpha (they assume alpha = r), so B is written pre-multiplied by
// alpha / r and rank and alpha go to the metadata (`ncp.rank`, `ncp.alpha`); reading divides it back out when that
// metadata is there. Conv LoRAs (proj_in of SD1.5, resnet convs) keep their 4-d shapes: A [r, in, kh, kw],
// B [out, r, 1, 1].
import { CodedError } from './errors.js';
import { readSafetensors, toFloat32, writeSafetensors, type StoredTensor, type TensorToWrite } from './safetensors.js';
import { KohyaNameResolver, unetModules, type UNetArchConfig, type UNetModule } from './lora-names.js';

// unetModules() builds a few thousand strings for SDXL; reading and writing reuse it per config object.
const moduleCache = new WeakMap<UNetArchConfig, UNetModule[]>();
function unetModulesCached(config: UNetArchConfig): UNetModule[] {
  let m = moduleCache.get(config);
  if (!m) moduleCache.set(config, (m = unetModules(config)));
  return m;
}

export type LoraLayout = 'kohya' | 'diffusers' | 'peft';
export const LORA_LAYOUTS: readonly LoraLayout[] = ['kohya', 'diffusers', 'peft'];

export interface LoraModule {
  /** [rank, inFeatures * kh * kw], row-major */
  A: Float32Array;
  /** [outFeatures, rank], row-major, without the alpha / rank factor */
  B: Float32Array;
  rank: number;
  alpha: number;
  inFeatures: number;
  outFeatures: number;
  /** Set for conv layers: the kernel of A (B is 1x1). Absent for Linear layers. */
  kernel?: [number, number];
}

/** diffusers module name -> adapter */
export type LoraWeights = Map<string, LoraModule>;

/** What we record in the file header (all stored as strings under `ncp.*`). */
export interface LoraMetadata {
  targets?: readonly string[];
  baseModel?: string;
  objective?: string;
  space?: string;
  beta?: number;
  steps?: number;
  seed?: number;
  /** more `key: value` pairs, written as they are */
  extra?: Record<string, string>;
}

export interface ReadLoraOptions {
  /** The U-Net config (unet/config.json): resolves kohya names exactly and maps SGM names. */
  unet?: UNetArchConfig;
  /** Known module names (an alternative to `unet` for resolving kohya names). */
  modules?: readonly string[];
}

export interface LoraFile {
  path: string;
  layout: LoraLayout;
  /** The file used SDXL SGM block names (kohya only). */
  sgmNames: boolean;
  weights: LoraWeights;
  metadata: Record<string, string>;
  /** Keys that are not U-Net LoRA weights (text encoder LoRAs, ...), left out. */
  skipped: string[];
}

function loraError(path: string, message: string): CodedError {
  return new CodedError('NCP_ELORA', `${path}: ${message}`);
}

interface Parts {
  down?: StoredTensor;
  up?: StoredTensor;
  alpha?: StoredTensor;
  downKey?: string;
  upKey?: string;
}

const SUFFIXES: Array<{ layout: LoraLayout; re: RegExp; part: 'down' | 'up' | 'alpha' }> = [
  { layout: 'kohya', re: /^lora_unet_(.+)\.lora_down\.weight$/, part: 'down' },
  { layout: 'kohya', re: /^lora_unet_(.+)\.lora_up\.weight$/, part: 'up' },
  { layout: 'kohya', re: /^lora_unet_(.+)\.alpha$/, part: 'alpha' },
  { layout: 'peft', re: /^(?:unet\.|base_model\.model\.)?(.+)\.lora_A(?:\.default)?\.weight$/, part: 'down' },
  { layout: 'peft', re: /^(?:unet\.|base_model\.model\.)?(.+)\.lora_B(?:\.default)?\.weight$/, part: 'up' },
  { layout: 'diffusers', re: /^(?:unet\.)?(.+)\.lora\.down\.weight$/, part: 'down' },
  { layout: 'diffusers', re: /^(?:unet\.)?(.+)\.lora\.up\.weight$/, part: 'up' },
  // attention-processor era diffusers files: ...attn1.processor.to_q_lora.down.weight
  { layout: 'diffusers', re: /^(?:unet\.)?(.+)\.processor\.(to_[qkv]|to_out)_lora\.down\.weight$/, part: 'down' },
  { layout: 'diffusers', re: /^(?:unet\.)?(.+)\.processor\.(to_[qkv]|to_out)_lora\.up\.weight$/, part: 'up' },
  { layout: 'diffusers', re: /^(?:unet\.)?(.+)\.alpha$/, part: 'alpha' },
];

/** Keys that belong to other networks of the pipeline. */
function isOtherNetwork(key: string): boolean {
  return /^(lora_te\d*_|text_encoder(_2)?\.|te\d?\.)/.test(key);
}

function formatNumber(x: number): string {
  // Python's str(float) for whole numbers ('8.0'), which is how the reference files (and kohya) spell alpha.
  return Number.isInteger(x) ? x.toFixed(1) : String(x);
}

/** Detects the layout from the tensor names. */
export function detectLoraLayout(keys: Iterable<string>, path = '<lora>'): LoraLayout {
  const seen = new Set<LoraLayout>();
  for (const key of keys) {
    if (isOtherNetwork(key)) continue;
    if (/\.lora_(down|up)\.weight$/.test(key) && key.startsWith('lora_unet_')) seen.add('kohya');
    else if (/\.lora_[AB](\.default)?\.weight$/.test(key)) seen.add('peft');
    else if (/\.lora\.(down|up)\.weight$/.test(key) || /_lora\.(down|up)\.weight$/.test(key)) seen.add('diffusers');
  }
  if (seen.size === 0)
    throw loraError(path, 'no U-Net LoRA tensors found (expected lora_unet_*.lora_down.weight, unet.*.lora.down.weight or unet.*.lora_A.weight)');
  if (seen.size > 1) throw loraError(path, `mixes LoRA layouts (${[...seen].join(', ')}); a file must use one`);
  return [...seen][0]!;
}

/**
 * For the diffusers and PEFT layouts: the alpha of a module of rank r and whether its B was stored pre-multiplied
 * by alpha / r (see the header comment); undefined when the file says nothing (then alpha = r, as loaders assume).
 */
function storedScale(metadata: Record<string, string>): (module: string, rank: number) => { alpha: number; prescaled: boolean } | undefined {
  const perModule = metadata['ncp.alphas'];
  if (perModule !== undefined) {
    let table: Record<string, unknown> = {};
    try {
      table = JSON.parse(perModule) as Record<string, unknown>;
    } catch {
      // unreadable: fall through to alpha = r
    }
    return (module) => {
      const a = Number(table[module]);
      return Number.isFinite(a) && a > 0 ? { alpha: a, prescaled: true } : undefined;
    };
  }
  const a = Number(metadata['ncp.alpha']);
  const r = Number(metadata['ncp.rank']);
  if (metadata['ncp.alpha'] !== undefined && Number.isFinite(a) && a > 0)
    return (_m, rank) => (!Number.isFinite(r) || r === rank ? { alpha: a, prescaled: true } : undefined);
  // diffusers >= 0.33 writes the PEFT config here and applies lora_alpha / r itself when loading: B is unscaled.
  const peftMeta = metadata['lora_adapter_metadata'];
  if (peftMeta) {
    try {
      const m = JSON.parse(peftMeta) as Record<string, unknown>;
      const alpha = Number(m['unet.lora_alpha'] ?? m['lora_alpha']);
      if (Number.isFinite(alpha) && alpha > 0) return () => ({ alpha, prescaled: false });
    } catch {
      // not JSON: ignore
    }
  }
  return () => undefined;
}

function scalar(t: StoredTensor, key: string, path: string): number {
  const v = toFloat32(t.bytes, t.dtype);
  if (v.length !== 1) throw loraError(path, `tensor ${key}: alpha must hold one value, has shape [${t.shape.join(', ')}]`);
  return v[0]!;
}

/** Reads a LoRA file in any of the three layouts. */
export async function readLoraFile(path: string, options: ReadLoraOptions = {}): Promise<LoraFile> {
  const file = await readSafetensors(path);
  const layout = detectLoraLayout(file.tensors.keys(), path);
  const resolver = new KohyaNameResolver({ config: options.unet, modules: options.modules });
  const known = options.modules ? new Set(options.modules) : undefined;
  const unetNames = options.unet ? new Set(unetModulesCached(options.unet).map((m) => m.name)) : undefined;
  const groups = new Map<string, Parts>();
  const skipped: string[] = [];
  let sgmNames = false;

  for (const [key, t] of file.tensors) {
    if (isOtherNetwork(key)) {
      skipped.push(key);
      continue;
    }
    let matched = false;
    for (const s of SUFFIXES) {
      if (s.layout !== layout) continue;
      const m = s.re.exec(key);
      if (!m) continue;
      let module = m[1]!;
      if (m[2]) module = `${module}.${m[2] === 'to_out' ? 'to_out.0' : m[2]}`;
      if (layout === 'kohya') {
        const r = resolver.resolve(module);
        if ('error' in r) throw loraError(path, `tensor ${key}: cannot map '${module}' to a U-Net module: ${r.error}`);
        module = r.name;
        sgmNames ||= r.sgm;
      } else if (unetNames && !unetNames.has(module)) {
        throw loraError(path, `tensor ${key}: '${module}' is not a module of this U-Net`);
      }
      if (known && !known.has(module)) throw loraError(path, `tensor ${key}: '${module}' is not among the known modules`);
      const g = groups.get(module) ?? {};
      if (g[s.part]) throw loraError(path, `tensor ${key}: module ${module} has two ${s.part} tensors`);
      g[s.part] = t;
      if (s.part === 'down') g.downKey = key;
      if (s.part === 'up') g.upKey = key;
      groups.set(module, g);
      matched = true;
      break;
    }
    if (!matched) skipped.push(key);
  }

  const scaleOf = layout === 'kohya' ? () => undefined : storedScale(file.metadata);
  const weights: LoraWeights = new Map();
  for (const [module, g] of [...groups].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (!g.down || !g.up) {
      if (!g.down && !g.up && g.alpha) {
        skipped.push(module + '.alpha');
        continue;
      }
      throw loraError(path, `module ${module}: has ${g.down ? 'a down (A)' : 'an up (B)'} tensor but no ${g.down ? 'up (B)' : 'down (A)'} tensor`);
    }
    const dShape = g.down.shape;
    const uShape = g.up.shape;
    const is4d = dShape.length === 4;
    if (!(dShape.length === 2 || is4d) || uShape.length !== dShape.length)
      throw loraError(path, `module ${module}: ${g.downKey} has shape [${dShape.join(', ')}] and ${g.upKey} [${uShape.join(', ')}]; expected [r, in] and [out, r] (or 4-d for convs)`);
    const rank = dShape[0]!;
    if (uShape[1] !== rank || (is4d && (uShape[2] !== 1 || uShape[3] !== 1)))
      throw loraError(path, `module ${module}: rank mismatch, ${g.downKey} [${dShape.join(', ')}] vs ${g.upKey} [${uShape.join(', ')}]`);
    const A = toFloat32(g.down.bytes, g.down.dtype);
    const Bstored = toFloat32(g.up.bytes, g.up.dtype);
    let alpha: number;
    let stored: { alpha: number; prescaled: boolean } | undefined;
    let B = Bstored;
    if (g.alpha) {
      alpha = scalar(g.alpha, `${module}.alpha`, path);
    } else if ((stored = scaleOf(module, rank))) {
      alpha = stored.alpha;
      if (stored.prescaled && alpha !== rank) {
        const s = alpha / rank;
        B = new Float32Array(Bstored.length);
        for (let i = 0; i < B.length; i++) B[i] = Bstored[i]! / s;
      }
    } else {
      alpha = rank; // what every loader assumes without an alpha
    }
    if (!Number.isFinite(alpha) || alpha <= 0) throw loraError(path, `module ${module}: alpha ${alpha} is not a positive number`);
    const entry: LoraModule = { A, B, rank, alpha, inFeatures: dShape[1]!, outFeatures: uShape[0]! };
    if (is4d) entry.kernel = [dShape[2]!, dShape[3]!];
    weights.set(module, entry);
  }
  if (weights.size === 0) throw loraError(path, 'no U-Net LoRA modules in the file');
  return { path, layout, sgmNames, weights, metadata: file.metadata, skipped };
}

export interface WriteLoraOptions {
  layout?: LoraLayout;
  metadata?: LoraMetadata;
  /** kohya only: spell SDXL modules with SGM block names (as kohya's sd-scripts do); needs `unet`. */
  sgmNames?: boolean;
  unet?: UNetArchConfig;
}

function checkModule(name: string, m: LoraModule): void {
  const k = m.kernel ? m.kernel[0] * m.kernel[1] : 1;
  if (!Number.isInteger(m.rank) || m.rank < 1) throw new CodedError('NCP_ELORA', `module ${name}: rank ${m.rank} is not a positive integer`);
  if (m.A.length !== m.rank * m.inFeatures * k)
    throw new CodedError('NCP_ELORA', `module ${name}: A has ${m.A.length} values, expected rank ${m.rank} x in ${m.inFeatures}${k > 1 ? ` x ${k}` : ''}`);
  if (m.B.length !== m.outFeatures * m.rank)
    throw new CodedError('NCP_ELORA', `module ${name}: B has ${m.B.length} values, expected out ${m.outFeatures} x rank ${m.rank}`);
  if (!Number.isFinite(m.alpha) || m.alpha <= 0) throw new CodedError('NCP_ELORA', `module ${name}: alpha ${m.alpha} is not a positive number`);
}

function uniform<T>(values: T[]): T | undefined {
  return values.length && values.every((v) => v === values[0]) ? values[0] : undefined;
}

/** The header metadata we write (all strings). */
export function loraMetadataStrings(weights: LoraWeights, layout: LoraLayout, meta: LoraMetadata = {}): Record<string, string> {
  const mods = [...weights.values()];
  const rank = uniform(mods.map((m) => m.rank));
  const alpha = uniform(mods.map((m) => m.alpha));
  const out: Record<string, string> = {
    'ncp.format': layout,
    'ncp.rank': rank !== undefined ? String(rank) : 'mixed',
    'ncp.alpha': alpha !== undefined ? formatNumber(alpha) : 'mixed',
  };
  if (meta.targets) out['ncp.targets'] = JSON.stringify(meta.targets);
  if (meta.baseModel !== undefined) out['ncp.base_model'] = meta.baseModel;
  if (meta.objective !== undefined) out['ncp.objective'] = meta.objective;
  if (meta.space !== undefined) out['ncp.space'] = meta.space;
  if (meta.beta !== undefined) out['ncp.beta'] = String(meta.beta);
  if (meta.steps !== undefined) out['ncp.steps'] = String(meta.steps);
  if (meta.seed !== undefined) out['ncp.seed'] = String(meta.seed);
  if (layout === 'kohya') {
    // What kohya's scripts, A1111 and ComfyUI show for a network.
    out['ss_network_module'] = 'networks.lora';
    if (rank !== undefined) out['ss_network_dim'] = String(rank);
    if (alpha !== undefined) out['ss_network_alpha'] = formatNumber(alpha);
  }
  for (const [k, v] of Object.entries(meta.extra ?? {})) out[k] = v;
  if ((rank === undefined || alpha === undefined) && layout !== 'kohya') {
    // Mixed ranks/alphas: per-module values so that reading back can undo the B scaling.
    out['ncp.alphas'] = JSON.stringify(Object.fromEntries([...weights].map(([n, m]) => [n, m.alpha])));
  }
  return out;
}

/** The tensors of `weights` in one layout (names sorted, float32). */
export function loraTensors(weights: LoraWeights, layout: LoraLayout, options: Pick<WriteLoraOptions, 'sgmNames' | 'unet'> = {}): Map<string, TensorToWrite> {
  const tensors = new Map<string, TensorToWrite>();
  let sgmOf: Map<string, string> | undefined;
  if (options.sgmNames) {
    if (layout !== 'kohya') throw new CodedError('NCP_ELORA', 'SGM block names exist only in the kohya layout');
    if (!options.unet) throw new CodedError('NCP_ELORA', 'writing SGM block names needs the U-Net config');
    sgmOf = new Map();
    for (const m of unetModulesCached(options.unet)) sgmOf.set(m.name, m.sgm);
  }
  for (const [name, m] of [...weights].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    checkModule(name, m);
    const aShape = m.kernel ? [m.rank, m.inFeatures, m.kernel[0], m.kernel[1]] : [m.rank, m.inFeatures];
    const bShape = m.kernel ? [m.outFeatures, m.rank, 1, 1] : [m.outFeatures, m.rank];
    if (layout === 'kohya') {
      const sgm = sgmOf?.get(name);
      if (sgmOf && !sgm) throw new CodedError('NCP_ELORA', `module ${name}: not a module of the given U-Net, no SGM name`);
      const base = `lora_unet_${(sgm ?? name).replace(/\./g, '_')}`;
      tensors.set(`${base}.alpha`, { shape: [], data: Float32Array.of(m.alpha) });
      tensors.set(`${base}.lora_down.weight`, { shape: aShape, data: m.A });
      tensors.set(`${base}.lora_up.weight`, { shape: bShape, data: m.B });
    } else {
      const s = m.alpha / m.rank;
      const B = s === 1 ? m.B : Float32Array.from(m.B, (v) => v * s);
      const [down, up] = layout === 'diffusers' ? ['lora.down.weight', 'lora.up.weight'] : ['lora_A.weight', 'lora_B.weight'];
      tensors.set(`unet.${name}.${down}`, { shape: aShape, data: m.A });
      tensors.set(`unet.${name}.${up}`, { shape: bShape, data: B });
    }
  }
  return tensors;
}

/** Writes a LoRA file atomically in one layout (kohya by default). */
export async function writeLoraFile(path: string, weights: LoraWeights, options: WriteLoraOptions = {}): Promise<void> {
  const layout = options.layout ?? 'kohya';
  if (!LORA_LAYOUTS.includes(layout)) throw new CodedError('NCP_ELORA', `unknown LoRA layout '${layout}' (allowed: ${LORA_LAYOUTS.join(', ')})`);
  if (weights.size === 0) throw new CodedError('NCP_ELORA', `${path}: no LoRA modules to write`);
  const tensors = loraTensors(weights, layout, options);
  await writeSafetensors(path, tensors, loraMetadataStrings(weights, layout, options.metadata));
}

/** The shape of the native trainer's loraTensors() entries (src/native.ts LoraModuleTensors). */
export interface LoraModuleTensorsLike {
  module: string;
  rank: number;
  alpha: number;
  inFeatures: number;
  outFeatures: number;
  A: { data: Float32Array; shape: number[] };
  B: { data: Float32Array; shape: number[] };
}

/** The native trainer's adapters -> LoraWeights (copies nothing; the arrays are shared). */
export function loraWeightsFromModules(list: readonly LoraModuleTensorsLike[]): LoraWeights {
  const out: LoraWeights = new Map();
  for (const m of list) {
    const entry: LoraModule = { A: m.A.data, B: m.B.data, rank: m.rank, alpha: m.alpha, inFeatures: m.inFeatures, outFeatures: m.outFeatures };
    if (m.A.shape.length === 4) entry.kernel = [m.A.shape[2]!, m.A.shape[3]!];
    checkModule(m.module, entry);
    out.set(m.module, entry);
  }
  return out;
}

/** LoraWeights -> the list the native trainer's setLoraTensors() takes. */
export function loraModulesFromWeights(weights: LoraWeights): Array<{ module: string; A: { data: Float32Array; shape: number[] }; B: { data: Float32Array; shape: number[] } }> {
  return [...weights].map(([module, m]) => {
    checkModule(module, m);
    return {
      module,
      A: { data: m.A, shape: m.kernel ? [m.rank, m.inFeatures, m.kernel[0], m.kernel[1]] : [m.rank, m.inFeatures] },
      B: { data: m.B, shape: m.kernel ? [m.outFeatures, m.rank, 1, 1] : [m.outFeatures, m.rank] },
    };
  });
}
