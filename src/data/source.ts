// What the loader needs from a dataset reader: its rows grouped in blocks (a parquet row group, a JSONL file, a
// cache shard) and a way to read any set of rows. A reader never holds more than the rows it is asked for.
import { CodedError } from '../errors.js';
import type { DropReason, RowResult } from './types.js';

export type DatasetKind = 'parquet-file' | 'parquet-folder' | 'jsonl' | 'cache';

export interface RowRef {
  block: number;
  /** row within the block */
  row: number;
}

export interface PairCounts {
  rows: number;
  pairs: number;
  dropped: Partial<Record<DropReason, number>>;
}

export interface PairSource<P> {
  readonly kind: DatasetKind;
  readonly path: string;
  /** row count of each block */
  readonly blockRows: readonly number[];
  /**
   * true: single rows are cheap to read, so an epoch can be a full permutation of all rows.
   * false (parquet): reading is by row group, so an epoch permutes blocks and the rows within groups of blocks.
   */
  readonly randomAccess: boolean;
  /** Reads rows; results in the order of `refs`. */
  read(refs: readonly RowRef[]): Promise<Array<RowResult<P>>>;
  /** Usable pairs and dropped rows, from a pass over the small columns only (labels). */
  count(): Promise<PairCounts>;
  /** One line for logs: what was found. */
  describe(): string;
  close(): Promise<void>;
}

export function dataError(message: string, cause?: unknown): CodedError {
  return new CodedError('NCP_EDATA', message, cause === undefined ? undefined : { cause });
}

export function totalRows(source: { blockRows: readonly number[] }): number {
  let n = 0;
  for (const r of source.blockRows) n += r;
  return n;
}
