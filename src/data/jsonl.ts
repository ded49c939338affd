// JSON Lines preference pairs: one object per line, {"prompt": str, "chosen": path, "rejected": path}, image paths
// relative to the JSONL file's folder (or absolute). Blank lines are ignored.
//
// Opening makes one streaming pass that checks every line and records where it is: 24 bytes per line (start, end
// and line number as float64), never the lines themselves. Reads then fetch single lines with positioned reads, so an
// epoch can be a full permutation of the file.
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { describeFsError } from '../errors.js';
import { dataError, type PairCounts, type PairSource, type RowRef } from './source.js';
import type { PreferencePair, RowResult } from './types.js';

/** A growable float64 list (offsets past 2^32 bytes stay exact). */
class OffsetList {
  data = new Float64Array(1024);
  length = 0;
  push(v: number): void {
    if (this.length === this.data.length) {
      const next = new Float64Array(this.data.length * 2);
      next.set(this.data);
      this.data = next;
    }
    this.data[this.length++] = v;
  }
}

interface Line {
  prompt: string;
  chosen: string;
  rejected: string;
}

function checkLine(path: string, lineNo: number, text: string): Line {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw dataError(`${path} line ${lineNo}: not JSON (${(err as Error).message}); expected one {"prompt", "chosen", "rejected"} object per line`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw dataError(`${path} line ${lineNo}: expected a JSON object with prompt, chosen, rejected`);
  const o = v as Record<string, unknown>;
  for (const f of ['prompt', 'chosen', 'rejected'] as const) {
    if (typeof o[f] !== 'string') throw dataError(`${path} line ${lineNo}: field '${f}' ${o[f] === undefined ? 'is missing' : `is ${JSON.stringify(o[f])}, not a string`}`);
  }
  if ((o['chosen'] as string) === '' || (o['rejected'] as string) === '') throw dataError(`${path} line ${lineNo}: empty image path`);
  return o as unknown as Line;
}

export class JsonlPairSource implements PairSource<PreferencePair> {
  readonly kind = 'jsonl' as const;
  readonly randomAccess = true;
  readonly blockRows: number[];
  private readonly base: string;

  private constructor(
    readonly path: string,
    private readonly starts: Float64Array,
    private readonly ends: Float64Array,
    private readonly lineNumbers: Float64Array,
  ) {
    this.blockRows = [starts.length];
    this.base = dirname(path);
  }

  static async open(path: string): Promise<JsonlPairSource> {
    const starts = new OffsetList();
    const ends = new OffsetList();
    const numbers = new OffsetList();
    let pending: Buffer[] = [];
    let pendingStart = 0;
    let pos = 0;
    let lineNo = 0;
    const finishLine = (end: number): void => {
      lineNo++;
      const buf = pending.length === 1 ? pending[0]! : Buffer.concat(pending);
      pending = [];
      const textLine = buf.toString('utf8').replace(/\r$/, '');
      if (textLine.trim() !== '') {
        checkLine(path, lineNo, textLine);
        starts.push(pendingStart);
        ends.push(end);
        numbers.push(lineNo);
      }
    };
    try {
      for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
        let from = 0;
        for (;;) {
          const nl = chunk.indexOf(0x0a, from);
          if (nl < 0) break;
          pending.push(chunk.subarray(from, nl));
          finishLine(pos + nl);
          from = nl + 1;
          pendingStart = pos + from;
        }
        if (from < chunk.length) pending.push(Buffer.from(chunk.subarray(from)));
        pos += chunk.length;
      }
    } catch (err) {
      if ((err as { code?: string }).code === 'NCP_EDATA') throw err;
      throw dataError(`${path}: ${describeFsError(err)}`, err);
    }
    if (pending.length) finishLine(pos);
    if (starts.length === 0) throw dataError(`${path}: no preference pairs (the file has no non-empty lines)`);
    return new JsonlPairSource(path, starts.data.slice(0, starts.length), ends.data.slice(0, ends.length), numbers.data.slice(0, numbers.length));
  }

  private image(p: string): string {
    return isAbsolute(p) ? p : resolve(this.base, p);
  }

  async read(refs: readonly RowRef[]): Promise<Array<RowResult<PreferencePair>>> {
    const fh = await open(this.path, 'r').catch((err) => {
      throw dataError(`${this.path}: ${describeFsError(err)}`, err);
    });
    try {
      const out: Array<RowResult<PreferencePair>> = [];
      for (const ref of refs) {
        const i = ref.row;
        if (ref.block !== 0 || i < 0 || i >= this.starts.length) throw dataError(`${this.path}: row ${i} does not exist`);
        const start = this.starts[i]!;
        const buf = Buffer.alloc(this.ends[i]! - start);
        const { bytesRead } = await fh.read(buf, 0, buf.byteLength, start);
        if (bytesRead !== buf.byteLength) throw dataError(`${this.path}: the file changed while training (line ${this.lineNumbers[i]} is cut short)`);
        const line = checkLine(this.path, this.lineNumbers[i]!, buf.toString('utf8').replace(/\r$/, ''));
        out.push({ pair: { prompt: line.prompt, chosen: this.image(line.chosen), rejected: this.image(line.rejected), meta: { source: this.path, row: this.lineNumbers[i]! - 1 } } });
      }
      return out;
    } finally {
      await fh.close();
    }
  }

  async count(): Promise<PairCounts> {
    return { rows: this.starts.length, pairs: this.starts.length, dropped: {} };
  }

  describe(): string {
    return `JSONL file ${this.path}: ${this.starts.length} pairs`;
  }

  async close(): Promise<void> {}
}
