// The WebSocket half of the protocol: one connection at a time to `/v1/ws?token=…`
// (browsers cannot set headers on a WebSocket), heartbeats, and automatic reconnection with
// exponential backoff and full jitter. It knows nothing about events; the client core gets
// `ready` and every later frame, and decides what to send.
//
// States reported through `onState(state, detail)`:
//   connecting → online → (lost) waiting {retryAt} → connecting → …
//   revoked (close 4001: the session was logged out elsewhere) and stopped are final.

import { config } from './config.js';

/** Close code: the session was revoked (logout). */
export const CLOSE_REVOKED = 4001;

const HEARTBEAT_MS_FALLBACK = 30_000;
const HEARTBEAT_MS_MIN = 100;
const HEARTBEAT_MS_MAX = 600_000;
/** Silence longer than this many heartbeats means the connection is dead. */
const DEAD_AFTER_HEARTBEATS = 3;
/** How long the server may take to send `ready` after the handshake. */
const READY_TIMEOUT_MS = 10_000;

export class Socket {
  /**
   * @param {object} o
   * @param {() => string} o.url the ws:// URL including the token
   * @param {(ready: object) => void} o.onReady the `ready` frame of a new connection
   * @param {(frame: object) => void} o.onFrame every later frame
   * @param {(state: string, detail?: object) => void} o.onState connection state changes
   * @param {(failures: number) => void} [o.onFailure] a connection attempt failed before `ready`
   */
  constructor({ url, onReady, onFrame, onState, onFailure = () => {} }) {
    Object.assign(this, { url, onReady, onFrame, onState, onFailure });
    this.ws = null;
    this.state = 'idle';
    this.attempt = 0;
    this.failures = 0;
    this.timers = {};
    this.readyAt = 0;
    this.lastInbound = 0;
    this.heartbeatMs = HEARTBEAT_MS_FALLBACK;
    this.onOnline = () => this.reconnectNow();
  }

  start() {
    window.addEventListener('online', this.onOnline);
    this.connect();
  }

  /** Closes for good (logout, or the page is being torn down). */
  stop() {
    window.removeEventListener('online', this.onOnline);
    this.clearTimers();
    this.setState('stopped');
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try {
        ws.close(1000, 'bye');
      } catch {
        // already closed
      }
    }
  }

  /** Whether a connection is up and `ready` arrived. */
  get online() {
    return this.state === 'online';
  }

  /** Sends a frame if online. Returns whether it was written. */
  send(frame) {
    if (!this.online || !this.ws) return false;
    try {
      this.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /** Skips the remaining backoff delay (a button, or the browser came back online). */
  reconnectNow() {
    if (this.state === 'waiting') {
      clearTimeout(this.timers.retry);
      this.connect();
    }
  }

  setState(state, detail) {
    this.state = state;
    this.onState(state, detail);
  }

  clearTimers() {
    for (const t of Object.values(this.timers)) {
      clearTimeout(t);
      clearInterval(t);
    }
    this.timers = {};
  }

  connect() {
    this.clearTimers();
    this.setState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (e) {
      this.lost(null, `cannot connect: ${e.message}`);
      return;
    }
    this.ws = ws;
    this.readyAt = 0;
    this.timers.ready = setTimeout(() => {
      if (this.ws === ws && !this.readyAt) this.abort(ws, 'no ready frame from the server');
    }, READY_TIMEOUT_MS);
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastInbound = performance.now();
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        console.warn('ignoring an unparseable frame');
        return;
      }
      if (frame.type === 'ready' && !this.readyAt) this.ready(ws, frame);
      else if (this.readyAt) this.onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.lost(ev.code, ev.reason || `closed (${ev.code})`);
    };
    ws.onerror = () => {
      // `close` follows with the details.
    };
  }

  ready(ws, frame) {
    clearTimeout(this.timers.ready);
    this.readyAt = performance.now();
    this.failures = 0;
    const hb = Number(frame.heartbeat_ms) || HEARTBEAT_MS_FALLBACK;
    this.heartbeatMs = Math.min(Math.max(hb, HEARTBEAT_MS_MIN), HEARTBEAT_MS_MAX);
    // Any frame counts as a heartbeat; ping at half the interval to stay well inside it.
    this.timers.ping = setInterval(() => this.send({ type: 'ping' }), this.heartbeatMs / 2);
    this.timers.dead = setInterval(() => {
      const silent = performance.now() - this.lastInbound;
      if (silent > this.heartbeatMs * DEAD_AFTER_HEARTBEATS) {
        this.abort(ws, `no frame from the server for ${Math.round(silent)} ms`);
      }
    }, this.heartbeatMs);
    this.setState('online');
    this.onReady(frame);
  }

  /** Drops a connection we consider dead. */
  abort(ws, reason) {
    try {
      ws.close(1000, 'client gave up');
    } catch {
      // ignore
    }
    if (this.ws === ws) this.lost(null, reason);
  }

  lost(code, reason) {
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
    }
    const stable = this.readyAt && performance.now() - this.readyAt >= config.stableConnectionMs;
    const hadReady = !!this.readyAt;
    this.clearTimers();
    if (this.state === 'stopped') return;
    if (code === CLOSE_REVOKED) {
      this.setState('revoked', { reason });
      return;
    }
    if (stable) this.attempt = 0;
    if (!hadReady) {
      this.failures += 1;
      this.onFailure(this.failures);
    }
    const ceiling = Math.min(config.backoffCapMs, config.backoffBaseMs * 2 ** Math.min(this.attempt, 30));
    const delay = Math.round(Math.random() * ceiling);
    this.attempt += 1;
    const retryAt = Date.now() + delay;
    this.setState('waiting', { reason, retryAt, delay });
    this.timers.retry = setTimeout(() => this.connect(), delay);
  }
}
