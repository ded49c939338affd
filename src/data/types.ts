// The shapes every dataset reader yields, and the position a run resumes from.

/**
 * Where the data stream stands: `index` counts the source rows consumed in epoch `epoch`'s order (rows dropped as
 * ties, filtered out or unreadable count too), so the same position always means the same next row.
 */
export interface DataPosition {
  epoch: number;
  index: number;
}

/** An image as the file holds it: encoded bytes (parquet) or an absolute path (JSONL). */
export type ImageSource = Uint8Array | string;

export interface PairMeta {
  /** file the pair came from */
  source: string;
  /** row (parquet), line (JSONL, 0-based) or pair index (cache) in that file */
  row: number;
  /** Pick-a-Pic image ids of the chosen and rejected image, when the file has them */
  chosenUid?: string;
  rejectedUid?: string;
}

/** A preference pair from source images. */
export interface PreferencePair {
  prompt: string;
  chosen: ImageSource;
  rejected: ImageSource;
  meta: PairMeta;
}

/** A preference pair from an encode cache: latents and text conditioning already computed. */
export interface EncodedPair {
  prompt: string;
  /** [C, H, W] latents of the chosen / rejected image, scaled by the VAE's scaling_factor */
  chosen: Float32Array;
  rejected: Float32Array;
  /** [tokens, dim] */
  encoderHiddenStates: Float32Array;
  /** SDXL: pooled text embeds [dim] */
  textEmbeds?: Float32Array;
  /** SDXL: time ids of each image */
  chosenTimeIds?: Float32Array;
  rejectedTimeIds?: Float32Array;
  meta: PairMeta;
}

/** Why a source row gave no pair. */
export type DropReason = 'tie' | 'bad_label' | 'filtered' | 'missing_image' | 'bad_row';

/** What a reader returns for one row: a pair, or why not. */
export type RowResult<P> = { pair: P } | { dropped: DropReason; detail?: string };
