// Noise schedulers for sampling, with diffusers' semantics (DDIMScheduler and EulerDiscreteScheduler, eta = 0 and
// s_churn = 0: deterministic given the initial latents), configured from a model folder's
// `scheduler/scheduler_config.json` whatever class wrote it (SD1.5 folders carry a PNDMScheduler config, SDXL an
// EulerDiscreteScheduler one): the fields that fix the noise schedule are shared, as diffusers' from_config uses
// them. Arithmetic is in float64; diffusers keeps betas in float32, so step values agree to ~1e-7.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CodedError, describeFsError } from './errors.js';

export type SchedulerKind = 'ddim' | 'euler';
export const SCHEDULER_KINDS: readonly SchedulerKind[] = ['ddim', 'euler'];

export type BetaSchedule = 'linear' | 'scaled_linear' | 'squaredcos_cap_v2';
export type PredictionType = 'epsilon' | 'v_prediction' | 'sample';
export type TimestepSpacing = 'leading' | 'trailing' | 'linspace';

export interface SchedulerConfig {
  /** Where it was read from, for messages. */
  source: string;
  /** `_class_name` of the file, when it has one. */
  className?: string;
  numTrainTimesteps: number;
  betaStart: number;
  betaEnd: number;
  betaSchedule: BetaSchedule;
  trainedBetas?: number[];
  predictionType: PredictionType;
  /** As written in the file; undefined = the scheduler's own default (DDIM leading, Euler linspace). */
  timestepSpacing?: TimestepSpacing;
  stepsOffset: number;
  /** DDIM: alpha_cumprod before the first training step is 1 (else alphas_cumprod[0]). */
  setAlphaToOne: boolean;
  /** DDIM: clamp the predicted x0 to [-clipSampleRange, clipSampleRange]. */
  clipSample: boolean;
  clipSampleRange: number;
  rescaleBetasZeroSnr: boolean;
}

function configError(source: string, message: string): CodedError {
  return new CodedError('NCP_ESCHEDULER', `${source}: ${message}`);
}

type Raw = Record<string, unknown>;

function present(raw: Raw, key: string): boolean {
  return raw[key] !== undefined && raw[key] !== null;
}

function numberField(raw: Raw, key: string, source: string, check: (v: number) => boolean, what: string, fallback?: number): number {
  if (!present(raw, key)) {
    if (fallback === undefined) throw configError(source, `field '${key}' is missing (${what})`);
    return fallback;
  }
  const v = raw[key];
  if (typeof v !== 'number' || !Number.isFinite(v) || !check(v)) throw configError(source, `field '${key}' is ${JSON.stringify(v)}; expected ${what}`);
  return v;
}

function choiceField<T extends string>(raw: Raw, key: string, source: string, allowed: readonly T[], fallback?: T): T {
  if (!present(raw, key)) {
    if (fallback === undefined) throw configError(source, `field '${key}' is missing (one of ${allowed.join(', ')})`);
    return fallback;
  }
  const v = raw[key];
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v))
    throw configError(source, `field '${key}' is ${JSON.stringify(v)}; expected one of ${allowed.join(', ')}`);
  return v as T;
}

function boolField(raw: Raw, key: string, source: string, fallback: boolean): boolean {
  if (!present(raw, key)) return fallback;
  const v = raw[key];
  if (typeof v !== 'boolean') throw configError(source, `field '${key}' is ${JSON.stringify(v)}; expected true or false`);
  return v;
}

/**
 * Validates a parsed scheduler_config.json. num_train_timesteps and beta_schedule (with beta_start/beta_end for
 * the linear schedules) are required: they fix the noise levels the U-Net was trained on, and a folder without
 * them is not one we should guess for. The rest default as in diffusers.
 */
export function parseSchedulerConfig(raw: unknown, source = 'scheduler_config.json'): SchedulerConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw configError(source, 'must be a JSON object');
  const r = raw as Raw;
  const numTrainTimesteps = numberField(r, 'num_train_timesteps', source, (v) => Number.isInteger(v) && v >= 2, 'an integer >= 2');
  let trainedBetas: number[] | undefined;
  if (present(r, 'trained_betas')) {
    const t = r['trained_betas'];
    if (!Array.isArray(t) || t.length !== numTrainTimesteps || t.some((b) => typeof b !== 'number' || !(b > 0 && b < 1)))
      throw configError(source, `field 'trained_betas' must be ${numTrainTimesteps} numbers in (0, 1)`);
    trainedBetas = t as number[];
  }
  const betaSchedule = choiceField<BetaSchedule>(r, 'beta_schedule', source, ['linear', 'scaled_linear', 'squaredcos_cap_v2'], trainedBetas ? 'linear' : undefined);
  const linear = !trainedBetas && betaSchedule !== 'squaredcos_cap_v2';
  const beta = (v: number) => v > 0 && v < 1;
  const betaStart = numberField(r, 'beta_start', source, beta, 'a number in (0, 1)', linear ? undefined : 0.0001);
  const betaEnd = numberField(r, 'beta_end', source, beta, 'a number in (0, 1)', linear ? undefined : 0.02);
  if (linear && betaEnd < betaStart) throw configError(source, `beta_end ${betaEnd} is below beta_start ${betaStart}`);
  const cfg: SchedulerConfig = {
    source,
    numTrainTimesteps,
    betaStart,
    betaEnd,
    betaSchedule,
    predictionType: choiceField<PredictionType>(r, 'prediction_type', source, ['epsilon', 'v_prediction', 'sample'], 'epsilon'),
    stepsOffset: numberField(r, 'steps_offset', source, (v) => Number.isInteger(v) && v >= 0 && v < numTrainTimesteps, `an integer in [0, ${numTrainTimesteps})`, 0),
    setAlphaToOne: boolField(r, 'set_alpha_to_one', source, true),
    clipSample: boolField(r, 'clip_sample', source, true),
    clipSampleRange: numberField(r, 'clip_sample_range', source, (v) => v > 0, 'a positive number', 1),
    rescaleBetasZeroSnr: boolField(r, 'rescale_betas_zero_snr', source, false),
  };
  if (trainedBetas) cfg.trainedBetas = trainedBetas;
  if (typeof r['_class_name'] === 'string') cfg.className = r['_class_name'];
  if (present(r, 'timestep_spacing')) cfg.timestepSpacing = choiceField<TimestepSpacing>(r, 'timestep_spacing', source, ['leading', 'trailing', 'linspace']);
  // Options that would change what Euler computes and that we do not implement: refuse rather than ignore.
  if (boolField(r, 'use_karras_sigmas', source, false)) throw new CodedError('NCP_EUNSUPPORTED', `${source}: use_karras_sigmas is not supported (set it to false)`);
  for (const key of ['use_exponential_sigmas', 'use_beta_sigmas', 'thresholding'])
    if (boolField(r, key, source, false)) throw new CodedError('NCP_EUNSUPPORTED', `${source}: ${key} is not supported (set it to false)`);
  if (present(r, 'interpolation_type') && r['interpolation_type'] !== 'linear')
    throw new CodedError('NCP_EUNSUPPORTED', `${source}: interpolation_type ${JSON.stringify(r['interpolation_type'])} is not supported (only 'linear')`);
  if (present(r, 'timestep_type') && r['timestep_type'] !== 'discrete')
    throw new CodedError('NCP_EUNSUPPORTED', `${source}: timestep_type ${JSON.stringify(r['timestep_type'])} is not supported (only 'discrete')`);
  if (present(r, 'final_sigmas_type') && r['final_sigmas_type'] !== 'zero')
    throw new CodedError('NCP_EUNSUPPORTED', `${source}: final_sigmas_type ${JSON.stringify(r['final_sigmas_type'])} is not supported (only 'zero')`);
  return cfg;
}

/** Reads `<modelDir>/scheduler/scheduler_config.json`. */
export async function readSchedulerConfig(modelDir: string): Promise<SchedulerConfig> {
  const path = join(modelDir, 'scheduler', 'scheduler_config.json');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new CodedError('NCP_ESCHEDULER', `${path}: ${describeFsError(err)}`, { cause: err });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw configError(path, `not valid JSON (${(err as Error).message})`);
  }
  return parseSchedulerConfig(raw, path);
}

/** The scheduler a folder's config names (EulerDiscreteScheduler -> euler; anything else -> ddim). */
export function defaultSchedulerKind(cfg: SchedulerConfig): SchedulerKind {
  return cfg.className?.startsWith('EulerDiscrete') ? 'euler' : 'ddim';
}

/** Glide's cosine schedule (diffusers' betas_for_alpha_bar, max_beta 0.999). */
function cosineBetas(n: number): Float64Array {
  const alphaBar = (t: number) => Math.cos(((t + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
  const b = new Float64Array(n);
  for (let i = 0; i < n; i++) b[i] = Math.min(1 - alphaBar((i + 1) / n) / alphaBar(i / n), 0.999);
  return b;
}

/** Rescales betas to zero terminal SNR (Lin et al. 2023, Algorithm 1), as diffusers' rescale_zero_terminal_snr. */
function rescaleZeroSnr(betas: Float64Array): Float64Array {
  const n = betas.length;
  const sq = new Float64Array(n);
  let cum = 1;
  for (let i = 0; i < n; i++) sq[i] = Math.sqrt((cum *= 1 - betas[i]!));
  const a0 = sq[0]!;
  const aT = sq[n - 1]!;
  for (let i = 0; i < n; i++) sq[i] = ((sq[i]! - aT) * a0) / (a0 - aT);
  const out = new Float64Array(n);
  out[0] = 1 - sq[0]! ** 2;
  for (let i = 1; i < n; i++) out[i] = 1 - sq[i]! ** 2 / sq[i - 1]! ** 2;
  return out;
}

/** alphas_cumprod [numTrainTimesteps] of the config's beta schedule. */
export function alphasCumprod(cfg: SchedulerConfig): Float64Array {
  const n = cfg.numTrainTimesteps;
  let betas: Float64Array;
  if (cfg.trainedBetas) betas = Float64Array.from(cfg.trainedBetas);
  else if (cfg.betaSchedule === 'squaredcos_cap_v2') betas = cosineBetas(n);
  else {
    betas = new Float64Array(n);
    const scaled = cfg.betaSchedule === 'scaled_linear';
    const a = scaled ? Math.sqrt(cfg.betaStart) : cfg.betaStart;
    const b = scaled ? Math.sqrt(cfg.betaEnd) : cfg.betaEnd;
    for (let i = 0; i < n; i++) {
      const v = a + ((b - a) * i) / (n - 1);
      betas[i] = scaled ? v * v : v;
    }
  }
  if (cfg.rescaleBetasZeroSnr) betas = rescaleZeroSnr(betas);
  const ac = new Float64Array(n);
  let cum = 1;
  for (let i = 0; i < n; i++) ac[i] = cum *= 1 - betas[i]!;
  return ac;
}

/** The timesteps of `steps` inference steps, first (noisiest) to last, as diffusers' set_timesteps. */
export function inferenceTimesteps(kind: SchedulerKind, cfg: SchedulerConfig, steps: number): number[] {
  const n = cfg.numTrainTimesteps;
  if (!Number.isInteger(steps) || steps < 1 || steps > n)
    throw new CodedError('NCP_EINVAL', `steps must be an integer in [1, ${n}] (num_train_timesteps of ${cfg.source}), got ${steps}`);
  const spacing = cfg.timestepSpacing ?? (kind === 'ddim' ? 'leading' : 'linspace');
  const out: number[] = [];
  if (spacing === 'linspace') {
    // np.linspace(0, n - 1, steps): i * step with step = (n - 1) / (steps - 1), the last value exactly n - 1.
    const step = steps === 1 ? 0 : (n - 1) / (steps - 1);
    for (let i = steps - 1; i >= 0; i--) {
      const t = i === steps - 1 && steps > 1 ? n - 1 : i * step;
      // DDIM rounds to whole timesteps; Euler keeps the fractions (and interpolates sigma between them).
      out.push(kind === 'ddim' ? roundHalfEven(t) : Math.fround(t));
    }
  } else if (spacing === 'leading') {
    const ratio = Math.floor(n / steps);
    for (let i = steps - 1; i >= 0; i--) out.push(i * ratio + cfg.stepsOffset);
  } else {
    // np.arange(n, 0, -ratio): length ceil(n / ratio), values n + i * delta with numpy's delta = (n - ratio) - n
    // (not -ratio: the rounding decides some .5 cases).
    const ratio = n / steps;
    const count = Math.ceil(n / ratio);
    const delta = n - ratio - n;
    for (let i = 0; i < count; i++) out.push(roundHalfEven(n + i * delta) - 1);
  }
  return out;
}

/** numpy's round (half to even). */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * One sampling run's scheduler: for each step i, the U-Net runs on scaleModelInput(x, i) at timestep
 * timesteps[i]; step(eps, i, x) then updates x in place to the next (less noisy) latents.
 */
export interface Scheduler {
  readonly kind: SchedulerKind;
  readonly timesteps: readonly number[];
  /** Standard deviation of the initial noise: latents = noise * initNoiseSigma. */
  readonly initNoiseSigma: number;
  /** alpha_cumprod of the noise level the U-Net sees at step i (its input is sqrt(a) x0 + sqrt(1 - a) noise). */
  alphaAt(i: number): number;
  scaleModelInput(x: Float32Array, i: number): Float32Array;
  step(modelOutput: Float32Array, i: number, x: Float32Array): void;
}

/** The model output as (predicted x0, predicted noise) coefficients: x0 = cx*x + cm*m, eps = ex*x + em*m. */
function predictionCoefficients(type: PredictionType, alphaProd: number): { cx: number; cm: number; ex: number; em: number } {
  const sa = Math.sqrt(alphaProd);
  const sb = Math.sqrt(1 - alphaProd);
  switch (type) {
    case 'epsilon':
      return { cx: 1 / sa, cm: -sb / sa, ex: 0, em: 1 };
    case 'v_prediction':
      return { cx: sa, cm: -sb, ex: sb, em: sa };
    case 'sample':
      return { cx: 0, cm: 1, ex: 1 / sb, em: -sa / sb };
  }
}

class DdimScheduler implements Scheduler {
  readonly kind = 'ddim' as const;
  readonly initNoiseSigma = 1;
  readonly timesteps: number[];
  private readonly ac: Float64Array;
  private readonly finalAlpha: number;
  private readonly stride: number;

  constructor(private readonly cfg: SchedulerConfig, steps: number) {
    this.ac = alphasCumprod(cfg);
    this.finalAlpha = cfg.setAlphaToOne ? 1 : this.ac[0]!;
    this.timesteps = inferenceTimesteps('ddim', cfg, steps);
    this.stride = Math.floor(cfg.numTrainTimesteps / steps);
    for (const t of this.timesteps)
      if (t < 0 || t >= cfg.numTrainTimesteps) throw configError(cfg.source, `timestep ${t} falls outside [0, ${cfg.numTrainTimesteps}) (steps_offset ${cfg.stepsOffset} too large for ${steps} steps)`);
  }

  alphaAt(i: number): number {
    return this.ac[this.timesteps[i]!]!;
  }

  scaleModelInput(x: Float32Array): Float32Array {
    return x;
  }

  step(m: Float32Array, i: number, x: Float32Array): void {
    const t = this.timesteps[i]!;
    const prev = t - this.stride; // diffusers' DDIM steps back by N // steps whatever the spacing
    const a = this.ac[t]!;
    const aPrev = prev >= 0 ? this.ac[prev]! : this.finalAlpha;
    const { cx, cm, ex, em } = predictionCoefficients(this.cfg.predictionType, a);
    const sPrev = Math.sqrt(aPrev);
    const dPrev = Math.sqrt(1 - aPrev);
    const clip = this.cfg.clipSample ? this.cfg.clipSampleRange : Infinity;
    for (let k = 0; k < x.length; k++) {
      const xk = x[k]!;
      const mk = m[k]!;
      let x0 = cx * xk + cm * mk;
      const eps = ex * xk + em * mk;
      if (x0 > clip) x0 = clip;
      else if (x0 < -clip) x0 = -clip;
      x[k] = sPrev * x0 + dPrev * eps;
    }
  }
}

class EulerScheduler implements Scheduler {
  readonly kind = 'euler' as const;
  readonly timesteps: number[];
  readonly initNoiseSigma: number;
  /** sigma per step, then 0. */
  private readonly sigmas: number[];

  constructor(private readonly cfg: SchedulerConfig, steps: number) {
    const ac = alphasCumprod(cfg);
    // Zero terminal SNR makes the last sigma infinite; diffusers moves it to a tiny alpha instead.
    if (cfg.rescaleBetasZeroSnr) ac[ac.length - 1] = 2 ** -24;
    const all = Array.from(ac, (a) => Math.sqrt((1 - a) / a));
    this.timesteps = inferenceTimesteps('euler', cfg, steps);
    this.sigmas = this.timesteps.map((t) => {
      if (t < 0 || t > all.length - 1) throw configError(cfg.source, `timestep ${t} falls outside [0, ${all.length}) (steps_offset ${cfg.stepsOffset} too large for ${steps} steps)`);
      const lo = Math.floor(t);
      const hi = Math.min(lo + 1, all.length - 1);
      return all[lo]! + (all[hi]! - all[lo]!) * (t - lo); // np.interp
    });
    this.sigmas.push(0);
    const max = Math.max(...this.sigmas);
    const spacing = cfg.timestepSpacing ?? 'linspace';
    this.initNoiseSigma = spacing === 'linspace' || spacing === 'trailing' ? max : Math.sqrt(max * max + 1);
  }

  alphaAt(i: number): number {
    const s = this.sigmas[i]!;
    return 1 / (1 + s * s);
  }

  scaleModelInput(x: Float32Array, i: number): Float32Array {
    const s = this.sigmas[i]!;
    const f = 1 / Math.sqrt(s * s + 1);
    const out = new Float32Array(x.length);
    for (let k = 0; k < x.length; k++) out[k] = x[k]! * f;
    return out;
  }

  step(m: Float32Array, i: number, x: Float32Array): void {
    const sigma = this.sigmas[i]!;
    const dt = this.sigmas[i + 1]! - sigma;
    const type = this.cfg.predictionType;
    const c = 1 / Math.sqrt(sigma * sigma + 1);
    for (let k = 0; k < x.length; k++) {
      const xk = x[k]!;
      const mk = m[k]!;
      let x0: number;
      if (type === 'epsilon') x0 = xk - sigma * mk;
      else if (type === 'v_prediction') x0 = mk * (-sigma * c) + xk * c * c;
      else x0 = mk;
      x[k] = xk + ((xk - x0) / sigma) * dt;
    }
  }
}

/** A scheduler of `kind` for `steps` inference steps. */
export function createScheduler(kind: SchedulerKind, cfg: SchedulerConfig, steps: number): Scheduler {
  if (!SCHEDULER_KINDS.includes(kind)) throw new CodedError('NCP_EINVAL', `unknown scheduler '${kind}' (allowed: ${SCHEDULER_KINDS.join(', ')})`);
  return kind === 'ddim' ? new DdimScheduler(cfg, steps) : new EulerScheduler(cfg, steps);
}
