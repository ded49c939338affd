// `import { train } from 'ncp-native'`: the training job as a library call, with the options of the command line
// (camelCase keys of TrainConfig, or the flag names), a config file (`config`), progress callbacks and cancellation
// through an AbortSignal (the running step finishes and a checkpoint is written, as with Ctrl-C).
import { loadConfig, type TrainConfig } from './config.js';
import { train as runTraining, type TrainHooks, type TrainSummary } from './train.js';

export type TrainOptions = Partial<TrainConfig> & { model: string; data: string; config?: string };
export type { TrainConfig, TrainHooks, TrainSummary };

export async function train(options: TrainOptions, hooks: TrainHooks = {}): Promise<TrainSummary> {
  const cfg = await loadConfig(options as unknown as Record<string, unknown>);
  return runTraining(cfg, { log: () => {}, ...hooks });
}
