// The order rows are visited in, per epoch, from the seed alone, so a position {epoch, index} names the same row in
// every run with that seed and a resumed run continues with exactly the rows an uninterrupted run would read.
//
//  - random-access sources (JSONL, encode cache): a full permutation of all rows (4 bytes per row).
//  - block sources (parquet): the blocks (row groups) are permuted, taken `mixBlocks` at a time, and the rows of each
//    such group are permuted together; rows are read a group at a time. Less random than a full permutation, but
//    memory stays at `mixBlocks` row groups.
//  - shuffle off: file order.
import { Rng } from '../rng.js';
import type { RowRef } from './source.js';

/** Stream ids for Rng.derive, so data order and augmentation draw from independent streams of one seed. */
export const STREAM_ORDER = 1;
export const STREAM_AUGMENT = 2;

/** A stretch of the epoch read together: refs[i] is the row at epoch index `start + i`. */
export interface Window {
  start: number;
  refs: RowRef[];
}

export interface OrderOptions {
  seed: number;
  shuffle: boolean;
  randomAccess: boolean;
  /** block sources: blocks mixed per group (default 1) */
  mixBlocks?: number;
  /** random-access sources: rows per read (default 32) */
  windowRows?: number;
}

export class EpochOrder {
  private readonly offsets: number[];
  readonly rows: number;

  constructor(
    private readonly blockRows: readonly number[],
    private readonly options: OrderOptions,
  ) {
    this.offsets = [];
    let n = 0;
    for (const r of blockRows) {
      this.offsets.push(n);
      n += r;
    }
    this.rows = n;
  }

  private refOf(global: number): RowRef {
    // binary search for the block holding global row `global`
    let lo = 0;
    let hi = this.offsets.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.offsets[mid]! <= global) lo = mid;
      else hi = mid - 1;
    }
    return { block: lo, row: global - this.offsets[lo]! };
  }

  /** The windows of epoch `epoch` from index `from` on, in order. */
  *windows(epoch: number, from: number): Generator<Window> {
    if (from >= this.rows) return;
    const o = this.options;
    if (!o.shuffle || o.randomAccess) {
      const perm = o.shuffle ? Rng.derive(o.seed, STREAM_ORDER, epoch).permutation(this.rows) : undefined;
      const w = o.windowRows ?? 32;
      for (let start = from; start < this.rows; start += w) {
        const refs: RowRef[] = [];
        for (let i = start; i < Math.min(this.rows, start + w); i++) refs.push(this.refOf(perm ? perm[i]! : i));
        yield { start, refs };
      }
      return;
    }
    const rng = Rng.derive(o.seed, STREAM_ORDER, epoch);
    const blockPerm = rng.permutation(this.blockRows.length);
    const mix = Math.max(1, o.mixBlocks ?? 1);
    let index = 0;
    for (let g = 0; g < blockPerm.length; g += mix) {
      const group = Array.from(blockPerm.subarray(g, g + mix));
      const refs: RowRef[] = [];
      for (const block of group) for (let r = 0; r < this.blockRows[block]!; r++) refs.push({ block, row: r });
      // The row permutation of every group is drawn whether or not the group is skipped, so the stream stays the same.
      const rowPerm = rng.permutation(refs.length);
      const end = index + refs.length;
      if (end > from) {
        const skip = Math.max(0, from - index);
        const ordered: RowRef[] = [];
        for (let i = skip; i < refs.length; i++) ordered.push(refs[rowPerm[i]!]!);
        yield { start: index + skip, refs: ordered };
      }
      index = end;
    }
  }
}
