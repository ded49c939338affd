// Coded errors for the TypeScript side (data, files, configuration). The CLI prints `message [code]` and no stack
// trace for these, so every message names the file, tensor, column, field or flag at fault and what was expected.

/** An Error with a stable `code` (e.g. NCP_ECONFIG, NCP_EDATA, NCP_ESAFETENSORS, NCP_ELORA, NCP_ERUN). */
export class CodedError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'CodedError';
  }
}

/** Node's system error codes (ENOENT, EACCES, ...) as a short phrase for messages. */
export function describeFsError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  switch (e?.code) {
    case 'ENOENT':
      return 'does not exist';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EISDIR':
      return 'is a folder, not a file';
    case 'ENOTDIR':
      return 'a part of the path is not a folder';
    case 'ENOSPC':
      return 'no space left on the device';
    case 'EROFS':
      return 'read-only file system';
    default:
      return e?.message ?? String(err);
  }
}
