// Crash-safe file and folder writes. A reader (or a resumed run after SIGKILL or power loss) sees either the old
// content or the complete new content, never a torn file: write a temporary sibling in the same folder (so the
// rename cannot cross file systems), fsync it, rename it over the target, fsync the folder so the rename itself is
// durable.
import { open, rename, rm, mkdir, unlink, type FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { CodedError, describeFsError } from './errors.js';

/** A name in `dir` that no other writer picks; starts with '.' and contains '.tmp-' so cleanups can find it. */
export function tempSibling(target: string): string {
  return join(dirname(target), `.${basename(target)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
}

/** True for the leftovers of an interrupted atomic write (see tempSibling). */
export function isTempName(name: string): boolean {
  return name.startsWith('.') && name.includes('.tmp-');
}

/** fsync a folder so that renames and creations inside it survive a crash (a no-op where not supported). */
export async function fsyncDir(dir: string): Promise<void> {
  let fh;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch (err) {
    // Some file systems refuse fsync on folders (EINVAL/EISDIR); durability then rests on the OS.
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EINVAL' && code !== 'EISDIR' && code !== 'EPERM' && code !== 'EBADF') throw err;
  } finally {
    await fh?.close();
  }
}

function writeError(path: string, err: unknown): CodedError {
  if (err instanceof CodedError) return err;
  return new CodedError('NCP_EWRITE', `cannot write ${path}: ${describeFsError(err)}`, { cause: err });
}

/** Writes every byte of `parts` (concatenated) at the handle's position: a single write may be short. */
async function writeAll(fh: FileHandle, parts: Uint8Array | string | Array<Uint8Array | string>): Promise<void> {
  for (const p of Array.isArray(parts) ? parts : [parts]) {
    const buf = typeof p === 'string' ? Buffer.from(p, 'utf8') : p;
    let off = 0;
    while (off < buf.byteLength) {
      const { bytesWritten } = await fh.write(buf, off, buf.byteLength - off);
      off += bytesWritten;
    }
  }
}

/** Writes `parts` (concatenated) to `path` atomically. The folder must exist. */
export async function writeFileAtomic(path: string, parts: Uint8Array | string | Array<Uint8Array | string>): Promise<void> {
  const tmp = tempSibling(path);
  let fh;
  try {
    fh = await open(tmp, 'wx', 0o644);
    await writeAll(fh, parts);
    await fh.sync();
    await fh.close();
    fh = undefined;
    await rename(tmp, path);
    await fsyncDir(dirname(path));
  } catch (err) {
    await fh?.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw writeError(path, err);
  }
}

/**
 * Creates the folder `target` atomically: `fill` writes into a temporary sibling folder (use writeFileDurable or
 * writeFileAtomic inside it), which is then fsynced and renamed to `target`. If `target` exists it is replaced:
 * moved aside first, removed after the new one is in place. The parent folder is created if missing.
 */
export async function writeDirAtomic(target: string, fill: (tmpDir: string) => Promise<void>): Promise<void> {
  const parent = dirname(target);
  try {
    await mkdir(parent, { recursive: true });
  } catch (err) {
    throw writeError(parent, err);
  }
  const tmp = tempSibling(target);
  try {
    await mkdir(tmp);
    await fill(tmp);
    await fsyncDir(tmp);
    let old: string | undefined;
    try {
      await rename(tmp, target);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
      old = tempSibling(target);
      await rename(target, old);
      await rename(tmp, target);
    }
    await fsyncDir(parent);
    if (old) await rm(old, { recursive: true, force: true });
  } catch (err) {
    await rm(tmp, { recursive: true, force: true }).catch(() => {});
    throw writeError(target, err);
  }
}

/** Writes a file and fsyncs it (no rename: for files inside a folder that writeDirAtomic publishes). */
export async function writeFileDurable(path: string, parts: Uint8Array | string | Array<Uint8Array | string>): Promise<void> {
  let fh;
  try {
    fh = await open(path, 'wx', 0o644);
    await writeAll(fh, parts);
    await fh.sync();
  } catch (err) {
    throw writeError(path, err);
  } finally {
    await fh?.close().catch(() => {});
  }
}
