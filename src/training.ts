// Training from TypeScript: the native trainer (U-Net + LoRA + objective + AdamW + the noise generator) behind
// typed wrappers, and the `grad` job that checks one objective's gradients on a case file.
import { native } from './native.js';
import type { NativeTrainer, ObjectiveOptions, StepBenchResult, TrainerOptions } from './native.js';

export type {
  LoraModuleTensors,
  NativeTrainer as Trainer,
  ObjectiveMetrics,
  ObjectiveOptions,
  PairBatch,
  StepMetrics,
  TrainerOptions,
  TrainerState,
  StepBenchResult,
} from './native.js';

/** Loads the U-Net of `options.model`, attaches fresh LoRA adapters (B = 0) and resolves to the trainer. */
export function createTrainer(options: TrainerOptions): Promise<NativeTrainer> {
  return native().createTrainer(options);
}

export interface GradOptions extends ObjectiveOptions {
  model: string;
  input: string;
  output: string;
  variant?: string;
  /** LoRA alpha (scale alpha / rank); default: the rank, i.e. scale 1. */
  loraAlpha?: number;
}

/** `ncp-native grad`: loss and LoRA gradients of one objective on a case file; resolves to the tensor names written. */
export function gradFile(options: GradOptions): Promise<string[]> {
  return native().gradFile(options);
}

/** One full optimiser step on the real SD1.5/SDXL architecture with random weights (LoRA r4). */
export function benchStep(options: {
  preset: 'sd15' | 'sdxl';
  latent?: number;
  pairs?: number;
  objective?: 'sft' | 'dpo' | 'cpo';
  space?: 'latent' | 'ncp';
  reps?: number;
  /** 'cpu' (default), 'cuda' or 'cuda:N'. */
  device?: string;
  /** Write the weights as a safetensors file of this dtype and load it as loadUNet does (default: float32 in memory). */
  weightsFile?: 'F32' | 'F16' | 'BF16';
  /** As the trainer's options of these names. */
  gradientCheckpointing?: boolean;
  recompute?: Array<'feedforward' | 'qkv'>;
}): Promise<StepBenchResult> {
  return native().benchStep({
    preset: options.preset,
    latent: options.latent ?? 32,
    pairs: options.pairs ?? 1,
    objective: options.objective ?? 'dpo',
    space: options.space ?? 'ncp',
    reps: options.reps ?? 3,
    device: options.device ?? 'cpu',
    weightsFile: options.weightsFile ?? '',
    gradientCheckpointing: options.gradientCheckpointing ?? false,
    recompute: options.recompute ?? [],
  });
}
