// The training data stream: rows in the seeded epoch order (order.ts), read window by window from the source, images
// decoded and prepared ahead of the consumer with a bounded queue, corrupt images skipped and counted.
//
// Off the main thread: sharp decodes and resizes on libuv's thread pool (UV_THREADPOOL_SIZE, 4 by default), which
// the native training step's async work also uses. So at most `decodeConcurrency` images are in flight (default:
// pool size - 1) and the step always finds a free thread; `prefetch` bounds how many prepared pairs wait in memory.
//
// Every yielded pair carries `position`: the data position just after it. A checkpoint stores the position of the
// last pair the step consumed; resuming from it replays nothing and skips nothing (pairs prefetched but not consumed
// are read again).
import { CodedError } from '../errors.js';
import { Rng } from '../rng.js';
import { prepareImage, ImageError, type ImageOptions, type PreparedImage } from './image.js';
import { EpochOrder, STREAM_AUGMENT } from './order.js';
import { dataError, type PairSource } from './source.js';
import type { DataPosition, DropReason, EncodedPair, PairMeta, PreferencePair, RowResult } from './types.js';

export interface LoaderOptions {
  seed: number;
  /** seeded order (default true); false reads rows in file order */
  shuffle?: boolean;
  /** where to start (default {epoch: 0, index: 0}) */
  start?: DataPosition;
  /** stop after this many epochs (may be fractional or Infinity; default 1) */
  epochs?: number;
  /** image preparation; required for sources of images */
  image?: ImageOptions;
  /** prepared pairs kept ahead of the consumer (default 8) */
  prefetch?: number;
  /** images decoded at once (default: libuv pool size - 1, at least 1) */
  decodeConcurrency?: number;
  /** fail when more than this fraction of pairs had an unusable image (default 0.05) */
  maxCorruptFraction?: number;
  /** the fraction is checked once this many pairs were tried (default 20), and always at the end */
  minPairsForCorruptCheck?: number;
  /** parquet: row groups whose rows are shuffled together (default 1; memory grows with it) */
  mixBlocks?: number;
  signal?: AbortSignal;
}

export interface PreparedPair {
  prompt: string;
  chosen: PreparedImage;
  rejected: PreparedImage;
  meta: PairMeta;
  position: DataPosition;
}

export type PositionedEncodedPair = EncodedPair & { position: DataPosition };

export interface CorruptExample {
  source: string;
  row: number;
  image: 'chosen' | 'rejected';
  reason: string;
}

export interface LoaderStats {
  /** rows read (pairs + dropped + corrupt) */
  rows: number;
  /** pairs yielded */
  pairs: number;
  dropped: Partial<Record<DropReason, number>>;
  /** pairs skipped because an image was unusable */
  corrupt: number;
  /** the first few, for the report */
  corruptExamples: CorruptExample[];
}

type Outcome<T> =
  | { kind: 'pair'; item: T }
  | { kind: 'dropped'; reason: DropReason; detail?: string }
  | { kind: 'corrupt'; examples: CorruptExample[] }
  | { kind: 'fatal'; error: unknown }
  | { kind: 'epoch-end'; epoch: number; from: number };

/** A counting semaphore for the decode slots. */
class Slots {
  private waiting: Array<() => void> = [];
  constructor(private free: number) {}
  async run<T>(f: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((r) => this.waiting.push(r));
    try {
      return await f();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    }
  }
}

function defaultDecodeConcurrency(): number {
  const pool = Number(process.env['UV_THREADPOOL_SIZE'] ?? 4);
  return Math.max(1, (Number.isFinite(pool) ? pool : 4) - 1);
}

const MAX_EXAMPLES = 10;

/** Reads pairs from any source; `T` is PreparedPair for image sources and PositionedEncodedPair for caches. */
export class PairLoader<T extends PreparedPair | PositionedEncodedPair = PreparedPair> {
  private readonly order: EpochOrder;
  private readonly statsData: LoaderStats = { rows: 0, pairs: 0, dropped: {}, corrupt: 0, corruptExamples: [] };
  private readonly isEncoded: boolean;

  constructor(
    private readonly source: PairSource<PreferencePair> | PairSource<EncodedPair>,
    private readonly options: LoaderOptions,
  ) {
    this.isEncoded = source.kind === 'cache';
    if (!this.isEncoded && !options.image) throw new CodedError('NCP_EDATA', `${source.path}: image options (resolution, crop, flip) are required for a ${source.kind} dataset`);
    this.order = new EpochOrder(source.blockRows, {
      seed: options.seed,
      shuffle: options.shuffle ?? true,
      randomAccess: source.randomAccess,
      mixBlocks: options.mixBlocks,
    });
    if (this.order.rows === 0) throw dataError(`${source.path}: the dataset has no rows`);
    const s = options.start;
    if (s && (!Number.isInteger(s.epoch) || !Number.isInteger(s.index) || s.epoch < 0 || s.index < 0 || s.index > this.order.rows))
      throw dataError(`data position ${JSON.stringify(s)} is outside this dataset (${this.order.rows} rows per epoch): was the checkpoint made with other data?`);
  }

  /** Rows per epoch. */
  get rowsPerEpoch(): number {
    return this.order.rows;
  }

  stats(): LoaderStats {
    return structuredClone(this.statsData);
  }

  private ended(epoch: number, index: number): boolean {
    const e = this.options.epochs ?? 1;
    if (e === Infinity) return false;
    const whole = Math.floor(e);
    if (epoch < whole) return false;
    if (epoch > whole) return true;
    return index >= Math.round((e - whole) * this.order.rows);
  }

  private positionAfter(epoch: number, index: number): DataPosition {
    return index + 1 >= this.order.rows ? { epoch: epoch + 1, index: 0 } : { epoch, index: index + 1 };
  }

  private async prepare(result: RowResult<PreferencePair> | RowResult<EncodedPair>, epoch: number, index: number, slots: Slots): Promise<Outcome<T>> {
    const position = this.positionAfter(epoch, index);
    try {
      if ('dropped' in result) return { kind: 'dropped', reason: result.dropped, detail: result.detail };
      if (this.isEncoded) return { kind: 'pair', item: { ...(result.pair as EncodedPair), position } as T };
      const pair = result.pair as PreferencePair;
      const image = this.options.image!;
      const one = async (which: 'chosen' | 'rejected', k: number): Promise<PreparedImage | CorruptExample> => {
        try {
          return await slots.run(() => prepareImage(pair[which], image, Rng.derive(this.options.seed, STREAM_AUGMENT, epoch, index, k)));
        } catch (err) {
          if (err instanceof ImageError) return { source: pair.meta.source, row: pair.meta.row, image: which, reason: typeof pair[which] === 'string' ? `${pair[which]}: ${err.reason}` : err.reason };
          throw err;
        }
      };
      const [c, r] = await Promise.all([one('chosen', 0), one('rejected', 1)]);
      const bad = [c, r].filter((x): x is CorruptExample => !('pixels' in x));
      if (bad.length) return { kind: 'corrupt', examples: bad };
      return { kind: 'pair', item: { prompt: pair.prompt, chosen: c as PreparedImage, rejected: r as PreparedImage, meta: pair.meta, position } as T };
    } catch (error) {
      return { kind: 'fatal', error };
    }
  }

  private corruptError(final: boolean): CodedError | undefined {
    const s = this.statsData;
    const tried = s.pairs + s.corrupt;
    const max = this.options.maxCorruptFraction ?? 0.05;
    if (s.corrupt === 0 || tried === 0) return undefined;
    if (!final && tried < (this.options.minPairsForCorruptCheck ?? 20)) return undefined;
    if (s.corrupt / tried <= max) return undefined;
    const first = s.corruptExamples.slice(0, 3).map((e) => `${e.source} row ${e.row} (${e.image}): ${e.reason}`).join('; ');
    return dataError(
      `${s.corrupt} of ${tried} pairs had an unusable image, more than the allowed fraction ${max} (--max-corrupt-fraction) in ${this.source.path}; e.g. ${first}`,
    );
  }

  private noPairsError(epoch: number): CodedError {
    const d = Object.entries(this.statsData.dropped).map(([k, v]) => `${v} ${k === 'tie' ? 'ties' : k.replace('_', ' ')}`);
    if (this.statsData.corrupt) d.push(`${this.statsData.corrupt} with an unusable image`);
    return dataError(`${this.source.path}: no usable preference pair in epoch ${epoch} of ${this.order.rows} rows${d.length ? ` (${d.join(', ')})` : ''}`);
  }

  /** The pairs, in order, prepared ahead. Ends after `epochs`; throws on fatal data errors. */
  async *pairs(): AsyncGenerator<T> {
    const prefetch = Math.max(1, this.options.prefetch ?? 8);
    const slots = new Slots(Math.max(1, this.options.decodeConcurrency ?? defaultDecodeConcurrency()));
    const queue: Array<Promise<Outcome<T>>> = [];
    let closed = false;
    let pumpDone = false;
    let pumpError: unknown;
    let wakeConsumer: (() => void) | undefined;
    let wakeProducer: (() => void) | undefined;
    const signalConsumer = (): void => {
      const w = wakeConsumer;
      wakeConsumer = undefined;
      w?.();
    };
    const signalProducer = (): void => {
      const w = wakeProducer;
      wakeProducer = undefined;
      w?.();
    };
    const start = this.options.start ?? { epoch: 0, index: 0 };
    const onAbort = (): void => {
      closed = true;
      signalProducer();
      signalConsumer();
    };
    this.options.signal?.addEventListener('abort', onAbort, { once: true });

    const pump = async (): Promise<void> => {
      try {
        let from = start.index;
        for (let epoch = start.epoch; !closed; epoch++, from = 0) {
          if (this.ended(epoch, from)) return;
          for (const w of this.order.windows(epoch, from)) {
            if (closed || this.ended(epoch, w.start)) return;
            const results = await this.source.read(w.refs);
            for (let i = 0; i < results.length; i++) {
              const index = w.start + i;
              if (this.ended(epoch, index)) return;
              while (queue.length >= prefetch && !closed) await new Promise<void>((r) => (wakeProducer = r));
              if (closed) return;
              queue.push(this.prepare(results[i]!, epoch, index, slots));
              signalConsumer();
            }
          }
          queue.push(Promise.resolve({ kind: 'epoch-end', epoch, from }));
          signalConsumer();
        }
      } catch (err) {
        pumpError = err;
      } finally {
        pumpDone = true;
        signalConsumer();
      }
    };
    const pumping = pump();

    let pairsThisEpoch = 0;
    try {
      for (;;) {
        if (this.options.signal?.aborted) throw this.options.signal.reason ?? new Error('aborted');
        if (queue.length === 0) {
          if (pumpDone) {
            if (pumpError) throw pumpError;
            break;
          }
          await new Promise<void>((r) => (wakeConsumer = r));
          continue;
        }
        const out = await queue.shift()!;
        signalProducer();
        switch (out.kind) {
          case 'fatal':
            throw out.error;
          case 'epoch-end':
            // A whole epoch without a pair: nothing will ever come (a resumed partial epoch may be empty).
            if (pairsThisEpoch === 0 && out.from === 0) throw this.corruptError(true) ?? this.noPairsError(out.epoch);
            pairsThisEpoch = 0;
            break;
          case 'dropped':
            this.statsData.rows++;
            this.statsData.dropped[out.reason] = (this.statsData.dropped[out.reason] ?? 0) + 1;
            break;
          case 'corrupt': {
            this.statsData.rows++;
            this.statsData.corrupt++;
            for (const e of out.examples) if (this.statsData.corruptExamples.length < MAX_EXAMPLES) this.statsData.corruptExamples.push(e);
            const err = this.corruptError(false);
            if (err) throw err;
            break;
          }
          case 'pair':
            this.statsData.rows++;
            this.statsData.pairs++;
            pairsThisEpoch++;
            yield out.item;
            break;
        }
      }
      const err = this.corruptError(true);
      if (err) throw err;
      if (this.statsData.pairs === 0 && this.statsData.rows > 0) throw this.noPairsError(start.epoch);
    } finally {
      closed = true;
      signalProducer();
      this.options.signal?.removeEventListener('abort', onAbort);
      await pumping;
      // Let in-flight decodes settle so no work outlives the iterator.
      await Promise.all(queue.splice(0));
    }
  }

  /** Groups pairs into batches of `size`; the last batch may be smaller unless `dropLast`. */
  async *batches(size: number, options: { dropLast?: boolean } = {}): AsyncGenerator<{ pairs: T[]; position: DataPosition }> {
    if (!Number.isInteger(size) || size < 1) throw dataError(`batch size ${size} must be a positive integer`);
    let batch: T[] = [];
    for await (const p of this.pairs()) {
      batch.push(p);
      if (batch.length === size) {
        yield { pairs: batch, position: p.position };
        batch = [];
      }
    }
    if (batch.length && !options.dropLast) yield { pairs: batch, position: batch[batch.length - 1]!.position };
  }
}

/** Image pairs as the native step takes them: rows [w_0..w_{P-1}, l_0..l_{P-1}]. */
export interface ImageBatch {
  prompts: string[];
  /** [2P, 3, res, res] */
  images: Float32Array;
  /** [P, 6] SDXL time ids of each pair (its chosen image's; see image.ts) */
  timeIds: Float32Array;
  /** [2P, 6] time ids of every row */
  rowTimeIds: Float32Array;
  position: DataPosition;
}

export function stackImageBatch(pairs: readonly PreparedPair[]): ImageBatch {
  const P = pairs.length;
  if (P === 0) throw dataError('cannot stack an empty batch');
  const size = pairs[0]!.chosen.pixels.length;
  const images = new Float32Array(2 * P * size);
  const timeIds = new Float32Array(P * 6);
  const rowTimeIds = new Float32Array(2 * P * 6);
  pairs.forEach((p, i) => {
    if (p.chosen.pixels.length !== size || p.rejected.pixels.length !== size) throw dataError('pairs of one batch must have one resolution');
    images.set(p.chosen.pixels, i * size);
    images.set(p.rejected.pixels, (P + i) * size);
    timeIds.set(p.chosen.timeIds, i * 6);
    rowTimeIds.set(p.chosen.timeIds, i * 6);
    rowTimeIds.set(p.rejected.timeIds, (P + i) * 6);
  });
  return { prompts: pairs.map((p) => p.prompt), images, timeIds, rowTimeIds, position: pairs[P - 1]!.position };
}

/** Cached pairs as the native step takes them. */
export interface EncodedBatch {
  prompts: string[];
  /** [P, C, H, W] each */
  x0w: Float32Array;
  x0l: Float32Array;
  /** [P, tokens, dim] */
  encoderHiddenStates: Float32Array;
  /** SDXL: [P, pooled], [P, 6] */
  textEmbeds?: Float32Array;
  timeIds?: Float32Array;
  position: DataPosition;
}

export function stackEncodedBatch(pairs: readonly PositionedEncodedPair[]): EncodedBatch {
  const P = pairs.length;
  if (P === 0) throw dataError('cannot stack an empty batch');
  const stack = (get: (p: PositionedEncodedPair) => Float32Array | undefined): Float32Array | undefined => {
    const first = get(pairs[0]!);
    if (!first) return undefined;
    const out = new Float32Array(P * first.length);
    pairs.forEach((p, i) => out.set(get(p)!, i * first.length));
    return out;
  };
  const b: EncodedBatch = {
    prompts: pairs.map((p) => p.prompt),
    x0w: stack((p) => p.chosen)!,
    x0l: stack((p) => p.rejected)!,
    encoderHiddenStates: stack((p) => p.encoderHiddenStates)!,
    position: pairs[P - 1]!.position,
  };
  const te = stack((p) => p.textEmbeds);
  const ti = stack((p) => p.chosenTimeIds);
  if (te) b.textEmbeds = te;
  if (ti) b.timeIds = ti;
  return b;
}
