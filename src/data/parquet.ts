// Pick-a-Pic v2 parquet shards (one file, or a folder of *.parquet files read in name order), streamed by row group.
//
// Columns: `caption` (string), `jpg_0`, `jpg_1` (encoded images: binary, or a struct with a `bytes` field as
// Hugging Face's Image feature stores them), `label_0` (1: image 0 preferred, 0: image 1 preferred, 0.5: tie,
// dropped), optional `label_1`, `image_0_uid`, `image_1_uid`. Image bytes are read with hyparquet's utf8 decoding
// off so they stay bytes; a caption stored as unannotated binary is decoded as UTF-8 here.
//
// Memory: a read loads the needed columns of the row groups it touches, so the peak is about one row group of images
// (times the loader's `mixBlocks`); when a file carries an offset index only the pages of the requested rows are
// read. File metadata is kept for the two most recent files only (footers can hold large binary statistics).
import { open, readdir, stat } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { parquetMetadataAsync, parquetRead, parquetSchema, type AsyncBuffer, type FileMetaData } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { describeFsError } from '../errors.js';
import { dataError, type DatasetKind, type PairCounts, type PairSource, type RowRef } from './source.js';
import type { PreferencePair, RowResult } from './types.js';
import { RowBits, WinnerTracker } from './winners.js';

const REQUIRED = ['caption', 'jpg_0', 'jpg_1', 'label_0'] as const;

/** positioned reads through one file handle per slice (files are many; descriptors are not kept open) */
function fileBuffer(path: string, size: number): AsyncBuffer {
  return {
    byteLength: size,
    async slice(start: number, end?: number): Promise<ArrayBuffer> {
      const stop = end ?? size;
      const out = new Uint8Array(stop - start);
      const fh = await open(path, 'r');
      try {
        let off = 0;
        while (off < out.byteLength) {
          const { bytesRead } = await fh.read(out, off, out.byteLength - off, start + off);
          if (bytesRead === 0) throw dataError(`${path}: unexpected end of file at byte ${start + off} (truncated parquet file?)`);
          off += bytesRead;
        }
      } finally {
        await fh.close();
      }
      return out.buffer;
    },
  };
}

interface ShardInfo {
  path: string;
  size: number;
  /** rows of each row group */
  groups: number[];
  hasUids: boolean;
}

interface Block {
  shard: number;
  group: number;
  /** first row of the group in its file */
  start: number;
  rows: number;
}

export interface ParquetOptions {
  /** keep only pairs whose preferred image won all its comparisons (needs a first pass; see winners.ts) */
  absoluteWinners?: boolean;
}

function labelValue(v: unknown): number | undefined {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  if (typeof v === 'boolean') return v ? 1 : 0;
  return undefined;
}

function imageBytes(v: unknown): Uint8Array | undefined {
  if (v instanceof Uint8Array) return v;
  if (v && typeof v === 'object' && (v as { bytes?: unknown }).bytes instanceof Uint8Array) return (v as { bytes: Uint8Array }).bytes;
  return undefined;
}

const utf8 = new TextDecoder('utf-8');

function text(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v instanceof Uint8Array) return utf8.decode(v);
  return undefined;
}

/** A detached copy when `b` views a larger buffer (so a row group's page buffers can be freed). */
function own(b: Uint8Array): Uint8Array {
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength ? b : b.slice();
}

export class ParquetPairSource implements PairSource<PreferencePair> {
  readonly randomAccess = false;
  readonly blockRows: number[];
  private readonly blocks: Block[];
  private keep?: RowBits[];
  private readonly metaCache = new Map<number, FileMetaData>();
  private filterStats?: { images: number; kept: number };

  private constructor(
    readonly kind: DatasetKind,
    readonly path: string,
    private readonly shards: ShardInfo[],
    private readonly options: ParquetOptions,
  ) {
    this.blocks = [];
    shards.forEach((s, shard) => {
      let start = 0;
      s.groups.forEach((rows, group) => {
        if (rows > 0) this.blocks.push({ shard, group, start, rows });
        start += rows;
      });
    });
    this.blockRows = this.blocks.map((b) => b.rows);
  }

  /** Opens a parquet file or a folder of shards, checking each file's footer and columns. */
  static async open(path: string, kind: 'parquet-file' | 'parquet-folder', files: string[], options: ParquetOptions = {}): Promise<ParquetPairSource> {
    const shards: ShardInfo[] = [];
    for (const file of files) {
      let size: number;
      try {
        size = (await stat(file)).size;
      } catch (err) {
        throw dataError(`${file}: ${describeFsError(err)}`, err);
      }
      const meta = await readMeta(file, size);
      const names = new Set(parquetSchema(meta).children.map((c) => c.element.name));
      const missing = REQUIRED.filter((c) => !names.has(c));
      if (missing.length)
        throw dataError(`${file}: missing column${missing.length > 1 ? 's' : ''} ${missing.join(', ')}; a Pick-a-Pic parquet needs ${REQUIRED.join(', ')} (found: ${[...names].join(', ') || 'none'})`);
      shards.push({ path: file, size, groups: meta.row_groups.map((g) => Number(g.num_rows)), hasUids: names.has('image_0_uid') && names.has('image_1_uid') });
    }
    const src = new ParquetPairSource(kind, path, shards, options);
    if (options.absoluteWinners) await src.buildWinnerFilter();
    return src;
  }

  private async meta(shard: number): Promise<FileMetaData> {
    let m = this.metaCache.get(shard);
    if (!m) {
      const s = this.shards[shard]!;
      m = await readMeta(s.path, s.size);
      this.metaCache.set(shard, m);
      while (this.metaCache.size > 2) this.metaCache.delete(this.metaCache.keys().next().value!);
    }
    return m;
  }

  /** Reads `columns` of rows [start, end) of a shard as objects. */
  private async rows(shard: number, columns: string[], start: number, end: number): Promise<Array<Record<string, unknown>>> {
    const s = this.shards[shard]!;
    const metadata = await this.meta(shard);
    let out: Array<Record<string, unknown>> = [];
    try {
      await parquetRead({
        file: fileBuffer(s.path, s.size),
        metadata,
        columns,
        rowStart: start,
        rowEnd: end,
        rowFormat: 'object',
        utf8: false,
        compressors,
        useOffsetIndex: true,
        onComplete: (r) => {
          out = r;
        },
      });
    } catch (err) {
      if ((err as { code?: string }).code === 'NCP_EDATA') throw err;
      throw dataError(`${s.path}: cannot read rows ${start}..${end} (${(err as Error).message})`, err);
    }
    return out;
  }

  /** Pass 1 over labels and ids for the absolute-winners filter; pass 2 marks the kept rows. */
  private async buildWinnerFilter(): Promise<void> {
    const tracker = new WinnerTracker();
    const ids = async (shard: number, f: (id0: string, id1: string, label: number, row: number) => void): Promise<void> => {
      const s = this.shards[shard]!;
      let start = 0;
      for (const rows of s.groups) {
        const cols = s.hasUids ? ['image_0_uid', 'image_1_uid', 'label_0'] : ['jpg_0', 'jpg_1', 'label_0'];
        const data = await this.rows(shard, cols, start, start + rows);
        data.forEach((r, i) => {
          const label = labelValue(r['label_0']);
          if (label === undefined) return;
          const id = (v: unknown): string | undefined => {
            if (s.hasUids) return text(v);
            const b = imageBytes(v);
            return b ? createHash('sha1').update(b).digest('hex') : undefined;
          };
          const id0 = id(s.hasUids ? r['image_0_uid'] : r['jpg_0']);
          const id1 = id(s.hasUids ? r['image_1_uid'] : r['jpg_1']);
          if (id0 !== undefined && id1 !== undefined) f(id0, id1, label, start + i);
        });
        start += rows;
      }
    };
    for (let shard = 0; shard < this.shards.length; shard++) await ids(shard, (a, b, l) => tracker.add(a, b, l));
    this.keep = this.shards.map((s) => new RowBits(s.groups.reduce((a, b) => a + b, 0)));
    let kept = 0;
    for (let shard = 0; shard < this.shards.length; shard++)
      await ids(shard, (a, b, l, row) => {
        if (tracker.keeps(a, b, l)) {
          this.keep![shard]!.set(row);
          kept++;
        }
      });
    this.filterStats = { images: tracker.images, kept };
  }

  private judge(label: number | undefined, shard: number, row: number): 'ok' | 'tie' | 'bad_label' | 'filtered' {
    if (label === 0.5) return 'tie';
    if (label !== 0 && label !== 1) return 'bad_label';
    if (this.keep && !this.keep[shard]!.get(row)) return 'filtered';
    return 'ok';
  }

  async read(refs: readonly RowRef[]): Promise<Array<RowResult<PreferencePair>>> {
    const out = new Array<RowResult<PreferencePair>>(refs.length);
    // Group the requested rows by block; read each block once over the span of rows asked for.
    const byBlock = new Map<number, number[]>();
    refs.forEach((r, i) => {
      const list = byBlock.get(r.block) ?? [];
      list.push(i);
      byBlock.set(r.block, list);
    });
    for (const [blockIndex, idx] of byBlock) {
      const b = this.blocks[blockIndex];
      if (!b) throw dataError(`${this.path}: block ${blockIndex} does not exist`);
      const shard = this.shards[b.shard]!;
      let lo = Infinity;
      let hi = -Infinity;
      for (const i of idx) {
        lo = Math.min(lo, refs[i]!.row);
        hi = Math.max(hi, refs[i]!.row + 1);
      }
      const cols = ['caption', 'jpg_0', 'jpg_1', 'label_0', ...(shard.hasUids ? ['image_0_uid', 'image_1_uid'] : [])];
      const data = await this.rows(b.shard, cols, b.start + lo, b.start + hi);
      for (const i of idx) {
        const rowInBlock = refs[i]!.row;
        const fileRow = b.start + rowInBlock;
        const r = data[rowInBlock - lo];
        if (!r) {
          out[i] = { dropped: 'bad_row', detail: `${shard.path} row ${fileRow}: not returned by the reader` };
          continue;
        }
        const label = labelValue(r['label_0']);
        const verdict = this.judge(label, b.shard, fileRow);
        if (verdict !== 'ok') {
          out[i] = { dropped: verdict, detail: verdict === 'bad_label' ? `${shard.path} row ${fileRow}: label_0 = ${String(r['label_0'])}` : undefined };
          continue;
        }
        const prompt = text(r['caption']);
        const img0 = imageBytes(r['jpg_0']);
        const img1 = imageBytes(r['jpg_1']);
        if (prompt === undefined || !img0 || !img1) {
          const what = prompt === undefined ? 'caption' : !img0 ? 'jpg_0' : 'jpg_1';
          out[i] = { dropped: 'missing_image', detail: `${shard.path} row ${fileRow}: ${what} is empty or not ${what === 'caption' ? 'text' : 'bytes'}` };
          continue;
        }
        const uid0 = shard.hasUids ? text(r['image_0_uid']) : undefined;
        const uid1 = shard.hasUids ? text(r['image_1_uid']) : undefined;
        const first = label === 1;
        out[i] = {
          pair: {
            prompt,
            chosen: own(first ? img0 : img1),
            rejected: own(first ? img1 : img0),
            meta: { source: shard.path, row: fileRow, chosenUid: first ? uid0 : uid1, rejectedUid: first ? uid1 : uid0 },
          },
        };
      }
    }
    return out;
  }

  async count(): Promise<PairCounts> {
    const counts: PairCounts = { rows: 0, pairs: 0, dropped: {} };
    for (let shard = 0; shard < this.shards.length; shard++) {
      let start = 0;
      for (const rows of this.shards[shard]!.groups) {
        const data = await this.rows(shard, ['label_0'], start, start + rows);
        data.forEach((r, i) => {
          counts.rows++;
          const v = this.judge(labelValue(r['label_0']), shard, start + i);
          if (v === 'ok') counts.pairs++;
          else counts.dropped[v] = (counts.dropped[v] ?? 0) + 1;
        });
        start += rows;
      }
    }
    return counts;
  }

  describe(): string {
    const rows = this.blockRows.reduce((a, b) => a + b, 0);
    const what = this.kind === 'parquet-file' ? `parquet file ${this.path}` : `folder of ${this.shards.length} parquet shards ${this.path}`;
    const filter = this.filterStats ? `; absolute winners: ${this.filterStats.kept} pairs kept (${this.filterStats.images} distinct images)` : '';
    return `${what}: ${rows} rows in ${this.blocks.length} row groups${filter}`;
  }

  async close(): Promise<void> {
    this.metaCache.clear();
  }
}

async function readMeta(file: string, size: number): Promise<FileMetaData> {
  try {
    return await parquetMetadataAsync(fileBuffer(file, size));
  } catch (err) {
    if ((err as { code?: string }).code === 'NCP_EDATA') throw err;
    throw dataError(`${file} is not a readable parquet file (${(err as Error).message})`, err);
  }
}

/** The *.parquet files directly inside `dir`, sorted by name. */
export async function parquetShards(dir: string): Promise<string[]> {
  const names = await readdir(dir);
  return names
    .filter((n) => n.toLowerCase().endsWith('.parquet') && !n.startsWith('.'))
    .sort()
    .map((n) => join(dir, n));
}

