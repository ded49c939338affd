// The `train` command: flags and config file -> resolved config -> the training job, with a progress line, a
// summary and clean stops on SIGINT/SIGTERM (the running step finishes, a checkpoint is written, exit 130/143).
import type { Argv } from 'yargs';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { configFlagOptions, loadConfig } from './config.js';
import { setThreads } from './index.js';
import { train } from './train.js';
import type { StepMetrics } from './training.js';

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..');

/** The embedded default: a tiny SD1.5-style model and a handful of preference pairs shipped with the package. */
export const EMBEDDED_MODEL = join(packageRoot, 'assets', 'tiny-sd15');
export const EMBEDDED_DATA = join(packageRoot, 'assets', 'tiny-pairs', 'pairs.jsonl');
// What suits the tiny model (32 px images, 16 tokens) and a run of seconds; any flag or config field overrides.
const EMBEDDED_FLAGS: Record<string, unknown> = {
  resolution: 32,
  'max-steps': 200,
  'warmup-steps': 0,
  lr: 2e-3,
  beta: 5000,
  'batch-pairs': 4,
  'checkpoint-every': 50,
};

function fmt(x: number | null | undefined, digits = 4): string {
  return x === null || x === undefined || Number.isNaN(x) ? '-' : Number(x.toPrecision(digits)).toString();
}

function duration(seconds: number): string {
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m` : s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}

/**
 * Progress: on a terminal one bar redrawn in place (step/total, loss, implicit accuracy, it/s, ETA); otherwise a
 * plain line every 10th step (and the first and last). Keeps the accuracies for the end-of-run summary.
 */
class Progress {
  readonly accuracies: number[] = [];
  private readonly started = performance.now();
  private firstStep: number | null = null;
  constructor(private readonly tty: boolean) {}

  update(m: StepMetrics, total: number | null): void {
    this.accuracies.push(m.implicitAcc);
    this.firstStep ??= m.step - 1;
    const done = m.step - this.firstStep;
    const rate = done / ((performance.now() - this.started) / 1000);
    const eta = total ? ` ETA ${duration((total - m.step) / rate)}` : '';
    const stats = `loss ${fmt(m.loss)}  acc ${fmt(m.implicitAcc, 3)}  grad ${fmt(m.gradNorm, 3)}  lr ${fmt(m.lr, 3)}  ${rate.toFixed(2)} it/s${eta}`;
    if (this.tty) {
      const width = 24, filled = total ? Math.round((width * m.step) / total) : 0;
      const bar = total ? `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ` : '';
      process.stderr.write(`\r${bar}step ${m.step}${total ? `/${total}` : ''}  ${stats}\x1b[K`);
    } else if (m.step % 10 === 0 || m.step === total || m.step === 1) {
      process.stderr.write(`step ${m.step}${total ? `/${total}` : ''}  ${stats}\n`);
    }
  }

  /** Mean implicit accuracy of the first and the last tenth of the run (at least 5 steps each), or ''. */
  trend(): string {
    const a = this.accuracies.filter((x) => Number.isFinite(x));
    if (a.length < 10) return '';
    const k = Math.max(5, Math.floor(a.length / 10));
    const mean = (xs: number[]): number => xs.reduce((x, y) => x + y, 0) / xs.length;
    return `implicit accuracy: ${mean(a.slice(0, k)).toFixed(2)} over the first ${k} steps -> ${mean(a.slice(-k)).toFixed(2)} over the last ${k}`;
  }
}

export function trainCommand<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'train',
    'fine-tune a LoRA with SFT, Diffusion-DPO or CPO in latent or NCP space; with no --model/--data/--config it trains the bundled tiny model on bundled pairs',
    (b) => b.options(configFlagOptions()).option('config', { type: 'string', describe: 'JSON or YAML config file (flags override its fields)' }),
    async (args) => {
      const flags = { ...(args as Record<string, unknown>) };
      const embedded = flags['model'] === undefined && flags['data'] === undefined && flags['config'] === undefined;
      if (embedded) {
        if (!existsSync(EMBEDDED_MODEL) || !existsSync(EMBEDDED_DATA))
          throw Object.assign(new Error(`the embedded default model or data is missing from this installation (${EMBEDDED_MODEL})`), { code: 'NCP_EMISSING' });
        flags['model'] = EMBEDDED_MODEL;
        flags['data'] = EMBEDDED_DATA;
        for (const [k, v] of Object.entries(EMBEDDED_FLAGS)) if (flags[k] === undefined) flags[k] = v;
      }
      const cfg = await loadConfig(flags);
      if (cfg.threads !== null) setThreads(cfg.threads);
      const tty = Boolean(process.stderr.isTTY);
      if (embedded) process.stderr.write(`no --model/--data given: training the bundled tiny model on the bundled pairs (${cfg.maxSteps} steps)\n`);

      // First signal: finish the step, checkpoint, exit 130 (SIGINT) / 143 (SIGTERM). Second: exit at once.
      const stop = new AbortController();
      let exitCode = 0;
      const onSignal = (sig: NodeJS.Signals): void => {
        if (stop.signal.aborted) process.exit(sig === 'SIGINT' ? 130 : 143);
        exitCode = sig === 'SIGINT' ? 130 : 143;
        process.stderr.write(`\n${sig}: stopping after this step and writing a checkpoint (send again to quit at once)\n`);
        stop.abort();
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      try {
        const bar = new Progress(tty);
        const s = await train(cfg, { onStep: (m, total) => bar.update(m, total), signal: stop.signal, log: (l) => process.stderr.write((tty ? '\r\x1b[K' : '') + l + '\n') });
        if (tty) process.stderr.write('\n');
        const d = s.data;
        const dropped = Object.entries(d.dropped).map(([k, v]) => `${v} ${k}`).join(', ');
        process.stdout.write(
          [
            `trained ${s.steps} steps${s.resumedFrom !== null ? ` (resumed at ${s.resumedFrom})` : ''} in ${s.seconds.toFixed(1)} s, stopped by ${s.stoppedBy}`,
            ...(bar.trend() ? [bar.trend()] : []),
            `data: ${d.pairs} pairs used, ${d.corrupt} skipped for unreadable images${dropped ? `, dropped: ${dropped}` : ''}`,
            ...d.corruptExamples.map((c) => `  skipped ${c.source} row ${c.row} (${c.image}): ${c.reason}`),
            `lora:    ${s.loraFile} (${cfg.loraFormat} layout)`,
            `metrics: ${s.metricsFile}`,
            `checkpoint: ${s.lastCheckpoint ?? 'none'}`,
          ].join('\n') + '\n',
        );
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
      if (exitCode) process.exitCode = exitCode;
    },
  );
}
