// `ncp-native train`: the main job. Data (streamed, prefetched off the main thread) -> encoders (or an encode cache)
// -> the native trainer (policy/reference U-Net, objective, AdamW) -> metrics, checkpoints and the LoRA file.
//
// Everything random is seeded: the data order and augmentation (TypeScript, src/rng.ts), the VAE sampling (a seed
// per micro-batch derived from the run seed and the data position) and the timesteps and noise (the native
// trainer's generator, saved in checkpoints). So an interrupted run resumed from its checkpoint continues exactly
// as if it had not stopped.
import { access, mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { CodedError } from './errors.js';
import { writeResolvedConfig, type TrainConfig } from './config.js';
import { openDataset, PairLoader, type CachePairSource, stackEncodedBatch, stackImageBatch, type DataPosition, type LoaderStats, type PositionedEncodedPair, type PreparedPair } from './data/index.js';
import { native } from './native.js';
import { loraModulesFromWeights, loraWeightsFromModules, writeLoraFile } from './lora-file.js';
import type { UNetArchConfig } from './lora-names.js';
import { pairBatchFromCache, PairEncoder } from './pipeline.js';
import { sampleToFile } from './sampler.js';
import { ensureWritableDir, MetricsWriter, momentsToTensors, readCheckpoint, resolveResume, tensorsToMoments, writeCheckpoint } from './run-files.js';
import { createTrainer, type PairBatch, type StepMetrics as NativeStepMetrics, type Trainer } from './training.js';

export const LORA_FILE = 'lora.safetensors';
export const SAMPLES_DIR = 'samples';
// Validation samples: diffusers' usual DDIM settings. The sampler loads its own copy of the model for each round,
// so a round costs one more set of weights in memory while it runs.
const VALIDATION_STEPS = 25;
const VALIDATION_CFG = 7.5;
export const METRICS_FILE = 'metrics.jsonl';

export interface TrainHooks {
  /** one line of human-readable progress (stderr by default) */
  log?: (line: string) => void;
  /** called after every optimiser step */
  onStep?: (m: NativeStepMetrics, total: number | null) => void;
  /** aborting stops after the current step, with a checkpoint */
  signal?: AbortSignal;
}

export interface TrainSummary {
  output: string;
  loraFile: string;
  metricsFile: string;
  steps: number;
  resumedFrom: number | null;
  stoppedBy: 'max-steps' | 'epochs' | 'signal';
  lastCheckpoint: string | null;
  data: LoaderStats;
  seconds: number;
}

type Loaded = { kind: 'images'; loader: PairLoader<PreparedPair> } | { kind: 'cache'; loader: PairLoader<PositionedEncodedPair> };

/** The seed of the VAE sampling for the micro-batch that starts at `position`: fixed by the run seed and the data. */
function vaeSeed(seed: number, position: DataPosition): number {
  return (seed * 1_000_003 + position.epoch * 7_919_000 + position.index) % Number.MAX_SAFE_INTEGER;
}

function nativeSchedule(cfg: TrainConfig): 'constant' | 'constant_with_warmup' | 'linear' | 'cosine' {
  if (cfg.lrSchedule === 'constant') return cfg.warmupSteps > 0 ? 'constant_with_warmup' : 'constant';
  return cfg.lrSchedule;
}

/** `auto` is the first GPU when the CUDA backend is usable, else the CPU; `cuda`/`cuda:N` without a usable backend
 * fail in createTrainer with the reason (no driver, no device, not built). */
function resolveDevice(device: TrainConfig['device']): string {
  if (device !== 'auto') return device;
  return native().cudaStatus().usable ? 'cuda:0' : 'cpu';
}

async function unetConfig(model: string): Promise<UNetArchConfig> {
  return JSON.parse(await readFile(join(model, 'unet', 'config.json'), 'utf8')) as UNetArchConfig;
}

/** Runs (or resumes) a training run as `cfg` says. `cfg.model` and `cfg.data` must be set. */
export async function train(cfg: TrainConfig, hooks: TrainHooks = {}): Promise<TrainSummary> {
  const log = hooks.log ?? ((line: string) => process.stderr.write(line + '\n'));
  const started = performance.now();
  if (!cfg.model) throw new CodedError('NCP_ECONFIG', 'train: --model (a diffusers folder) is required');
  if (!cfg.data) throw new CodedError('NCP_ECONFIG', 'train: --data (parquet, JSONL or an encode cache) is required');
  const model = cfg.model, dataPath = cfg.data;  // narrowed to string, for the closures below
  const device = resolveDevice(cfg.device);

  const freshOutput = await access(cfg.output).then(() => false, () => true);
  await ensureWritableDir(cfg.output);
  await writeResolvedConfig(cfg.output, cfg);
  // A run that cannot start (device, model, checkpoint or data refused) leaves behind no folder it created: only
  // its resolved-config.json would be in it.
  const beforeStart = async <T>(work: () => Promise<T> | T): Promise<T> => {
    try {
      return await work();
    } catch (err) {
      if (freshOutput) await rm(cfg.output, { recursive: true, force: true });
      throw err;
    }
  };

  // ---- The native trainer (fresh LoRA, B = 0), then the checkpoint over it when resuming.
  const trainer: Trainer = await beforeStart(() => createTrainer({
    model,
    variant: cfg.variant ?? undefined,
    seed: cfg.seed,
    gradientCheckpointing: cfg.gradientCheckpointing,
    recompute: cfg.recompute,
    device,
    mixedPrecision: cfg.mixedPrecision,
    lora: { rank: cfg.rank, alpha: cfg.alpha, targets: cfg.targets, init: cfg.loraInit },
    objective: { objective: cfg.objective, space: cfg.space, ncpLayer: cfg.ncpLayer, ncpTimestep: cfg.ncpTimestep, beta: cfg.beta, cpoLambda: cfg.cpoLambda, ncpCoeff: cfg.ncpCoeff, ncpPool: cfg.ncpPool },
    optimizer: {
      lr: cfg.lr,
      beta1: cfg.adamBeta1,
      beta2: cfg.adamBeta2,
      eps: cfg.adamEps,
      weightDecay: cfg.weightDecay,
      maxGradNorm: cfg.maxGradNorm,
      schedule: nativeSchedule(cfg),
      warmupSteps: cfg.warmupSteps,
      totalSteps: cfg.maxSteps ?? 0,
    },
  }));
  let step = 0;
  let start: DataPosition = { epoch: 0, index: 0 };
  let resumedFrom: number | null = null;
  if (cfg.resume) {
    const resume = cfg.resume;
    const at = await beforeStart(() => resolveResume(resume, cfg.output));
    const ckpt = await beforeStart(() => readCheckpoint(at.dir));
    const rng = ckpt.state.rng['train'];
    if (!rng) throw new CodedError('NCP_ERESUME', `checkpoint ${at.dir}: state.json has no 'train' generator state`);
    trainer.setLoraTensors(loraModulesFromWeights(ckpt.lora));
    const extra = ckpt.state.extra ?? {};
    const scaler = typeof extra.lossScale === 'number' ? { lossScale: extra.lossScale, lossScaleGoodSteps: Number(extra.lossScaleGoodSteps ?? 0) } : {};
    trainer.setState({ step: ckpt.state.step, rng: [...rng], moments: tensorsToMoments(ckpt.optimizer), ...scaler });
    step = ckpt.state.step;
    start = ckpt.state.data;
    resumedFrom = step;
    log(`resumed from ${at.dir} (step ${step}, data epoch ${start.epoch} row ${start.index})`);
  }

  // ---- Data: images through the encoders, or an encode cache straight to the trainer.
  const source = await beforeStart(() => openDataset(dataPath, { absoluteWinners: cfg.absoluteWinners }));
  const loaderOptions = {
    seed: cfg.seed,
    start,
    epochs: cfg.maxSteps !== null ? Infinity : cfg.epochs ?? 1,
    prefetch: cfg.prefetch,
    maxCorruptFraction: cfg.maxCorruptFraction,
    signal: hooks.signal,
  };
  let data: Loaded;
  let encoder: PairEncoder | undefined;
  if (source.kind === 'cache') {
    data = { kind: 'cache', loader: new PairLoader<PositionedEncodedPair>(source, loaderOptions) };
  } else {
    encoder = await beforeStart(() => PairEncoder.load(model, { variant: cfg.variant ?? undefined }));
    const image = { resolution: cfg.resolution, centerCrop: cfg.centerCrop, randomFlip: cfg.randomFlip };
    data = { kind: 'images', loader: new PairLoader<PreparedPair>(source, { ...loaderOptions, image }) };
  }
  log(`data: ${cfg.data} (${source.kind}, ${data.loader.rowsPerEpoch} rows per epoch); model: ${cfg.model}; device: ${device}; output: ${cfg.output}`);

  async function encode(pairs: Array<PreparedPair | PositionedEncodedPair>, at: DataPosition): Promise<PairBatch> {
    if (data.kind === 'cache') return pairBatchFromCache(stackEncodedBatch(pairs as PositionedEncodedPair[]), (source as CachePairSource).manifest);
    return encoder!.encodeBatch(stackImageBatch(pairs as PreparedPair[]), vaeSeed(cfg.seed, at));
  }

  // ---- The loop. A stop request (signal, SIGINT) lets the running step finish, then checkpoints.
  const metrics = await MetricsWriter.open(join(cfg.output, METRICS_FILE), resumedFrom !== null ? { resumeStep: resumedFrom } : {});
  const saved: { last: string | null } = { last: null };
  let position = start;
  let stoppedBy: TrainSummary['stoppedBy'] = 'epochs';
  async function checkpoint(): Promise<void> {
    const state = trainer.state();
    saved.last = await writeCheckpoint(
      cfg.output,
      {
        state: {
          step,
          data: position,
          rng: { train: state.rng as [string, string, string, string] },
          extra: { objective: cfg.objective, space: cfg.space, ...(state.lossScale !== undefined ? { lossScale: state.lossScale, lossScaleGoodSteps: state.lossScaleGoodSteps } : {}) },
        },
        lora: loraWeightsFromModules(trainer.loraTensors()),
        optimizer: momentsToTensors(state.moments),
      },
      cfg.keepCheckpoints,
    );
  }
  async function validate(): Promise<void> {
    await mkdir(join(cfg.output, SAMPLES_DIR), { recursive: true });
    const lora = join(cfg.output, SAMPLES_DIR, `.lora-step-${step}.safetensors`);
    await writeLoraFile(lora, loraWeightsFromModules(trainer.loraTensors()), { layout: 'kohya' });
    for (const [i, prompt] of cfg.validationPrompts.entries()) {
      const out = join(cfg.output, SAMPLES_DIR, `step-${String(step).padStart(6, '0')}-${i}.png`);
      await sampleToFile({ model: cfg.model!, variant: cfg.variant ?? undefined, prompt, lora, steps: VALIDATION_STEPS, cfg: VALIDATION_CFG, seed: cfg.validationSeed, out });
      log(`validation sample: ${out}`);
    }
    await rm(lora, { force: true });
  }
  try {
    const micro: PairBatch[] = [];
    let microStart = position;
    for await (const batch of data.loader.batches(cfg.batchPairs)) {
      if (cfg.maxSteps !== null && step >= cfg.maxSteps) {
        stoppedBy = 'max-steps';
        break;
      }
      micro.push(await encode(batch.pairs, microStart));
      microStart = batch.position;
      if (micro.length < cfg.gradAccumulation) continue;
      let m: NativeStepMetrics;
      try {
        m = await trainer.step(micro.splice(0));
      } catch (err) {
        const e = err as Error & { code?: string };
        if (e.code === 'NCP_ENONFINITE')
          throw new CodedError('NCP_ENONFINITE', `step ${step + 1}: ${e.message}; the last good checkpoint is ${saved.last ?? 'none (no checkpoint was written yet)'}`, { cause: err });
        throw err;
      }
      step = m.step;
      position = batch.position;
      await metrics.write({
        step,
        loss: m.loss,
        accuracy: m.implicitAcc,
        reward_w: m.rewardW,
        reward_l: m.rewardL,
        model_w: m.policyW,
        model_l: m.policyL,
        ref_w: m.refW,
        ref_l: m.refL,
        lr: m.lr,
        grad_norm: m.gradNorm,
        step_time: m.seconds,
        epoch: position.epoch,
        ...(cfg.mixedPrecision === 'fp16' ? { loss_scale: m.lossScale, skipped: m.skipped } : {}),
      });
      hooks.onStep?.(m, cfg.maxSteps);
      if (cfg.checkpointEvery > 0 && step % cfg.checkpointEvery === 0) await checkpoint();
      if (cfg.validateEvery > 0 && step % cfg.validateEvery === 0) await validate();
      if (hooks.signal?.aborted) {
        stoppedBy = 'signal';
        break;
      }
      if (cfg.maxSteps !== null && step >= cfg.maxSteps) {
        stoppedBy = 'max-steps';
        break;
      }
    }
  } finally {
    await metrics.close();
  }
  if (step > 0 && (saved.last === null || !saved.last.endsWith(`checkpoint-${step}`))) await checkpoint();

  // ---- The LoRA file other tools load.
  const unet = await unetConfig(cfg.model);
  const loraFile = join(cfg.output, LORA_FILE);
  await writeLoraFile(loraFile, loraWeightsFromModules(trainer.loraTensors()), {
    layout: cfg.loraFormat,
    unet,
    metadata: { targets: cfg.targets, baseModel: cfg.model, objective: cfg.objective, space: cfg.space, beta: cfg.beta, steps: step, seed: cfg.seed },
  });
  return {
    output: cfg.output,
    loraFile,
    metricsFile: join(cfg.output, METRICS_FILE),
    steps: step,
    resumedFrom,
    stoppedBy,
    lastCheckpoint: saved.last,
    data: data.loader.stats(),
    seconds: (performance.now() - started) / 1000,
  };
}
