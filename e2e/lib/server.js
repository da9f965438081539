// Starts the real `magpie` binary for a test: a free port on 127.0.0.1, a fresh temp data
// dir, cheap Argon2 and a short heartbeat. `restart()` stops it (SIGTERM, a clean shutdown)
// and starts it again on the same port and data dir.

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The binary under test (`cargo build -p magpie`); MAGPIE_BIN overrides it. */
export const MAGPIE_BIN = process.env.MAGPIE_BIN || join(REPO, 'target', 'debug', 'magpie');

const START_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 10_000;

/** A free TCP port on 127.0.0.1 (bound, read, released). */
export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class MagpieServer {
  constructor(port, dataDir, env) {
    this.port = port;
    this.dataDir = dataDir;
    this.env = env;
    this.proc = null;
    this.log = '';
  }

  /** Starts a server; `env` adds variables (e.g. MAGPIE_FANOUT_WRITE_MAX). */
  static async start(env = {}) {
    const port = await freePort();
    const dataDir = await mkdtemp(join(tmpdir(), 'magpie-e2e-'));
    const s = new MagpieServer(port, dataDir, env);
    await s.spawn();
    return s;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async spawn() {
    this.log = '';
    const proc = spawn(MAGPIE_BIN, ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir], {
      env: {
        ...process.env,
        MAGPIE_ARGON2_M_KIB: '64',
        MAGPIE_ARGON2_T: '1',
        MAGPIE_STORE_JOURNAL_MIB: '1',
        MAGPIE_HEARTBEAT_MS: '2000',
        MAGPIE_LOG: process.env.MAGPIE_LOG || 'warn',
        ...this.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    const keep = (d) => {
      this.log = (this.log + d.toString()).slice(-20_000);
    };
    proc.stdout.on('data', keep);
    proc.stderr.on('data', keep);
    this.exited = new Promise((res) => proc.on('exit', (code, signal) => res({ code, signal })));
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (proc.exitCode !== null) break;
      try {
        const r = await fetch(`${this.url}/healthz`);
        if (r.ok) return;
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    proc.kill('SIGKILL');
    throw new Error(`magpie did not start on ${this.url}:\n${this.log}`);
  }

  /** Stops the server cleanly (SIGTERM; SIGKILL after a timeout). */
  async stop() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await this.exited;
    clearTimeout(t);
    this.proc = null;
  }

  /** Stops and starts again on the same port and data dir. */
  async restart() {
    await this.stop();
    await this.spawn();
  }

  /** Stops the server and deletes its data. */
  async dispose() {
    await this.stop();
    await rm(this.dataDir, { recursive: true, force: true });
  }
}
