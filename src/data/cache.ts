// The encode cache: preference pairs with the VAE latents and text conditioning already computed, so training can
// skip the VAE and the text encoders. `ncp-native encode` writes it; `--data <folder>` reads it.
//
// Layout (version 1):
//   <dir>/cache.json          the manifest, written last (atomically): a folder without it is not a cache
//   <dir>/shard-00000.safetensors, shard-00001.safetensors, ...
//
// cache.json:
//   {
//     "format": "ncp-encode-cache", "version": 1,
//     "model": "<model folder the encoders came from>", "model_kind": "sd15" | "sdxl",
//     "resolution": 512,                      image side before the VAE
//     "latent_shape": [4, 64, 64],            [C, H, W] of one latent, already times the VAE scaling_factor
//     "text_shape": [77, 768],                [tokens, dim] of encoder_hidden_states
//     "pooled_dim": 1280 | null,              SDXL pooled text embeds
//     "dtype": "F16" | "F32",                 storage dtype of the float tensors
//     "pairs": 1234,                          sum of the shards' pairs
//     "augment": { "center_crop": true, "random_flip": false },   how the images were prepared
//     "source": { "data": "<path>", "kind": "parquet-folder" },    what was encoded (informative)
//     "shards": [ { "file": "shard-00000.safetensors", "pairs": 1024 }, ... ]
//   }
//
// A shard of n pairs holds, with the pair index as the first dimension:
//   latent_w [n, C, H, W], latent_l [n, C, H, W], encoder_hidden_states [n, tokens, dim],
//   SDXL also: text_embeds [n, pooled_dim], time_ids_w [n, 6], time_ids_l [n, 6] (always F32);
//   metadata "prompts": JSON array of the n prompts, "rows": JSON array of n "<source file>#<row>" strings.
// Each pair is read with a few positioned reads (one row of each tensor), so epochs can be full permutations.
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describeFsError } from '../errors.js';
import { writeFileAtomic } from '../atomic-fs.js';
import { fromFloat32, numel, readHeader, readTensorBytes, serializeSafetensors, toFloat32, type SafetensorsHeader, type StoredTensor } from '../safetensors.js';
import { dataError, type PairCounts, type PairSource, type RowRef } from './source.js';
import type { EncodedPair, RowResult } from './types.js';

export const CACHE_MANIFEST = 'cache.json';
export const CACHE_FORMAT = 'ncp-encode-cache';
export const CACHE_VERSION = 1;

export interface CacheManifest {
  format: typeof CACHE_FORMAT;
  version: typeof CACHE_VERSION;
  model: string;
  model_kind: 'sd15' | 'sdxl';
  resolution: number;
  latent_shape: [number, number, number];
  text_shape: [number, number];
  pooled_dim: number | null;
  dtype: 'F16' | 'F32';
  pairs: number;
  augment: { center_crop: boolean; random_flip: boolean };
  source: { data: string; kind: string };
  shards: Array<{ file: string; pairs: number }>;
}

/** The manifest fields a writer chooses (the rest it fills in). */
export type CacheSpec = Omit<CacheManifest, 'format' | 'version' | 'pairs' | 'shards'>;

function isPosInt(v: unknown): v is number {
  return Number.isInteger(v) && (v as number) > 0;
}

/** Reads and validates `<dir>/cache.json`; every message names the file and the field. */
export async function readCacheManifest(dir: string): Promise<CacheManifest> {
  const path = join(dir, CACHE_MANIFEST);
  let m: Record<string, unknown>;
  try {
    m = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw dataError(`${path}: ${err instanceof SyntaxError ? `not JSON (${err.message})` : describeFsError(err)}`, err);
  }
  const bad = (field: string, want: string): never => {
    throw dataError(`${path}: field '${field}' is ${JSON.stringify(m[field])}; expected ${want}`);
  };
  if (m['format'] !== CACHE_FORMAT) bad('format', JSON.stringify(CACHE_FORMAT));
  if (m['version'] !== CACHE_VERSION) bad('version', String(CACHE_VERSION));
  if (m['model_kind'] !== 'sd15' && m['model_kind'] !== 'sdxl') bad('model_kind', '"sd15" or "sdxl"');
  if (!isPosInt(m['resolution'])) bad('resolution', 'a positive integer');
  const ls = m['latent_shape'];
  if (!Array.isArray(ls) || ls.length !== 3 || !ls.every(isPosInt)) bad('latent_shape', '[C, H, W] positive integers');
  const ts = m['text_shape'];
  if (!Array.isArray(ts) || ts.length !== 2 || !ts.every(isPosInt)) bad('text_shape', '[tokens, dim] positive integers');
  if (m['pooled_dim'] !== null && !isPosInt(m['pooled_dim'])) bad('pooled_dim', 'a positive integer or null');
  if (m['model_kind'] === 'sdxl' && m['pooled_dim'] === null) bad('pooled_dim', 'a positive integer for an SDXL cache');
  if (m['dtype'] !== 'F16' && m['dtype'] !== 'F32') bad('dtype', '"F16" or "F32"');
  const shards = m['shards'];
  if (!Array.isArray(shards) || shards.length === 0) bad('shards', 'a non-empty list of {file, pairs}');
  let sum = 0;
  (shards as unknown[]).forEach((s, i) => {
    const o = s as { file?: unknown; pairs?: unknown };
    if (!o || typeof o.file !== 'string' || o.file.includes('/') || o.file.includes('\\') || !isPosInt(o.pairs))
      throw dataError(`${path}: shards[${i}] is ${JSON.stringify(s)}; expected {"file": "<name in the folder>", "pairs": n > 0}`);
    sum += o.pairs;
  });
  if (m['pairs'] !== sum) bad('pairs', `the sum of the shards' pairs (${sum})`);
  return m as unknown as CacheManifest;
}

interface ShardState {
  path: string;
  header: SafetensorsHeader;
  prompts: string[];
  rows: string[];
}

export class CachePairSource implements PairSource<EncodedPair> {
  readonly kind = 'cache' as const;
  readonly randomAccess = true;
  readonly blockRows: number[];
  private readonly shardCache = new Map<number, ShardState>();

  private constructor(
    readonly path: string,
    readonly manifest: CacheManifest,
  ) {
    this.blockRows = manifest.shards.map((s) => s.pairs);
  }

  static async open(dir: string): Promise<CachePairSource> {
    const manifest = await readCacheManifest(dir);
    const src = new CachePairSource(dir, manifest);
    // Check every shard's header now: a missing or truncated shard should fail before training starts.
    for (let i = 0; i < manifest.shards.length; i++) await src.shard(i, true);
    src.shardCache.clear();
    return src;
  }

  private expected(): Record<string, number[]> {
    const m = this.manifest;
    const e: Record<string, number[]> = { latent_w: m.latent_shape, latent_l: m.latent_shape, encoder_hidden_states: m.text_shape };
    if (m.pooled_dim !== null) {
      e['text_embeds'] = [m.pooled_dim];
      e['time_ids_w'] = [6];
      e['time_ids_l'] = [6];
    }
    return e;
  }

  private async shard(i: number, check = false): Promise<ShardState> {
    let s = this.shardCache.get(i);
    if (s) return s;
    const entry = this.manifest.shards[i]!;
    const path = join(this.path, entry.file);
    const header = await readHeader(path).catch((err) => {
      throw dataError(`encode cache ${this.path}: shard ${entry.file}: ${(err as Error).message}`, err);
    });
    if (check) {
      for (const [name, shape] of Object.entries(this.expected())) {
        const t = header.tensors.get(name);
        const want = [entry.pairs, ...shape];
        if (!t) throw dataError(`encode cache ${path}: tensor ${name} is missing`);
        if (t.shape.length !== want.length || t.shape.some((d, k) => d !== want[k]))
          throw dataError(`encode cache ${path}: tensor ${name} has shape [${t.shape.join(', ')}], expected [${want.join(', ')}]`);
      }
    }
    let prompts: unknown;
    let rows: unknown;
    try {
      prompts = JSON.parse(header.metadata['prompts'] ?? 'null');
      rows = JSON.parse(header.metadata['rows'] ?? '[]');
    } catch {
      prompts = null;
    }
    if (!Array.isArray(prompts) || prompts.length !== entry.pairs || !prompts.every((p) => typeof p === 'string'))
      throw dataError(`encode cache ${path}: metadata 'prompts' must be a JSON array of ${entry.pairs} strings`);
    s = { path, header, prompts: prompts as string[], rows: Array.isArray(rows) ? (rows as string[]) : [] };
    this.shardCache.set(i, s);
    while (this.shardCache.size > 4) this.shardCache.delete(this.shardCache.keys().next().value!);
    return s;
  }

  private async row(s: ShardState, name: string, row: number): Promise<Float32Array | undefined> {
    const info = s.header.tensors.get(name);
    if (!info) return undefined;
    const bytes = await readTensorBytes(s.path, info, row, row + 1);
    return toFloat32(bytes, info.dtype);
  }

  async read(refs: readonly RowRef[]): Promise<Array<RowResult<EncodedPair>>> {
    const out: Array<RowResult<EncodedPair>> = [];
    for (const ref of refs) {
      const s = await this.shard(ref.block);
      const [w, l, ctx, pooled, tw, tl] = await Promise.all(
        ['latent_w', 'latent_l', 'encoder_hidden_states', 'text_embeds', 'time_ids_w', 'time_ids_l'].map((n) => this.row(s, n, ref.row)),
      );
      const pair: EncodedPair = {
        prompt: s.prompts[ref.row]!,
        chosen: w!,
        rejected: l!,
        encoderHiddenStates: ctx!,
        meta: { source: s.path, row: ref.row },
      };
      if (pooled) pair.textEmbeds = pooled;
      if (tw) pair.chosenTimeIds = tw;
      if (tl) pair.rejectedTimeIds = tl;
      out.push({ pair });
    }
    return out;
  }

  async count(): Promise<PairCounts> {
    return { rows: this.manifest.pairs, pairs: this.manifest.pairs, dropped: {} };
  }

  describe(): string {
    const m = this.manifest;
    return `encode cache ${this.path}: ${m.pairs} pairs in ${m.shards.length} shards (${m.model_kind}, ${m.resolution}px, latents [${m.latent_shape.join(', ')}], ${m.dtype})`;
  }

  async close(): Promise<void> {
    this.shardCache.clear();
  }
}

/** Writes an encode cache: pairs are buffered into shards of `shardPairs`; finish() writes the manifest last. */
export class CacheWriter {
  private buffer: EncodedPair[] = [];
  private readonly shards: Array<{ file: string; pairs: number }> = [];
  private pairs = 0;

  constructor(
    readonly dir: string,
    readonly spec: CacheSpec,
    readonly shardPairs = 256,
  ) {
    if (!isPosInt(shardPairs)) throw dataError(`encode cache: shard size ${shardPairs} must be a positive integer`);
  }

  async add(pair: EncodedPair): Promise<void> {
    const s = this.spec;
    const check = (name: string, v: Float32Array | undefined, n: number): void => {
      if (!v || v.length !== n) throw dataError(`encode cache: pair ${this.pairs + this.buffer.length} (${pair.meta.source}#${pair.meta.row}): ${name} has ${v?.length ?? 'no'} values, expected ${n}`);
    };
    check('chosen latent', pair.chosen, numel(s.latent_shape));
    check('rejected latent', pair.rejected, numel(s.latent_shape));
    check('encoder_hidden_states', pair.encoderHiddenStates, numel(s.text_shape));
    if (s.pooled_dim !== null) {
      check('text_embeds', pair.textEmbeds, s.pooled_dim);
      check('chosen time_ids', pair.chosenTimeIds, 6);
      check('rejected time_ids', pair.rejectedTimeIds, 6);
    }
    this.buffer.push(pair);
    if (this.buffer.length >= this.shardPairs) await this.flush();
  }

  private async flush(): Promise<void> {
    if (this.buffer.length === 0) return;
    const n = this.buffer.length;
    const s = this.spec;
    const stack = (get: (p: EncodedPair) => Float32Array, size: number): Float32Array => {
      const out = new Float32Array(n * size);
      this.buffer.forEach((p, i) => out.set(get(p), i * size));
      return out;
    };
    const float = (v: Float32Array, shape: number[]): StoredTensor => ({ dtype: s.dtype, shape, bytes: fromFloat32(v, s.dtype) });
    const tensors = new Map<string, StoredTensor | { shape: number[]; data: Float32Array }>();
    const ls = numel(s.latent_shape);
    const tsz = numel(s.text_shape);
    tensors.set('latent_w', float(stack((p) => p.chosen, ls), [n, ...s.latent_shape]));
    tensors.set('latent_l', float(stack((p) => p.rejected, ls), [n, ...s.latent_shape]));
    tensors.set('encoder_hidden_states', float(stack((p) => p.encoderHiddenStates, tsz), [n, ...s.text_shape]));
    if (s.pooled_dim !== null) {
      tensors.set('text_embeds', float(stack((p) => p.textEmbeds!, s.pooled_dim), [n, s.pooled_dim]));
      tensors.set('time_ids_w', { shape: [n, 6], data: stack((p) => p.chosenTimeIds!, 6) });
      tensors.set('time_ids_l', { shape: [n, 6], data: stack((p) => p.rejectedTimeIds!, 6) });
    }
    const file = `shard-${String(this.shards.length).padStart(5, '0')}.safetensors`;
    await mkdir(this.dir, { recursive: true });
    await writeFileAtomic(
      join(this.dir, file),
      serializeSafetensors(tensors, {
        prompts: JSON.stringify(this.buffer.map((p) => p.prompt)),
        rows: JSON.stringify(this.buffer.map((p) => `${p.meta.source}#${p.meta.row}`)),
      }),
    );
    this.shards.push({ file, pairs: n });
    this.pairs += n;
    this.buffer = [];
  }

  /** Flushes the last shard and writes cache.json; returns the manifest. */
  async finish(): Promise<CacheManifest> {
    await this.flush();
    if (this.pairs === 0) throw dataError(`encode cache ${this.dir}: no pairs were added`);
    const manifest: CacheManifest = { format: CACHE_FORMAT, version: CACHE_VERSION, ...this.spec, pairs: this.pairs, shards: this.shards };
    await writeFileAtomic(join(this.dir, CACHE_MANIFEST), JSON.stringify(manifest, null, 2) + '\n');
    return manifest;
  }
}

/** True when `dir` has a cache manifest. */
export async function isCacheDir(dir: string): Promise<boolean> {
  try {
    return (await stat(join(dir, CACHE_MANIFEST))).isFile();
  } catch {
    return false;
  }
}
