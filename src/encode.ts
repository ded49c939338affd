// `ncp-native encode`: streams a dataset through the PairEncoder into an encode cache (data/cache.ts), so training
// skips the VAE and the text encoders.
//
// A cache fixes the augmentation: every image is centre-cropped and never flipped (random crops and flips would be
// drawn once and then repeated every epoch, which is not augmentation), and each latent is one fixed sample of the
// VAE posterior. Train from the images when you want random crops or flips.
//
// Atomic: the cache is written into a temporary sibling folder and renamed to --out at the end (writeDirAtomic), so
// an interrupted encode leaves no folder at --out that looks like a cache (at most a '.<name>.tmp-*' sibling).
import { readdir, stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { writeDirAtomic } from './atomic-fs.js';
import { CodedError } from './errors.js';
import { CacheWriter, detectDataset, openDataset, PairLoader, stackImageBatch, type CacheManifest, type LoaderStats, type PreparedPair } from './data/index.js';
import { PairEncoder } from './pipeline.js';
import { Rng } from './rng.js';

/** Stream id of the VAE-sample seeds (data/order.ts uses 1 and 2 for the order and the augmentation). */
const STREAM_VAE_SAMPLE = 3;

/** The VAE-sample seed of the `index`-th batch of an encode with `seed` (so a cache can be re-derived on the fly). */
export function encodeBatchSeed(seed: number, index: number): number {
  return Rng.derive(seed, STREAM_VAE_SAMPLE, index).nextUint32();
}

export interface EncodeOptions {
  model: string;
  data: string;
  out: string;
  /** image side (default: the model's, PairEncoder.resolution) */
  resolution?: number;
  /** pairs per VAE / text-encoder pass (default 4) */
  batch?: number;
  variant?: string;
  /** stop after this many pairs */
  maxPairs?: number;
  /** seeds the VAE samples (default 0) */
  seed?: number;
  /** storage dtype of the latents and text conditioning (default F16; time_ids are always F32) */
  dtype?: 'F16' | 'F32';
  /** pairs per shard file (default 256) */
  shardPairs?: number;
  /** default 0.05, as training */
  maxCorruptFraction?: number;
  absoluteWinners?: boolean;
  /** replace an existing non-empty --out (default: refuse) */
  overwrite?: boolean;
  vaeSlice?: number;
  signal?: AbortSignal;
  /** called after each batch is encoded */
  onProgress?: (p: EncodeProgress) => void;
}

export interface EncodeProgress {
  pairs: number;
  /** usable pairs expected (from the label pass), capped by maxPairs */
  total: number;
  stats: LoaderStats;
  /** since the first batch was requested */
  seconds: number;
}

export interface EncodeReport {
  out: string;
  manifest: CacheManifest;
  stats: LoaderStats;
  seconds: number;
}

function usage(message: string): CodedError {
  return new CodedError('NCP_EINVAL', message);
}

async function checkOut(out: string, overwrite: boolean): Promise<void> {
  const s = await stat(out).catch(() => undefined);
  if (!s) return;
  if (!s.isDirectory()) throw new CodedError('NCP_EWRITE', `--out ${out} exists and is not a folder`);
  if (!overwrite && (await readdir(out)).length > 0)
    throw new CodedError('NCP_EWRITE', `--out ${out} exists and is not empty; pass --overwrite to replace it (the old folder is removed only once the new cache is complete)`);
}

export async function encodeDataset(o: EncodeOptions): Promise<EncodeReport> {
  const start = performance.now();
  const batch = o.batch ?? 4;
  if (!Number.isInteger(batch) || batch < 1) throw usage(`--batch ${batch} must be a positive integer`);
  if (o.maxPairs !== undefined && (!Number.isInteger(o.maxPairs) || o.maxPairs < 1)) throw usage(`--max-pairs ${o.maxPairs} must be a positive integer`);
  const seed = o.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) throw usage(`--seed ${seed} must be a whole number >= 0`);
  if (o.resolution !== undefined && (!Number.isInteger(o.resolution) || o.resolution < 8 || o.resolution % 8 !== 0))
    throw usage(`--resolution ${o.resolution} must be a positive multiple of 8`);

  const detected = await detectDataset(o.data);
  if (detected.kind === 'cache') throw new CodedError('NCP_EDATA', `--data ${o.data} is already an encode cache; encode reads images (Pick-a-Pic parquet or JSONL)`);
  const out = resolve(o.out);
  if (out === detected.path) throw usage(`--out ${o.out} is the --data path`);
  await checkOut(out, o.overwrite ?? false);

  const encoder = await PairEncoder.load(o.model, { variant: o.variant, vaeSlice: o.vaeSlice });
  const resolution = o.resolution ?? encoder.resolution;
  if (resolution % encoder.downscale !== 0 || resolution % 8 !== 0)
    throw usage(`--resolution ${resolution} must be a multiple of 8 and of the VAE's downscale ${encoder.downscale}`);

  const source = await openDataset(o.data, { absoluteWinners: o.absoluteWinners });
  try {
    const limit = o.maxPairs ?? Infinity;
    // For the progress line only: the label pass counts pairs whose images may still turn out unusable.
    const total = Math.min((await source.count()).pairs, limit);
    const loader = new PairLoader<PreparedPair>(source, {
      seed,
      shuffle: false,
      epochs: 1,
      image: { resolution, centerCrop: true, randomFlip: false },
      maxCorruptFraction: o.maxCorruptFraction,
      signal: o.signal,
    });
    let manifest: CacheManifest | undefined;
    await writeDirAtomic(out, async (tmp) => {
      const writer = new CacheWriter(
        tmp,
        {
          model: resolve(o.model),
          model_kind: encoder.sdxl ? 'sdxl' : 'sd15',
          resolution,
          latent_shape: encoder.latentShape(resolution),
          text_shape: encoder.textShape,
          pooled_dim: encoder.pooledDim,
          dtype: o.dtype ?? 'F16',
          augment: { center_crop: true, random_flip: false },
          source: { data: detected.path, kind: detected.kind },
        },
        o.shardPairs,
      );
      let done = 0;
      let index = 0;
      const began = performance.now(); // rates exclude loading the model
      for await (const b of loader.batches(batch)) {
        const pairs = b.pairs.slice(0, limit - done);
        const stacked = stackImageBatch(pairs);
        const enc = await encoder.encodeBatch(stacked, encodeBatchSeed(seed, index++));
        const P = pairs.length;
        const row = (t: { data: Float32Array }, i: number, n: number): Float32Array => t.data.subarray(i * (t.data.length / n), (i + 1) * (t.data.length / n));
        for (let i = 0; i < P; i++) {
          const p = pairs[i]!;
          await writer.add({
            prompt: p.prompt,
            chosen: row(enc.x0_w, i, P),
            rejected: row(enc.x0_l, i, P),
            encoderHiddenStates: row(enc.encoder_hidden_states, i, P),
            ...(encoder.sdxl
              ? { textEmbeds: row(enc.text_embeds!, i, P), chosenTimeIds: stacked.rowTimeIds.subarray(i * 6, i * 6 + 6), rejectedTimeIds: stacked.rowTimeIds.subarray((P + i) * 6, (P + i) * 6 + 6) }
              : {}),
            meta: p.meta,
          });
        }
        done += P;
        o.onProgress?.({ pairs: done, total, stats: loader.stats(), seconds: (performance.now() - began) / 1000 });
        if (o.signal?.aborted) throw o.signal.reason ?? new Error('aborted');
        if (done >= limit) break;
      }
      manifest = await writer.finish();
    });
    return { out, manifest: manifest!, stats: loader.stats(), seconds: (performance.now() - start) / 1000 };
  } finally {
    await source.close();
  }
}

/** One line for the end of an encode: what was written and what was skipped. */
export function formatEncodeReport(r: EncodeReport): string {
  const m = r.manifest;
  const s = r.stats;
  const skipped = Object.entries(s.dropped).map(([k, v]) => `${v} ${k === 'tie' ? 'ties' : k.replace('_', ' ')}`);
  if (s.corrupt) skipped.push(`${s.corrupt} with an unusable image`);
  const lines = [
    `wrote ${m.pairs} pairs in ${m.shards.length} shard${m.shards.length === 1 ? '' : 's'} to ${r.out} in ${r.seconds.toFixed(1)} s ` +
      `(${m.model_kind}, ${m.resolution}px centre crop, no flip; latents [${m.latent_shape.join(', ')}], text [${m.text_shape.join(', ')}]${m.pooled_dim !== null ? `, pooled ${m.pooled_dim}` : ''}, ${m.dtype})`,
  ];
  if (skipped.length) lines.push(`skipped ${skipped.join(', ')} of ${s.rows} rows read`);
  for (const e of s.corruptExamples) lines.push(`  unusable image: ${e.source} row ${e.row} (${e.image}): ${e.reason}`);
  return lines.join('\n');
}

/** The progress line (stderr, TTY only). */
export function formatEncodeProgress(p: EncodeProgress): string {
  const rate = p.pairs / Math.max(p.seconds, 1e-9);
  const eta = rate > 0 && p.total > p.pairs ? ` eta ${Math.round((p.total - p.pairs) / rate)} s` : '';
  const bad = p.stats.corrupt ? `, ${p.stats.corrupt} unusable` : '';
  return `encode: ${p.pairs}/${p.total} pairs (${((100 * p.pairs) / Math.max(p.total, 1)).toFixed(0)}%)${bad}, ${rate.toFixed(2)} pairs/s${eta}`;
}
