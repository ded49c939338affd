// A one-line progress bar for long CLI jobs, drawn on a TTY only (a pipe or a log file gets nothing, so output
// stays clean to parse). Redrawn in place with a carriage return; finished with a newline.
import type { WriteStream } from 'node:tty';

export class ProgressBar {
  private readonly start = performance.now();
  private readonly enabled: boolean;
  private lastDraw = 0;

  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly stream: NodeJS.WriteStream | WriteStream = process.stderr,
  ) {
    this.enabled = Boolean((stream as WriteStream).isTTY) && total > 0;
  }

  /** Shows `done` of `total`; redraws at most every 50 ms except for the last step. */
  update(done: number): void {
    if (!this.enabled) return;
    const now = performance.now();
    if (done < this.total && now - this.lastDraw < 50) return;
    this.lastDraw = now;
    const columns = (this.stream as WriteStream).columns || 80;
    const elapsed = (now - this.start) / 1000;
    const rate = done > 0 ? elapsed / done : 0;
    const eta = rate * (this.total - done);
    const tail = ` ${done}/${this.total} ${rate.toFixed(2)} s/it, ${elapsed.toFixed(1)} s${done < this.total ? `, ~${eta.toFixed(1)} s left` : ''}`;
    const width = Math.max(10, Math.min(40, columns - this.label.length - tail.length - 4));
    const filled = Math.round((width * done) / this.total);
    this.stream.write(`\r${this.label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}]${tail}\x1b[K`);
    if (done >= this.total) this.stream.write('\n');
  }
}
