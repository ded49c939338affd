// The seeded generator of the TypeScript side (data order, crops, flips), bit-for-bit the same stream as the native
// core's ncp::model::Rng (native/model/rng.h): splitmix64 to seed, xoshiro256** to draw, Box-Muller for normals
// with no cached second value. So one seed means one stream on both sides, and the whole state is four 64-bit
// words that a checkpoint stores as hex strings.
//
// No BigInt on the hot path: each 64-bit word is a pair of uint32 (hi, lo) in a Uint32Array.

/** Four 64-bit words as 16-digit hex strings (the same words as the native Rng::state()). */
export type RngState = [string, string, string, string];

const TWO32 = 4294967296;

/** (ah:al) * (bh:bl) mod 2^64 into out[o], out[o+1]. */
function mul64(ah: number, al: number, bh: number, bl: number, out: Uint32Array, o: number): void {
  const a0 = al & 0xffff;
  const a1 = al >>> 16;
  const b0 = bl & 0xffff;
  const b1 = bl >>> 16;
  const mid = a0 * b1 + a1 * b0; // < 2^33, exact
  const low = a0 * b0 + (mid % 65536) * 65536; // < 2^33, exact
  const carry = Math.floor(low / TWO32);
  const high = a1 * b1 + Math.floor(mid / 65536) + carry;
  out[o + 1] = low >>> 0;
  out[o] = (high + Math.imul(al, bh) + Math.imul(ah, bl)) >>> 0;
}

const tmp = new Uint32Array(2);

/** splitmix64 finaliser of (h:l) into out[o], out[o+1]. */
function mix64(h: number, l: number, out: Uint32Array, o: number): void {
  // z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
  let zl = (l ^ ((l >>> 30) | (h << 2))) >>> 0;
  let zh = (h ^ (h >>> 30)) >>> 0;
  mul64(zh, zl, 0xbf58476d, 0x1ce4e5b9, tmp, 0);
  zh = tmp[0]!;
  zl = tmp[1]!;
  // z = (z ^ (z >> 27)) * 0x94D049BB133111EB
  zl = (zl ^ ((zl >>> 27) | (zh << 5))) >>> 0;
  zh = (zh ^ (zh >>> 27)) >>> 0;
  mul64(zh, zl, 0x94d049bb, 0x133111eb, tmp, 0);
  zh = tmp[0]!;
  zl = tmp[1]!;
  // z ^ (z >> 31)
  out[o + 1] = (zl ^ ((zl >>> 31) | (zh << 1))) >>> 0;
  out[o] = (zh ^ (zh >>> 31)) >>> 0;
}

/** A seed as (hi, lo): a non-negative safe integer, or a 64-bit value given as a hex string / bigint. */
function seedWords(seed: number | bigint | string): [number, number] {
  let v: bigint;
  if (typeof seed === 'number') {
    if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`seed must be a non-negative integer up to 2^53-1, got ${seed}`);
    return [Math.floor(seed / TWO32), seed >>> 0];
  }
  if (typeof seed === 'string') {
    if (!/^(0x)?[0-9a-fA-F]{1,16}$/.test(seed)) throw new RangeError(`seed string must be up to 16 hex digits, got ${JSON.stringify(seed)}`);
    v = BigInt(seed.startsWith('0x') ? seed : `0x${seed}`);
  } else v = BigInt.asUintN(64, seed);
  return [Number(v >> 32n), Number(v & 0xffffffffn)];
}

function hex64(h: number, l: number): string {
  return h.toString(16).padStart(8, '0') + l.toString(16).padStart(8, '0');
}

export class Rng {
  /** s0h s0l s1h s1l s2h s2l s3h s3l */
  private readonly s = new Uint32Array(8);

  constructor(seed: number | bigint | string = 0) {
    this.reseed(seed);
  }

  /** splitmix64 seeding, as the native Rng::reseed. */
  reseed(seed: number | bigint | string): void {
    let [h, l] = seedWords(seed);
    for (let w = 0; w < 4; w++) {
      // seed += 0x9E3779B97F4A7C15
      const lo = l + 0x7f4a7c15;
      l = lo >>> 0;
      h = (h + 0x9e3779b9 + (lo >= TWO32 ? 1 : 0)) >>> 0;
      mix64(h, l, this.s, 2 * w);
    }
  }

  /**
   * A generator for an independent stream, determined by a seed and a path of non-negative integers (e.g.
   * `Rng.derive(seed, STREAM_DATA, epoch)`): each id is hashed into the seed with the splitmix64 finaliser.
   */
  static derive(seed: number | bigint | string, ...ids: number[]): Rng {
    let [h, l] = seedWords(seed);
    const out = new Uint32Array(2);
    for (const id of ids) {
      const [ih, il] = seedWords(id);
      mix64(ih, (il + 1) >>> 0, out, 0); // +1: id 0 still changes the seed
      mix64((h ^ out[0]!) >>> 0, (l ^ out[1]!) >>> 0, out, 0);
      h = out[0]!;
      l = out[1]!;
    }
    return new Rng(hex64(h, l));
  }

  /** The next 64-bit output as (hi, lo) in `out` (xoshiro256**). */
  private step(out: Uint32Array): void {
    const s = this.s;
    // result = rotl(s1 * 5, 7) * 9
    const s1h = s[2]!;
    const s1l = s[3]!;
    let pl = s1l * 5;
    let rl = pl >>> 0;
    let rh = (Math.imul(s1h, 5) + Math.floor(pl / TWO32)) >>> 0;
    const ql = ((rl << 7) | (rh >>> 25)) >>> 0;
    const qh = ((rh << 7) | (rl >>> 25)) >>> 0;
    pl = ql * 9;
    rl = pl >>> 0;
    rh = (Math.imul(qh, 9) + Math.floor(pl / TWO32)) >>> 0;
    out[0] = rh;
    out[1] = rl;
    // t = s1 << 17
    const th = ((s1h << 17) | (s1l >>> 15)) >>> 0;
    const tl = (s1l << 17) >>> 0;
    s[4]! ^= s[0]!; s[5]! ^= s[1]!; // s2 ^= s0
    s[6]! ^= s[2]!; s[7]! ^= s[3]!; // s3 ^= s1
    s[2]! ^= s[4]!; s[3]! ^= s[5]!; // s1 ^= s2
    s[0]! ^= s[6]!; s[1]! ^= s[7]!; // s0 ^= s3
    s[4]! ^= th; s[5]! ^= tl; // s2 ^= t
    // s3 = rotl(s3, 45) = rotl(swap(s3), 13)
    const h = s[7]!;
    const l = s[6]!;
    s[6] = ((h << 13) | (l >>> 19)) >>> 0;
    s[7] = ((l << 13) | (h >>> 19)) >>> 0;
  }

  private readonly out = new Uint32Array(2);

  /** The next 64-bit output as a hex string (for tests against the native generator). */
  nextHex(): string {
    this.step(this.out);
    return hex64(this.out[0]!, this.out[1]!);
  }

  /** The next output's high 32 bits. */
  nextUint32(): number {
    this.step(this.out);
    return this.out[0]!;
  }

  /** Uniform in [0, 1) with 53 random bits (the native uniform()). */
  uniform(): number {
    this.step(this.out);
    return (this.out[0]! * 2097152 + (this.out[1]! >>> 11)) * 2 ** -53;
  }

  /** Uniform integer in [0, n) (the native below()). */
  below(n: number): number {
    return Math.floor(this.uniform() * n);
  }

  /** True with probability p. */
  bernoulli(p = 0.5): boolean {
    return this.uniform() < p;
  }

  /** Standard normal by Box-Muller; one value per two uniforms (the native normal()). */
  normal(): number {
    let u1 = this.uniform();
    while (u1 <= 0) u1 = this.uniform();
    const u2 = this.uniform();
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(6.283185307179586 * u2);
  }

  /** Fills `out` with standard normals. */
  fillNormal(out: Float32Array | Float64Array): typeof out {
    for (let i = 0; i < out.length; i++) out[i] = this.normal();
    return out;
  }

  /** Fisher-Yates shuffle in place, from the last element down. */
  shuffle<T extends { length: number; [i: number]: unknown }>(a: T): T {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.below(i + 1);
      const x = a[i];
      a[i] = a[j];
      a[j] = x;
    }
    return a;
  }

  /** A random permutation of 0..n-1. */
  permutation(n: number): Uint32Array {
    const p = new Uint32Array(n);
    for (let i = 0; i < n; i++) p[i] = i;
    return this.shuffle(p);
  }

  getState(): RngState {
    const s = this.s;
    return [hex64(s[0]!, s[1]!), hex64(s[2]!, s[3]!), hex64(s[4]!, s[5]!), hex64(s[6]!, s[7]!)];
  }

  setState(state: RngState): void {
    if (!Array.isArray(state) || state.length !== 4 || !state.every((w) => typeof w === 'string' && /^[0-9a-f]{16}$/.test(w)))
      throw new RangeError(`RNG state must be four 16-digit lower-case hex strings, got ${JSON.stringify(state)}`);
    if (state.every((w) => /^0+$/.test(w))) throw new RangeError('RNG state is all zeros (xoshiro256** would only draw zeros)');
    state.forEach((w, i) => {
      this.s[2 * i] = parseInt(w.slice(0, 8), 16);
      this.s[2 * i + 1] = parseInt(w.slice(8), 16);
    });
  }

  static fromState(state: RngState): Rng {
    const r = new Rng(0);
    r.setState(state);
    return r;
  }
}
