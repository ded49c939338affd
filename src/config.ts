// The training configuration: defaults (the paper's recipe, METHOD.md section 6), then a JSON or YAML file, then
// command-line flags, each layer overriding the one before; every value is validated with a message that names the
// flag or the file field, the value and what is allowed. The resolved configuration is written beside the outputs
// as resolved-config.json, in the same spelling as a config file, so it can be passed back with --config.
//
// Names: a file field and its flag share one kebab-case name (`ncp-layer` <-> `--ncp-layer`); files may also spell
// it in snake_case (`ncp_layer`). In TypeScript the field is camelCase (`ncpLayer`).
//
// beta follows METHOD.md section 4: DPO loss = -log sigmoid(beta * logits), logits = ref_diff - model_diff.
// Diffusion-DPO's script writes -0.5 * beta_dpo * (...), so its beta_dpo = 2 * beta; the default 2500 is the
// script's default read in our convention, as METHOD.md section 6 states.
import { readFile, mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { CodedError, describeFsError } from './errors.js';
import { writeFileAtomic } from './atomic-fs.js';
import { DEFAULT_LORA_TARGETS, KNOWN_LORA_TARGETS } from './lora-names.js';
import { LORA_LAYOUTS, type LoraLayout } from './lora-file.js';

export type ModelKind = 'sd15' | 'sdxl';

export interface TrainConfig {
  // inputs and outputs
  model: string | null;
  variant: string | null;
  data: string | null;
  output: string;
  resume: string | null;
  // objective (METHOD.md sections 3-4)
  objective: 'sft' | 'dpo' | 'cpo';
  space: 'latent' | 'ncp';
  ncpLayer: 'mid' | 'down';
  ncpTimestep: 'prev' | 'uniform';
  ncpCoeff: number;
  ncpPool: boolean;
  beta: number;
  cpoLambda: number;
  // LoRA (METHOD.md section 5)
  rank: number;
  alpha: number;
  targets: string[];
  loraInit: 'gaussian' | 'kaiming';
  loraFormat: LoraLayout;
  // optimiser and schedule
  lr: number;
  adamBeta1: number;
  adamBeta2: number;
  adamEps: number;
  weightDecay: number;
  warmupSteps: number;
  lrSchedule: 'constant' | 'linear' | 'cosine';
  maxGradNorm: number;
  // batches and length
  batchPairs: number;
  gradAccumulation: number;
  maxSteps: number | null;
  epochs: number | null;
  // data
  resolution: number;
  centerCrop: boolean;
  randomFlip: boolean;
  absoluteWinners: boolean;
  maxCorruptFraction: number;
  prefetch: number;
  seed: number;
  // run files
  checkpointEvery: number;
  keepCheckpoints: number;
  validateEvery: number;
  validationPrompts: string[];
  validationSeed: number;
  // machine
  device: 'auto' | 'cpu' | 'cuda' | `cuda:${number}`;
  threads: number | null;
  gradientCheckpointing: boolean;
  recompute: Array<'feedforward' | 'qkv'>;
  mixedPrecision: 'no' | 'bf16' | 'fp16';
}

type Kind =
  | { type: 'number'; integer?: boolean; min?: number; max?: number; exclusiveMin?: boolean; exclusiveMax?: boolean; nullable?: boolean; multipleOf?: number }
  | { type: 'string'; nullable?: boolean }
  | { type: 'enum'; values: readonly string[] }
  /** One of `values`, or a string matching `pattern` (described by `patternText`). */
  | { type: 'enum'; values: readonly string[]; pattern: RegExp; patternText: string }
  | { type: 'boolean' }
  | { type: 'list'; values?: readonly string[]; nonEmpty?: boolean };

export interface ConfigField {
  /** kebab-case: the flag (`--name`) and the file field */
  name: string;
  key: keyof TrainConfig;
  kind: Kind;
  /** undefined: derived during resolution (output, alpha, resolution) */
  default: unknown;
  describe: string;
}

const num = (o: Omit<Extract<Kind, { type: 'number' }>, 'type'> = {}): Kind => ({ type: 'number', ...o });

/** Every option, in the order `--help` and resolved-config.json list them. */
export const CONFIG_FIELDS: readonly ConfigField[] = [
  { name: 'model', key: 'model', kind: { type: 'string', nullable: true }, default: null, describe: 'diffusers model folder (unet, vae, text_encoder, tokenizer, scheduler)' },
  { name: 'variant', key: 'variant', kind: { type: 'string', nullable: true }, default: null, describe: 'weights variant, e.g. fp16' },
  { name: 'data', key: 'data', kind: { type: 'string', nullable: true }, default: null, describe: 'parquet file, folder of parquet shards, JSONL file or encode-cache folder' },
  { name: 'output', key: 'output', kind: { type: 'string' }, default: undefined, describe: 'run folder (default ./ncp-runs/<timestamp>-<objective>-<space>)' },
  { name: 'resume', key: 'resume', kind: { type: 'string', nullable: true }, default: null, describe: "'latest' (in --output) or a checkpoint folder" },
  { name: 'objective', key: 'objective', kind: { type: 'enum', values: ['sft', 'dpo', 'cpo'] }, default: 'dpo', describe: 'training objective' },
  { name: 'space', key: 'space', kind: { type: 'enum', values: ['latent', 'ncp'] }, default: 'ncp', describe: 'where the per-sample error is measured' },
  { name: 'ncp-layer', key: 'ncpLayer', kind: { type: 'enum', values: ['mid', 'down'] }, default: 'mid', describe: 'NCP embedding: output of the mid block or of the last down block' },
  { name: 'ncp-timestep', key: 'ncpTimestep', kind: { type: 'enum', values: ['prev', 'uniform'] }, default: 'prev', describe: 'NCP comparison noise level: t-1 (DDPM step) or a fresh uniform one' },
  { name: 'ncp-coeff', key: 'ncpCoeff', kind: num({ min: 0, exclusiveMin: true }), default: 1, describe: 'scale of the NCP distance' },
  { name: 'ncp-pool', key: 'ncpPool', kind: { type: 'boolean' }, default: false, describe: 'spatial mean of the embedding before the distance' },
  { name: 'beta', key: 'beta', kind: num({ min: 0, exclusiveMin: true }), default: 2500, describe: 'DPO/CPO beta, loss = -log sigmoid(beta * logits) (Diffusion-DPO beta_dpo = 2 beta)' },
  { name: 'cpo-lambda', key: 'cpoLambda', kind: num({ min: 0 }), default: 0, describe: 'CPO behaviour-cloning weight on the preferred error' },
  { name: 'rank', key: 'rank', kind: num({ integer: true, min: 1, max: 1024 }), default: 4, describe: 'LoRA rank' },
  { name: 'alpha', key: 'alpha', kind: num({ min: 0, exclusiveMin: true, nullable: true }), default: undefined, describe: 'LoRA alpha (default: = rank)' },
  { name: 'targets', key: 'targets', kind: { type: 'list', values: KNOWN_LORA_TARGETS, nonEmpty: true }, default: [...DEFAULT_LORA_TARGETS], describe: 'module name suffixes that get a LoRA' },
  { name: 'lora-init', key: 'loraInit', kind: { type: 'enum', values: ['gaussian', 'kaiming'] }, default: 'gaussian', describe: 'A ~ N(0, 1/r) or kaiming-uniform; B = 0' },
  { name: 'lora-format', key: 'loraFormat', kind: { type: 'enum', values: LORA_LAYOUTS }, default: 'kohya', describe: 'layout of the written LoRA file' },
  { name: 'lr', key: 'lr', kind: num({ min: 0, exclusiveMin: true }), default: 5e-4, describe: 'AdamW learning rate (after warm-up)' },
  { name: 'adam-beta1', key: 'adamBeta1', kind: num({ min: 0, max: 1, exclusiveMax: true }), default: 0.9, describe: 'AdamW beta1' },
  { name: 'adam-beta2', key: 'adamBeta2', kind: num({ min: 0, max: 1, exclusiveMax: true }), default: 0.999, describe: 'AdamW beta2' },
  { name: 'adam-eps', key: 'adamEps', kind: num({ min: 0, exclusiveMin: true }), default: 1e-8, describe: 'AdamW epsilon' },
  { name: 'weight-decay', key: 'weightDecay', kind: num({ min: 0 }), default: 1e-2, describe: 'AdamW decoupled weight decay' },
  { name: 'warmup-steps', key: 'warmupSteps', kind: num({ integer: true, min: 0 }), default: 500, describe: 'linear learning-rate warm-up, optimiser steps' },
  { name: 'lr-schedule', key: 'lrSchedule', kind: { type: 'enum', values: ['constant', 'linear', 'cosine'] }, default: 'constant', describe: 'learning rate after warm-up (linear/cosine decay to 0 at the last step)' },
  { name: 'max-grad-norm', key: 'maxGradNorm', kind: num({ min: 0 }), default: 1.0, describe: 'global gradient-norm clip (0: off)' },
  { name: 'batch-pairs', key: 'batchPairs', kind: num({ integer: true, min: 1 }), default: 2, describe: 'preference pairs per micro-batch' },
  { name: 'grad-accumulation', key: 'gradAccumulation', kind: num({ integer: true, min: 1 }), default: 1, describe: 'micro-batches per optimiser step' },
  { name: 'max-steps', key: 'maxSteps', kind: num({ integer: true, min: 1, nullable: true }), default: null, describe: 'stop after this many optimiser steps' },
  { name: 'epochs', key: 'epochs', kind: num({ min: 0, exclusiveMin: true, nullable: true }), default: null, describe: 'stop after this many passes over the data (default 1 when --max-steps is not given)' },
  { name: 'resolution', key: 'resolution', kind: num({ integer: true, min: 8, max: 8192, multipleOf: 8 }), default: undefined, describe: 'training image side (default 512 for SD1.5, 1024 for SDXL)' },
  { name: 'center-crop', key: 'centerCrop', kind: { type: 'boolean' }, default: true, describe: 'centre crop after resizing (random crop when false)' },
  { name: 'random-flip', key: 'randomFlip', kind: { type: 'boolean' }, default: true, describe: 'random horizontal flip of each image' },
  { name: 'absolute-winners', key: 'absoluteWinners', kind: { type: 'boolean' }, default: false, describe: "keep only pairs whose preferred image won every comparison it took part in (Pick-a-Pic)" },
  { name: 'max-corrupt-fraction', key: 'maxCorruptFraction', kind: num({ min: 0, max: 1 }), default: 0.05, describe: 'fail when more than this fraction of pairs has an unreadable image' },
  { name: 'prefetch', key: 'prefetch', kind: num({ integer: true, min: 1, max: 1024 }), default: 8, describe: 'pairs decoded ahead of the training step' },
  { name: 'seed', key: 'seed', kind: num({ integer: true, min: 0, max: Number.MAX_SAFE_INTEGER }), default: 0, describe: 'seed of data order, augmentation, LoRA init, timesteps and noise' },
  { name: 'checkpoint-every', key: 'checkpointEvery', kind: num({ integer: true, min: 0 }), default: 500, describe: 'optimiser steps between checkpoints (0: only at the end)' },
  { name: 'keep-checkpoints', key: 'keepCheckpoints', kind: num({ integer: true, min: 1 }), default: 3, describe: 'checkpoints kept (the oldest are removed)' },
  { name: 'validate-every', key: 'validateEvery', kind: num({ integer: true, min: 0 }), default: 0, describe: 'optimiser steps between validation samples (0: off)' },
  { name: 'validation-prompts', key: 'validationPrompts', kind: { type: 'list' }, default: [], describe: 'prompts for validation samples' },
  { name: 'validation-seed', key: 'validationSeed', kind: num({ integer: true, min: 0, max: Number.MAX_SAFE_INTEGER }), default: 0, describe: 'seed of the validation samples' },
  { name: 'device', key: 'device', kind: { type: 'enum', values: ['auto', 'cpu', 'cuda'], pattern: /^cuda:\d{1,3}$/, patternText: 'cuda:N' }, default: 'auto', describe: 'where the U-Net runs: auto (the first GPU when the CUDA backend is usable, else the CPU), cpu, cuda or cuda:N' },
  { name: 'mixed-precision', key: 'mixedPrecision', kind: { type: 'enum', values: ['no', 'bf16', 'fp16'] }, default: 'no', describe: 'bf16 or fp16: the frozen U-Net weight matrices in that type on the GPU (half the memory, half tensor-core GEMMs with float accumulation); LoRA, gradients and AdamW stay float32. bf16 also keeps the activations for backward in bf16; fp16 keeps 3 more mantissa bits (better NCP-prev gradients) and uses dynamic loss scaling. CUDA only' },
  { name: 'gradient-checkpointing', key: 'gradientCheckpointing', kind: { type: 'boolean' }, default: false, describe: 'recompute block activations in backward: much less memory, about a third more time' },
  { name: 'recompute', key: 'recompute', kind: { type: 'list', values: ['feedforward', 'qkv'] }, default: [], describe: "selective recompute: transformer-block activations backward recomputes instead of keeping. feedforward: the first feed-forward projection's output (most of what a block keeps); qkv: the attentions' q, k, v. Same gradients, a few percent more time per part; no effect with --gradient-checkpointing" },
  { name: 'threads', key: 'threads', kind: num({ integer: true, min: 1, nullable: true }), default: null, describe: 'CPU threads (default: all cores)' },
];

const BY_NAME = new Map(CONFIG_FIELDS.map((f) => [f.name, f]));
const BY_KEY = new Map(CONFIG_FIELDS.map((f) => [f.key as string, f]));

/** Where a value came from, for messages: `flag --lr` or `field lr in run.yaml`. */
type Source = { kind: 'flag' } | { kind: 'file'; path: string; field: string };

function where(f: ConfigField, src: Source): string {
  return src.kind === 'flag' ? `flag --${f.name}` : `field '${src.field}' in ${src.path}`;
}

function configError(message: string): CodedError {
  return new CodedError('NCP_ECONFIG', message);
}

function show(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : Array.isArray(v) ? JSON.stringify(v) : String(v);
}

function allowedText(k: Kind): string {
  switch (k.type) {
    case 'number': {
      const parts: string[] = [k.integer ? 'an integer' : 'a number'];
      if (k.min !== undefined) parts.push(`${k.exclusiveMin ? '>' : '>='} ${k.min}`);
      if (k.max !== undefined) parts.push(`${k.exclusiveMax ? '<' : '<='} ${k.max}`);
      if (k.multipleOf) parts.push(`a multiple of ${k.multipleOf}`);
      return parts.join(', ') + (k.nullable ? ' (or null)' : '');
    }
    case 'string':
      return 'a non-empty string' + (k.nullable ? ' (or null)' : '');
    case 'enum':
      return `one of ${k.values.join(', ')}` + ('pattern' in k ? ` or ${k.patternText}` : '');
    case 'boolean':
      return 'true or false';
    case 'list':
      return k.values ? `a list (or comma-separated string) of ${k.values.join(', ')}` : 'a list of strings';
  }
}

/** Checks and normalises one value; throws NCP_ECONFIG naming the flag or field, the value and what is allowed. */
export function validateValue(f: ConfigField, value: unknown, src: Source): unknown {
  const k = f.kind;
  const bad = (extra = ''): CodedError => configError(`${where(f, src)}: got ${show(value)}${extra}; allowed: ${allowedText(k)}`);
  if (value === null) {
    if ((k.type === 'number' || k.type === 'string') && k.nullable) return null;
    throw bad();
  }
  switch (k.type) {
    case 'number': {
      let v = value;
      if (typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v))) v = Number(v);
      if (typeof v !== 'number' || !Number.isFinite(v)) throw bad();
      if (k.integer && !Number.isInteger(v)) throw bad();
      if (k.min !== undefined && (k.exclusiveMin ? v <= k.min : v < k.min)) throw bad();
      if (k.max !== undefined && (k.exclusiveMax ? v >= k.max : v > k.max)) throw bad();
      if (k.multipleOf && v % k.multipleOf !== 0) throw bad();
      return v;
    }
    case 'string':
      if (typeof value !== 'string' || value === '') throw bad();
      return value;
    case 'enum':
      if (typeof value !== 'string' || !(k.values.includes(value) || ('pattern' in k && k.pattern.test(value)))) throw bad();
      return value;
    case 'boolean':
      if (typeof value === 'boolean') return value;
      if (value === 'true' || value === 'false') return value === 'true';
      throw bad();
    case 'list': {
      let list: unknown[];
      if (typeof value === 'string') list = value.split(',').map((s) => s.trim()).filter((s) => s !== '');
      else if (Array.isArray(value)) list = value.flatMap((v) => (typeof v === 'string' && k.values ? v.split(',').map((s) => s.trim()).filter(Boolean) : [v]));
      else throw bad();
      if (!list.every((v) => typeof v === 'string')) throw bad();
      const strings = list as string[];
      if (k.values) {
        const unknown = strings.filter((v) => !k.values!.includes(v));
        if (unknown.length) throw bad(` (${unknown.map((u) => JSON.stringify(u)).join(', ')} not known)`);
      }
      if (k.nonEmpty && strings.length === 0) throw bad(' (empty)');
      return k.values ? [...new Set(strings)] : strings;
    }
  }
}

/** The name a file or flag key refers to: kebab-case, snake_case and camelCase all map to the kebab name. */
function canonicalName(key: string): string {
  return key.replace(/_/g, '-').replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** Reads a config file (.json, .yaml, .yml) into raw field values; unknown fields are errors. */
export async function readConfigFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw configError(`config file ${path}: ${describeFsError(err)}`);
  }
  let doc: unknown;
  const lower = path.toLowerCase();
  if (lower.endsWith('.json')) {
    try {
      doc = JSON.parse(text);
    } catch (err) {
      throw configError(`config file ${path} is not valid JSON: ${(err as Error).message}`);
    }
  } else if (lower.endsWith('.yaml') || lower.endsWith('.yml')) {
    try {
      doc = parseYaml(text);
    } catch (err) {
      throw configError(`config file ${path} is not valid YAML: ${(err as Error).message.split('\n')[0]}`);
    }
  } else {
    throw configError(`config file ${path}: unknown extension; use .json, .yaml or .yml`);
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw configError(`config file ${path}: the top level must be a mapping of option names to values`);
  return doc as Record<string, unknown>;
}

export interface ResolveOptions {
  /** raw values from a config file (readConfigFile), and its path for messages */
  file?: { path: string; values: Record<string, unknown> };
  /** flag values (yargs argv or any record; kebab or camel keys; undefined = not given) */
  flags?: Record<string, unknown>;
  /** SD1.5 or SDXL, for the default resolution (detectModelKind) */
  modelKind?: ModelKind;
  /** for the default output folder name; defaults to now */
  now?: Date;
  /** base of relative paths from flags (default: process.cwd()); file paths are relative to the file's folder */
  cwd?: string;
}

const PATH_FIELDS = new Set<keyof TrainConfig>(['model', 'data', 'output', 'resume']);

function timestamp(d: Date): string {
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
}

/** Defaults, overridden by the file, overridden by the flags; validated, with derived defaults filled in. */
export function resolveConfig(options: ResolveOptions = {}): TrainConfig {
  const cwd = options.cwd ?? process.cwd();
  const values = new Map<string, unknown>();
  for (const f of CONFIG_FIELDS) if (f.default !== undefined) values.set(f.name, Array.isArray(f.default) ? [...f.default] : f.default);

  if (options.file) {
    const fileDir = resolve(options.file.path, '..');
    for (const [field, raw] of Object.entries(options.file.values)) {
      const f = BY_NAME.get(canonicalName(field));
      if (!f) {
        const near = nearest(canonicalName(field));
        throw configError(`field '${field}' in ${options.file.path} is not an option${near ? ` (did you mean '${near}'?)` : ''}; options: ${CONFIG_FIELDS.map((x) => x.name).join(', ')}`);
      }
      let v = validateValue(f, raw, { kind: 'file', path: options.file.path, field });
      if (PATH_FIELDS.has(f.key) && typeof v === 'string' && !(f.key === 'resume' && v === 'latest')) v = resolve(fileDir, v);
      values.set(f.name, v);
    }
  }
  for (const [flag, raw] of Object.entries(options.flags ?? {})) {
    if (raw === undefined || flag === '_' || flag === '$0') continue;
    const f = BY_NAME.get(canonicalName(flag)) ?? BY_KEY.get(flag);
    if (!f) continue; // other commands' and global flags (yargs reports unknown flags itself)
    let v = validateValue(f, raw, { kind: 'flag' });
    if (PATH_FIELDS.has(f.key) && typeof v === 'string' && !(f.key === 'resume' && v === 'latest')) v = resolve(cwd, v);
    values.set(f.name, v);
  }

  const cfg = Object.fromEntries(CONFIG_FIELDS.map((f) => [f.key, values.get(f.name)])) as unknown as TrainConfig;
  if (cfg.alpha === undefined || cfg.alpha === null) cfg.alpha = cfg.rank;
  if (cfg.resolution === undefined) cfg.resolution = options.modelKind === 'sdxl' ? 1024 : 512;
  if (cfg.maxSteps === null && cfg.epochs === null) cfg.epochs = 1;
  if (cfg.output === undefined) cfg.output = resolve(cwd, 'ncp-runs', `${timestamp(options.now ?? new Date())}-${cfg.objective}-${cfg.space}`);
  // Cross-field rules.
  if (cfg.validateEvery > 0 && cfg.validationPrompts.length === 0)
    throw configError(`--validate-every ${cfg.validateEvery} needs at least one --validation-prompts entry`);
  if (cfg.warmupSteps > 0 && cfg.maxSteps !== null && cfg.lrSchedule !== 'constant' && cfg.warmupSteps >= cfg.maxSteps)
    throw configError(`--warmup-steps ${cfg.warmupSteps} must be below --max-steps ${cfg.maxSteps} for --lr-schedule ${cfg.lrSchedule}`);
  return cfg;
}

function nearest(name: string): string | undefined {
  let best: string | undefined;
  let bestD = 3;
  for (const f of CONFIG_FIELDS) {
    const d = editDistance(name, f.name);
    if (d < bestD) {
      bestD = d;
      best = f.name;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++)
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
  return d[a.length]![b.length]!;
}

/** Loads the file named by `flags.config` (if any) and resolves everything. */
export async function loadConfig(flags: Record<string, unknown>, options: Omit<ResolveOptions, 'file' | 'flags'> = {}): Promise<TrainConfig> {
  const path = typeof flags['config'] === 'string' ? resolve(options.cwd ?? process.cwd(), flags['config']) : undefined;
  const file = path ? { path, values: await readConfigFile(path) } : undefined;
  let modelKind = options.modelKind;
  if (!modelKind) {
    const model = (flags['model'] as string | undefined) ?? (file?.values['model'] as string | undefined);
    if (typeof model === 'string') {
      const base = flags['model'] !== undefined ? options.cwd ?? process.cwd() : resolve(path ?? '.', '..');
      modelKind = await detectModelKind(resolve(base, model));
    }
  }
  return resolveConfig({ ...options, file, flags, modelKind });
}

/** SD1.5-like or SDXL-like, from `<model>/unet/config.json` (SDXL: text_time added conditions). */
export async function detectModelKind(modelDir: string): Promise<ModelKind> {
  const path = join(modelDir, 'unet', 'config.json');
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    if (err instanceof SyntaxError) throw configError(`${path} is not valid JSON: ${err.message}`);
    throw configError(`model folder ${modelDir}: cannot read unet/config.json (${describeFsError(err)})`);
  }
  return cfg['addition_embed_type'] === 'text_time' ? 'sdxl' : 'sd15';
}

/** The config as a config file would spell it (kebab-case names, the order of CONFIG_FIELDS). */
export function configToFileValues(cfg: TrainConfig): Record<string, unknown> {
  return Object.fromEntries(CONFIG_FIELDS.map((f) => [f.name, cfg[f.key]]));
}

export const RESOLVED_CONFIG_FILE = 'resolved-config.json';

/** Writes `<dir>/resolved-config.json` atomically (creating dir); returns its path. */
export async function writeResolvedConfig(dir: string, cfg: TrainConfig): Promise<string> {
  try {
    await mkdir(dir, { recursive: true });
  } catch (err) {
    throw new CodedError('NCP_EWRITE', `cannot create the output folder ${dir}: ${describeFsError(err)}`);
  }
  const path = join(dir, RESOLVED_CONFIG_FILE);
  await writeFileAtomic(path, JSON.stringify(configToFileValues(cfg), null, 2) + '\n');
  return path;
}

/** The learning rate at optimiser step `step` (1-based): linear warm-up, then constant or a decay to 0. */
export function learningRate(cfg: Pick<TrainConfig, 'lr' | 'warmupSteps' | 'lrSchedule' | 'maxSteps'>, step: number): number {
  if (cfg.warmupSteps > 0 && step <= cfg.warmupSteps) return (cfg.lr * step) / cfg.warmupSteps;
  if (cfg.lrSchedule === 'constant' || cfg.maxSteps === null) return cfg.lr;
  const span = Math.max(1, cfg.maxSteps - cfg.warmupSteps);
  const progress = Math.min(1, Math.max(0, (step - cfg.warmupSteps) / span));
  return cfg.lrSchedule === 'linear' ? cfg.lr * (1 - progress) : cfg.lr * 0.5 * (1 + Math.cos(Math.PI * progress));
}

/**
 * yargs option definitions for every field (for `train`'s command builder). They carry no defaults on purpose: a
 * flag that yargs fills with a default would override the config file; resolveConfig applies the defaults.
 */
export function configFlagOptions(): Record<string, { type: 'string' | 'number' | 'boolean' | 'array'; describe: string; choices?: readonly string[] }> {
  const out: Record<string, { type: 'string' | 'number' | 'boolean' | 'array'; describe: string; choices?: readonly string[] }> = {};
  for (const f of CONFIG_FIELDS) {
    const k = f.kind;
    const dflt = f.default === undefined || f.default === null ? '' : ` (default: ${Array.isArray(f.default) ? f.default.join(',') : String(f.default)})`;
    const describe = f.describe + dflt;
    if (k.type === 'enum') out[f.name] = 'pattern' in k ? { type: 'string', describe: `${describe} (${allowedText(k)})` } : { type: 'string', describe, choices: k.values };
    else if (k.type === 'list') out[f.name] = { type: 'string', describe: `${describe}; comma-separated` };
    else out[f.name] = { type: k.type, describe };
  }
  return out;
}
