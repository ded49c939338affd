// The "absolute winners" subset of the NCP paper (METHOD.md section 6): keep the pairs whose preferred image won
// every comparison it took part in. An image that lost once, or tied, is not an absolute winner.
//
// It needs every comparison of an image before deciding any pair, so it takes a first pass over the label and image
// id columns (never the images, when ids are present). Memory: one Map entry per distinct image id, about 100 bytes
// each in V8 (a 36-character uid string plus the entry), i.e. ~150-200 MB for Pick-a-Pic v2's ~1M pairs and ~1.5M
// images; the result is one bit per row.

/** Tracks, per image id, whether it won every comparison seen so far. */
export class WinnerTracker {
  private readonly wonAll = new Map<string, boolean>();

  /** Records one comparison. label0: 1 = image 0 preferred, 0 = image 1 preferred, 0.5 = tie. */
  add(id0: string, id1: string, label0: number): void {
    const w0 = label0 === 1;
    const w1 = label0 === 0;
    this.wonAll.set(id0, (this.wonAll.get(id0) ?? true) && w0);
    this.wonAll.set(id1, (this.wonAll.get(id1) ?? true) && w1);
  }

  /** Whether the pair is kept: not a tie, and its preferred image is an absolute winner. */
  keeps(id0: string, id1: string, label0: number): boolean {
    if (label0 === 1) return this.wonAll.get(id0) === true;
    if (label0 === 0) return this.wonAll.get(id1) === true;
    return false;
  }

  get images(): number {
    return this.wonAll.size;
  }
}

/** One bit per row. */
export class RowBits {
  private readonly bits: Uint8Array;
  constructor(readonly length: number) {
    this.bits = new Uint8Array(Math.ceil(length / 8));
  }
  set(i: number): void {
    this.bits[i >> 3]! |= 1 << (i & 7);
  }
  get(i: number): boolean {
    return (this.bits[i >> 3]! & (1 << (i & 7))) !== 0;
  }
  count(): number {
    let n = 0;
    for (let i = 0; i < this.length; i++) if (this.get(i)) n++;
    return n;
  }
}
