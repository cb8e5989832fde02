// What several windows watch at once, kept once per page: the runtimes, the agents
// and the pipes, each fed by its channel while some window needs it (reference counted),
// with a short history for the charts.
import { useEffect, useTicker } from './ui.js';

export const HISTORY_S = 60;

class Emitter {
    constructor() { this.listeners = new Set(); }
    on(cb) { this.listeners.add(cb); return () => this.listeners.delete(cb); }
    emit() { for (const cb of [...this.listeners]) cb(); }
}

/** A channel followed while anyone holds it. */
class LiveChannel extends Emitter {
    constructor(channel) {
        super();
        this.channel = channel;
        this.holders = 0;
        this.off = null;
        this.conn = null;
        this.error = null;
    }

    hold(conn) {
        if (this.conn !== conn) {
            this.release(true);
            this.conn = conn;
        }
        this.holders += 1;
        if (!this.off) this.off = conn.subscribe(this.channel, (ev) => this.event(ev));
        return () => this.release();
    }

    release(all = false) {
        this.holders = all ? 0 : Math.max(0, this.holders - 1);
        if (this.holders === 0 && this.off) {
            this.off();
            this.off = null;
            this.stopped();
        }
    }

    event(ev) {
        if (ev && ev.error) {
            this.error = { kind: ev.kind || 'EIO', message: ev.error };
        } else {
            this.error = null;
            this.apply(ev);
        }
        this.emit();
    }

    apply() {}
    stopped() {}
}

// --- runtimes -------------------------------------------------------------------

class Runtimes extends LiveChannel {
    constructor() {
        super('runtimes');
        this.byId = new Map();
        this.history = new Map(); // id -> {t: [], cpu: []}
        this.grid = { t: [], cpu: [], agents: [] };
        this.sampler = null;
    }

    apply(ev) {
        if (Array.isArray(ev.statuses)) {
            for (const s of ev.statuses) if (s && s.id) this.byId.set(s.id, s);
        }
        if (ev.status && ev.status.id) this.byId.set(ev.status.id, ev.status);
        if (!this.sampler) this.sample();
        this.ensureSampler();
    }

    ensureSampler() {
        if (!this.sampler) this.sampler = setInterval(() => this.sample(), 1000);
    }

    stopped() {
        clearInterval(this.sampler);
        this.sampler = null;
    }

    /** Once a second: every runtime's CPU and the grid's sum, kept for HISTORY_S. */
    sample() {
        const now = Date.now() / 1000;
        let cpu = 0;
        let agents = 0;
        for (const s of this.byId.values()) {
            const alive = s.state === 'alive';
            let h = this.history.get(s.id);
            if (!h) {
                h = { t: [], cpu: [] };
                this.history.set(s.id, h);
            }
            h.t.push(now);
            h.cpu.push(alive ? Number(s.cpu_percent) || 0 : null);
            trim(h, now);
            if (alive) {
                cpu += Number(s.cpu_percent) || 0;
                agents += Number(s.agents) || 0;
            }
        }
        this.grid.t.push(now);
        this.grid.cpu.push(cpu);
        this.grid.agents.push(agents);
        trim(this.grid, now);
        this.emit();
    }

    list() {
        return [...this.byId.values()].sort((a, b) => a.id.localeCompare(b.id));
    }

    live() {
        return this.list().filter((s) => s.state === 'alive');
    }
}

function trim(series, now) {
    let cut = 0;
    while (cut < series.t.length && series.t[cut] < now - HISTORY_S - 2) cut++;
    if (cut) for (const k of Object.keys(series)) series[k].splice(0, cut);
}

// --- agents ---------------------------------------------------------------------

export const ENDED = ['exited', 'killed', 'failed', 'lost'];

class Agents extends LiveChannel {
    constructor() {
        super('agents');
        this.byId = new Map();
        this.history = new Map(); // id -> {t: [], cpu: [], mem: []}
    }

    apply(ev) {
        if (Array.isArray(ev.agents)) for (const a of ev.agents) this.put(a);
        if (ev.agent) this.put(ev.agent);
    }

    /** Record an agent's info (from the channel, proc.list or an operation's answer). */
    put(info, quiet = true) {
        if (!info || !info.id) return;
        const old = this.byId.get(info.id);
        // An operation's answer (proc.kill's record, taken just after SIGTERM) can arrive after the
        // channel's event that the agent ended: it must not bring the agent back to life.  Only a
        // newer incarnation (a restart) may.
        if (old && ENDED.includes(old.state) && !ENDED.includes(info.state)
            && (info.incarnation ?? 0) <= (old.incarnation ?? 0)) return;
        this.byId.set(info.id, old ? { ...old, ...info } : info);
        let h = this.history.get(info.id);
        if (!h) {
            h = { t: [], cpu: [], mem: [] };
            this.history.set(info.id, h);
        }
        if (!ENDED.includes(info.state)) {
            h.t.push(Date.now() / 1000);
            h.cpu.push(Number(info.cpu_percent) || 0);
            h.mem.push(Number(info.memory_mb) || 0);
            if (h.t.length > 900) for (const k of Object.keys(h)) h[k].splice(0, h.t.length - 900);
        }
        if (!quiet) this.emit();
    }

    putAll(list) {
        for (const a of list || []) this.put(a);
        this.emit();
    }

    forgetEnded() {
        for (const [id, a] of this.byId) {
            if (ENDED.includes(a.state)) {
                this.byId.delete(id);
                this.history.delete(id);
            }
        }
        this.emit();
    }
}

// --- pipes ----------------------------------------------------------------------

class Pipes extends LiveChannel {
    constructor() {
        super('pipes');
        this.rows = [];
        this.at = 0;
    }

    apply(ev) {
        if (Array.isArray(ev.pipes)) this.set(ev.pipes, false);
    }

    set(rows, quiet = true) {
        this.rows = rows.filter((r) => r && r.from && r.to);
        this.at = Date.now();
        if (!quiet) this.emit();
    }
}

export const runtimes = new Runtimes();
export const agents = new Agents();
export const pipes = new Pipes();

/** Hold *store*'s channel on *conn* while the component is mounted; re-render on change. */
export function useLive(store, conn) {
    useEffect(() => store.hold(conn), [store, conn]);
    return useTicker((cb) => store.on(cb), [store]);
}

/** Forget everything (logout). */
export function resetLive() {
    for (const s of [runtimes, agents, pipes]) s.release(true);
    runtimes.byId.clear();
    runtimes.history.clear();
    runtimes.grid = { t: [], cpu: [], agents: [] };
    agents.byId.clear();
    agents.history.clear();
    pipes.rows = [];
}
