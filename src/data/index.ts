// Datasets for `train --data PATH`: what PATH is, and a reader for it.
//
//   a .parquet file (or any file starting with the parquet magic)   -> Pick-a-Pic parquet (parquet.ts)
//   a folder with *.parquet files                                    -> those shards, in name order
//   a .jsonl / .ndjson file (or a file whose first line is a JSON object) -> JSONL pairs (jsonl.ts)
//   a folder with cache.json                                         -> an encode cache (cache.ts)
import { open, readdir, stat } from 'node:fs/promises';
import { extname, join, resolve } from 'node:path';
import { describeFsError } from '../errors.js';
import { CachePairSource, isCacheDir } from './cache.js';
import { JsonlPairSource } from './jsonl.js';
import { ParquetPairSource, parquetShards } from './parquet.js';
import { dataError, type DatasetKind, type PairSource } from './source.js';
import type { EncodedPair, PreferencePair } from './types.js';

export * from './types.js';
export * from './source.js';
export { CachePairSource, CacheWriter, readCacheManifest, CACHE_MANIFEST, type CacheManifest, type CacheSpec } from './cache.js';
export { JsonlPairSource } from './jsonl.js';
export { ParquetPairSource, type ParquetOptions } from './parquet.js';
export { prepareImage, resizedSize, ImageError, type ImageOptions, type PreparedImage } from './image.js';
export { EpochOrder, STREAM_ORDER, STREAM_AUGMENT } from './order.js';
export { PairLoader, stackImageBatch, stackEncodedBatch, type LoaderOptions, type LoaderStats, type PreparedPair, type PositionedEncodedPair, type ImageBatch, type EncodedBatch } from './loader.js';
export { WinnerTracker } from './winners.js';

export interface DetectedDataset {
  kind: DatasetKind;
  path: string;
  /** parquet: the files */
  files: string[];
}

const ACCEPTED = 'a Pick-a-Pic .parquet file, a folder of .parquet shards, a .jsonl file of {"prompt", "chosen", "rejected"} or an encode-cache folder (with cache.json)';

async function head(path: string, n: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(n);
    const { bytesRead } = await fh.read(buf, 0, n, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** Says what `path` is, or throws NCP_EDATA naming it and what is accepted. */
export async function detectDataset(path: string): Promise<DetectedDataset> {
  const abs = resolve(path);
  let s;
  try {
    s = await stat(abs);
  } catch (err) {
    throw dataError(`--data ${path}: ${describeFsError(err)}`, err);
  }
  if (s.isDirectory()) {
    if (await isCacheDir(abs)) return { kind: 'cache', path: abs, files: [] };
    const shards = await parquetShards(abs);
    if (shards.length) return { kind: 'parquet-folder', path: abs, files: shards };
    // Point at nested shards (a Hugging Face dataset clone keeps them under data/), without mixing splits.
    const nested: string[] = [];
    for (const name of (await readdir(abs)).sort()) {
      const sub = join(abs, name);
      if ((await stat(sub).catch(() => undefined))?.isDirectory() && (await parquetShards(sub).catch(() => [])).length) nested.push(sub);
    }
    throw dataError(`--data ${path}: the folder has no .parquet files and no cache.json${nested.length ? ` (parquet shards are in ${nested.join(', ')}: pass that folder)` : ''}; expected ${ACCEPTED}`);
  }
  if (!s.isFile()) throw dataError(`--data ${path}: not a file or folder; expected ${ACCEPTED}`);
  let first: Buffer;
  try {
    first = await head(abs, 4096);
  } catch (err) {
    throw dataError(`--data ${path}: ${describeFsError(err)}`, err);
  }
  const ext = extname(abs).toLowerCase();
  const magic = first.subarray(0, 4).toString('latin1') === 'PAR1';
  if (ext === '.parquet' || magic) {
    if (!magic) throw dataError(`--data ${path}: not a parquet file (it does not start with the parquet magic 'PAR1')`);
    return { kind: 'parquet-file', path: abs, files: [abs] };
  }
  const text = first.toString('utf8').replace(/^\uFEFF/, '').trimStart();
  if (['.jsonl', '.ndjson', '.json'].includes(ext) || text.startsWith('{')) {
    if (!text.startsWith('{')) throw dataError(`--data ${path}: not a JSON Lines file (the first line is not a JSON object); expected one {"prompt", "chosen", "rejected"} object per line`);
    return { kind: 'jsonl', path: abs, files: [abs] };
  }
  throw dataError(`--data ${path}: unrecognised file (not parquet, not JSON Lines); expected ${ACCEPTED}`);
}

export interface OpenDatasetOptions {
  absoluteWinners?: boolean;
}

export type AnySource = PairSource<PreferencePair> | PairSource<EncodedPair>;

/** Detects and opens a dataset. The absolute-winners filter applies to parquet data only. */
export async function openDataset(path: string, options: OpenDatasetOptions = {}): Promise<AnySource> {
  const d = await detectDataset(path);
  if (options.absoluteWinners && !d.kind.startsWith('parquet'))
    throw dataError(`--absolute-winners needs Pick-a-Pic parquet data (labels and image ids); --data ${path} is ${d.kind === 'jsonl' ? 'a JSONL file' : 'an encode cache'}`);
  switch (d.kind) {
    case 'parquet-file':
    case 'parquet-folder':
      return ParquetPairSource.open(d.path, d.kind, d.files, { absoluteWinners: options.absoluteWinners });
    case 'jsonl':
      return JsonlPairSource.open(d.path);
    case 'cache':
      return CachePairSource.open(d.path);
  }
}
