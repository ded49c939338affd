// The files of a training run folder:
//
//   <run>/resolved-config.json        (config.ts)
//   <run>/metrics.jsonl               one JSON object per optimiser step
//   <run>/checkpoint-<step>/          lora.safetensors (kohya layout, float32, alpha explicit)
//                                     optimizer.safetensors (the optimiser's state tensors, float32)
//                                     state.json (step, RNG states, data position, anything else to resume)
//   <run>/<name>.safetensors          the exported LoRA
//
// Every file and checkpoint folder is published atomically (temporary sibling + fsync + rename), so a run killed at
// any point (SIGKILL during a checkpoint included) leaves the previous checkpoint whole; leftovers of an interrupted
// write are hidden names (.checkpoint-12.tmp-...) that the next checkpoint removes.
import { open, readdir, readFile, rm, stat, mkdir, access } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import { join, resolve } from 'node:path';
import { CodedError, describeFsError } from './errors.js';
import { isTempName, writeDirAtomic, writeFileAtomic, writeFileDurable } from './atomic-fs.js';
import { readSafetensors, serializeSafetensors, toFloat32, type TensorToWrite } from './safetensors.js';
import { loraMetadataStrings, loraTensors, readLoraFile, type LoraWeights } from './lora-file.js';
import type { RngState } from './rng.js';
import type { DataPosition } from './data/types.js';

export { writeFileAtomic } from './atomic-fs.js';

function runError(message: string, cause?: unknown): CodedError {
  return new CodedError('NCP_ERUN', message, cause === undefined ? undefined : { cause });
}

/** Creates `dir` if needed and proves it is writable (so a bad --output fails before any training). */
export async function ensureWritableDir(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true });
    const s = await stat(dir);
    if (!s.isDirectory()) throw Object.assign(new Error('not a folder'), { code: 'ENOTDIR' });
    await access(dir, fsConstants.W_OK);
    const probe = join(dir, `.write-probe-${process.pid}`);
    const fh = await open(probe, 'w');
    await fh.close();
    await rm(probe, { force: true });
  } catch (err) {
    throw new CodedError('NCP_EWRITE', `output folder ${dir} is not writable: ${describeFsError(err)}`, { cause: err });
  }
}

// --- metrics ------------------------------------------------------------------------------------------------------

/** One optimiser step. Extra numeric or string fields may be added. Non-finite numbers are written as null. */
export interface StepMetrics {
  step: number;
  loss: number;
  /** implicit accuracy mean(logits > 0) + 0.5 mean(logits == 0) */
  accuracy: number | null;
  reward_w: number | null;
  reward_l: number | null;
  /** mean per-sample errors of the policy (model) and the reference on the preferred (w) and rejected (l) images */
  model_w: number;
  model_l: number;
  ref_w: number | null;
  ref_l: number | null;
  lr: number;
  grad_norm: number;
  /** seconds of this optimiser step (all its micro-batches) */
  step_time: number;
  [extra: string]: number | string | boolean | null;
}

const REQUIRED_METRICS = ['step', 'loss', 'accuracy', 'reward_w', 'reward_l', 'model_w', 'model_l', 'ref_w', 'ref_l', 'lr', 'grad_norm', 'step_time'] as const;

/** Appends one JSON line per step to metrics.jsonl; each line is written with a single write and fsynced on close. */
export class MetricsWriter {
  private constructor(
    readonly path: string,
    private fh: Awaited<ReturnType<typeof open>> | undefined,
  ) {}

  /**
   * Opens `path` for appending. With `resumeStep`, lines of steps after it (written by the interrupted run after its
   * last checkpoint) are dropped first, so the log has each step once.
   */
  static async open(path: string, options: { resumeStep?: number } = {}): Promise<MetricsWriter> {
    if (options.resumeStep !== undefined) {
      let text: string | undefined;
      try {
        text = await readFile(path, 'utf8');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw runError(`cannot read ${path}: ${describeFsError(err)}`, err);
      }
      if (text !== undefined) {
        const kept = text
          .split('\n')
          .filter((line) => {
            if (!line.trim()) return false;
            try {
              return (JSON.parse(line) as { step?: number }).step! <= options.resumeStep!;
            } catch {
              return false; // a torn last line of a killed run
            }
          })
          .map((l) => l + '\n');
        await writeFileAtomic(path, kept.join(''));
      }
    }
    try {
      return new MetricsWriter(path, await open(path, 'a'));
    } catch (err) {
      throw new CodedError('NCP_EWRITE', `cannot open ${path} for writing: ${describeFsError(err)}`, { cause: err });
    }
  }

  async write(m: StepMetrics): Promise<void> {
    if (!this.fh) throw runError(`${this.path}: metrics writer is closed`);
    for (const k of REQUIRED_METRICS) if (!(k in m)) throw runError(`metrics for step ${m.step}: field '${k}' is missing`);
    const line = JSON.stringify(m, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v)) + '\n';
    await this.fh.write(line);
  }

  async close(): Promise<void> {
    if (!this.fh) return;
    const fh = this.fh;
    this.fh = undefined;
    await fh.sync().catch(() => {});
    await fh.close();
  }
}

/** Reads metrics.jsonl (skipping a torn last line). */
export async function readMetrics(path: string): Promise<StepMetrics[]> {
  const text = await readFile(path, 'utf8');
  const out: StepMetrics[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as StepMetrics);
    } catch {
      // torn line
    }
  }
  return out;
}

// --- checkpoints ----------------------------------------------------------------------------------------------------

export const CHECKPOINT_PREFIX = 'checkpoint-';
const STATE_FILE = 'state.json';
const LORA_FILE = 'lora.safetensors';
const OPTIMIZER_FILE = 'optimizer.safetensors';
const STATE_FORMAT = 'ncp-checkpoint';
const STATE_VERSION = 1;

/** What a run needs besides tensors to continue exactly where it stopped. */
export interface CheckpointState {
  step: number;
  /** the next data position to read */
  data: DataPosition;
  /** named generator states (e.g. { train: ..., data: ... }) */
  rng: Record<string, RngState>;
  /** anything else (optimiser step count, corrupt-image counts, the config used, ...); must be JSON */
  extra?: Record<string, unknown>;
}

export interface Checkpoint {
  dir: string;
  state: CheckpointState;
  lora: LoraWeights;
  /** optimiser state tensors by name, float32 */
  optimizer: Map<string, { shape: number[]; data: Float32Array }>;
}

export interface CheckpointInfo {
  dir: string;
  step: number;
}

function checkpointName(step: number): string {
  return `${CHECKPOINT_PREFIX}${step}`;
}

function parseStep(name: string): number | undefined {
  const m = /^checkpoint-(\d+)$/.exec(name);
  return m ? Number(m[1]) : undefined;
}

/** Checkpoint folders of a run, oldest first (complete ones only: those with a readable state.json). */
export async function listCheckpoints(runDir: string): Promise<CheckpointInfo[]> {
  let names: string[];
  try {
    names = await readdir(runDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw runError(`cannot list ${runDir}: ${describeFsError(err)}`, err);
  }
  const out: CheckpointInfo[] = [];
  for (const name of names) {
    const step = parseStep(name);
    if (step === undefined) continue;
    const dir = join(runDir, name);
    try {
      const s = JSON.parse(await readFile(join(dir, STATE_FILE), 'utf8')) as { step?: unknown };
      if (s.step === step) out.push({ dir, step });
    } catch {
      // incomplete or damaged: not a candidate for --resume
    }
  }
  return out.sort((a, b) => a.step - b.step);
}

/** The newest complete checkpoint of a run, or undefined. */
export async function findLatestCheckpoint(runDir: string): Promise<CheckpointInfo | undefined> {
  const all = await listCheckpoints(runDir);
  return all[all.length - 1];
}

/**
 * What `--resume` names: 'latest' (in the run folder `outputDir`), a checkpoint folder, or a run folder (its latest
 * checkpoint). Errors name the path and what was looked for.
 */
export async function resolveResume(resume: string, outputDir: string): Promise<CheckpointInfo> {
  const runDir = resume === 'latest' ? outputDir : resolve(resume);
  if (resume !== 'latest') {
    try {
      const s = JSON.parse(await readFile(join(runDir, STATE_FILE), 'utf8')) as { step?: unknown };
      if (typeof s.step === 'number') return { dir: runDir, step: s.step };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw runError(`--resume ${resume}: ${join(runDir, STATE_FILE)} is unreadable (${(err as Error).message})`, err);
    }
  }
  const latest = await findLatestCheckpoint(runDir);
  if (!latest) throw runError(`--resume ${resume}: no complete checkpoint-<step> folder in ${runDir}`);
  return latest;
}

function validateState(state: CheckpointState): void {
  if (!Number.isInteger(state.step) || state.step < 0) throw runError(`checkpoint state: step ${state.step} is not a non-negative integer`);
  if (!state.data || !Number.isInteger(state.data.epoch) || !Number.isInteger(state.data.index))
    throw runError(`checkpoint state: data position ${JSON.stringify(state.data)} must be {epoch, index} integers`);
}

/**
 * Writes `<runDir>/checkpoint-<step>/` atomically, then removes the oldest complete checkpoints beyond `keep` and the
 * leftovers of interrupted writes. Returns the folder.
 */
export async function writeCheckpoint(
  runDir: string,
  ckpt: { state: CheckpointState; lora: LoraWeights; optimizer: Map<string, TensorToWrite> | Record<string, TensorToWrite> },
  keep: number,
): Promise<string> {
  validateState(ckpt.state);
  if (!Number.isInteger(keep) || keep < 1) throw runError(`keep-checkpoints ${keep} must be a positive integer`);
  const dir = join(runDir, checkpointName(ckpt.state.step));
  await writeDirAtomic(dir, async (tmp) => {
    await writeFileDurable(join(tmp, LORA_FILE), serializeSafetensors(loraTensors(ckpt.lora, 'kohya'), loraMetadataStrings(ckpt.lora, 'kohya')));
    await writeFileDurable(join(tmp, OPTIMIZER_FILE), serializeSafetensors(ckpt.optimizer, { 'ncp.step': String(ckpt.state.step) }));
    const state = { format: STATE_FORMAT, version: STATE_VERSION, ...ckpt.state };
    // state.json last: listCheckpoints treats a folder without it as incomplete.
    await writeFileDurable(join(tmp, STATE_FILE), JSON.stringify(state, null, 2) + '\n');
  });
  await pruneCheckpoints(runDir, keep, dir);
  return dir;
}

/** Keeps the newest `keep` complete checkpoints (never `protect`), removes older ones and stale temp folders. */
export async function pruneCheckpoints(runDir: string, keep: number, protect?: string): Promise<void> {
  const all = await listCheckpoints(runDir);
  const doomed = all.slice(0, Math.max(0, all.length - keep)).filter((c) => c.dir !== protect);
  for (const c of doomed) await rm(c.dir, { recursive: true, force: true });
  for (const name of await readdir(runDir)) {
    if (isTempName(name) && name.startsWith(`.${CHECKPOINT_PREFIX}`)) await rm(join(runDir, name), { recursive: true, force: true });
  }
}

/**
 * The native optimiser's moments (TrainerState.moments: m_A, v_A, m_B, v_B per adapter, in a fixed order) as
 * checkpoint tensors `moments.000000`, ... and back, order kept.
 */
export function momentsToTensors(moments: readonly Float32Array[]): Map<string, { shape: number[]; data: Float32Array }> {
  return new Map(moments.map((m, i) => [`moments.${String(i).padStart(6, '0')}`, { shape: [m.length], data: m }]));
}

export function tensorsToMoments(tensors: Map<string, { shape: number[]; data: Float32Array }>): Float32Array[] {
  const out: Float32Array[] = [];
  for (const [name, t] of [...tensors].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const m = /^moments\.(\d+)$/.exec(name);
    if (!m) continue;
    if (Number(m[1]) !== out.length) throw runError(`optimizer state: expected moments.${String(out.length).padStart(6, '0')}, found ${name}`);
    out.push(t.data);
  }
  return out;
}

/** Reads a checkpoint folder back. */
export async function readCheckpoint(dir: string): Promise<Checkpoint> {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(await readFile(join(dir, STATE_FILE), 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw runError(`checkpoint ${dir}: cannot read ${STATE_FILE} (${err instanceof SyntaxError ? err.message : describeFsError(err)})`, err);
  }
  if (raw['format'] !== STATE_FORMAT || raw['version'] !== STATE_VERSION)
    throw runError(`checkpoint ${dir}: ${STATE_FILE} is not an ${STATE_FORMAT} version ${STATE_VERSION} file`);
  const { format: _f, version: _v, ...rest } = raw;
  const state = rest as unknown as CheckpointState;
  validateState(state);
  const lora = (await readLoraFile(join(dir, LORA_FILE))).weights;
  const opt = await readSafetensors(join(dir, OPTIMIZER_FILE));
  const optimizer = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, t] of opt.tensors) {
    if (t.dtype !== 'F32') throw runError(`checkpoint ${dir}: optimizer tensor ${name} is ${t.dtype}, expected F32`);
    optimizer.set(name, { shape: t.shape, data: toFloat32(t.bytes, t.dtype) });
  }
  return { dir, state, lora, optimizer };
}
