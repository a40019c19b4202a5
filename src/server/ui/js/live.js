// Polling for live pages: one tick at a time, paused while the browser tab is hidden.

/**
 * Calls `tick()` every `intervalMs` (after the previous tick finished) until it returns false
 * or `stop()` is called. While the page is hidden nothing is fetched; on becoming visible it
 * ticks at once. `onActive(bool)` reports whether it is polling (for the live indicator).
 */
export class Poller {
  constructor(tick, { intervalMs = 1000, onActive = () => {} } = {}) {
    this.tick = tick;
    this.intervalMs = intervalMs;
    this.onActive = onActive;
    this.timer = null;
    this.running = false; // a tick is in flight
    this.stopped = false;
    this.onVisibility = () => {
      if (this.stopped) return;
      if (document.hidden) {
        clearTimeout(this.timer);
        this.timer = null;
        this.onActive(false);
      } else {
        this.onActive(true);
        this.schedule(0);
      }
    };
    document.addEventListener('visibilitychange', this.onVisibility);
  }

  start() {
    this.onActive(!document.hidden);
    this.schedule(this.intervalMs);
  }

  schedule(ms) {
    clearTimeout(this.timer);
    if (this.stopped || document.hidden) return;
    this.timer = setTimeout(() => this.run(), ms);
  }

  async run() {
    this.timer = null;
    if (this.running || this.stopped || document.hidden) return;
    this.running = true;
    let again = true;
    try {
      again = await this.tick();
    } catch (e) {
      console.warn('runbus: live update failed', e); // retried at the next tick
    } finally {
      this.running = false;
    }
    if (again === false) this.stop();
    else this.schedule(this.intervalMs);
  }

  stop() {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.timer);
    document.removeEventListener('visibilitychange', this.onVisibility);
    this.onActive(false);
  }
}
