// The page's one websocket (docs/desktop.md, "Websocket protocol"): requests with ids
// answered by promises, channel subscriptions (a device's video frames come as binary frames
// [0xFF][n][channel][JPEG], handed to the channel's callbacks as {frame}), terminals as binary
// frames [N][bytes] (N < 255), and reconnecting by itself (1, 2, 4 ... 10 s) with its channels and terminals reopened.

/** An operation's typed failure: {kind, message} as the server sent it. */
export class OpError extends Error {
    constructor(kind, message) {
        super(message);
        this.kind = kind;
    }
}

const MAX_DELAY_MS = 10000;
/** The first byte of a binary frame carrying a device's video frame (terminals are 0..254). */
const DEVICE_FRAME = 0xff;
const utf8 = new TextDecoder();
const WAIT_FOR_OPEN_MS = 10000;
const MAX_HELD_FRAMES = 2 * 1024 * 1024;

export class Connection {
    /**
     * @param {object} opts
     *   url: the websocket URL (default: /ws of this page's origin, wss: under https)
     *   checkSession: async () => boolean, asked after a close: false stops reconnecting
     *   onLoggedOut: called when checkSession said the session is gone
     */
    constructor(opts = {}) {
        this.url = opts.url || Connection.defaultUrl();
        this.checkSession = opts.checkSession || null;
        this.onLoggedOut = opts.onLoggedOut || null;
        this.ws = null;
        this.state = 'closed'; // 'connecting' | 'open' | 'closed'
        this.detail = 'not connected';
        this.nextId = 1;
        this.pending = new Map(); // id -> {resolve, reject, op}
        this.channels = new Map(); // channel -> Set(callback)
        this.terminals = new Set(); // TerminalSession
        this.byNumber = new Map(); // terminal number -> TerminalSession (this websocket's numbers)
        this.held = new Map(); // terminal number -> [Uint8Array] that came before its term.open answer
        this.heldBytes = 0;
        this.stateListeners = new Set();
        this.stray = new Set(); // listeners for replies with id null (malformed frames)
        this.attempt = 0;
        this.timer = null;
        this.stopped = false;
        this.waiters = [];
    }

    static defaultUrl() {
        const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
        return `${scheme}//${location.host}/ws`;
    }

    // --- the socket -------------------------------------------------------------

    start() {
        this.stopped = false;
        if (!this.ws) this.connect();
        return this;
    }

    /** Close for good (logout): no reconnect, every request and terminal ends. */
    stop() {
        this.stopped = true;
        clearTimeout(this.timer);
        if (this.ws) {
            const ws = this.ws;
            this.ws = null;
            ws.onclose = null;
            ws.close(1000, 'logout');
        }
        this.dropped('closed');
        this.setState('closed', 'logged out');
    }

    connect() {
        clearTimeout(this.timer);
        this.setState('connecting', this.attempt ? `reconnecting (attempt ${this.attempt + 1})` : 'connecting');
        let ws;
        try {
            ws = new WebSocket(this.url);
        } catch (err) {
            this.scheduleReconnect();
            return;
        }
        ws.binaryType = 'arraybuffer';
        this.ws = ws;
        ws.onopen = () => {
            if (this.ws !== ws) return;
            this.attempt = 0;
            this.setState('open', 'connected');
            this.reopen();
            const waiters = this.waiters;
            this.waiters = [];
            for (const w of waiters) w.resolve();
        };
        ws.onmessage = (ev) => {
            if (this.ws !== ws) return;
            if (typeof ev.data === 'string') this.onText(ev.data);
            else this.onBinary(new Uint8Array(ev.data));
        };
        ws.onerror = () => {};
        ws.onclose = () => {
            if (this.ws !== ws) return;
            this.ws = null;
            this.dropped('connection lost');
            this.afterClose();
        };
    }

    async afterClose() {
        this.setState('closed', 'connection lost');
        if (this.stopped) return;
        if (this.checkSession) {
            let alive = true;
            try {
                alive = await this.checkSession();
            } catch {
                alive = true; // the runtime is unreachable: keep trying
            }
            if (this.stopped) return;
            if (!alive) {
                this.stopped = true;
                this.setState('closed', 'session ended');
                for (const w of this.waiters) w.reject(new OpError('ENOTCONN', 'session ended'));
                this.waiters = [];
                if (this.onLoggedOut) this.onLoggedOut();
                return;
            }
        }
        this.scheduleReconnect();
    }

    scheduleReconnect() {
        if (this.stopped) return;
        const delay = Math.min(MAX_DELAY_MS, 1000 * 2 ** this.attempt);
        this.attempt += 1;
        this.setState('closed', `reconnecting in ${Math.round(delay / 1000)} s`);
        this.timer = setTimeout(() => this.connect(), delay);
    }

    /** Reconnect now instead of waiting (the indicator's button). */
    retryNow() {
        if (this.stopped || this.state !== 'closed') return;
        this.attempt = 0;
        this.connect();
    }

    /** The websocket dropped: in-flight requests fail, terminal numbers are void. */
    dropped(message) {
        const pending = this.pending;
        this.pending = new Map();
        for (const p of pending.values()) p.reject(new OpError('ECONNLOST', message));
        this.byNumber.clear();
        this.held.clear();
        this.heldBytes = 0;
        for (const t of this.terminals) t.detached();
    }

    /** After (re)connecting: open the channels and terminals again. */
    reopen() {
        for (const [channel, callbacks] of this.channels) this.openChannel(channel, callbacks);
        for (const t of this.terminals) t.attach();
    }

    setState(state, detail) {
        this.state = state;
        this.detail = detail;
        for (const cb of [...this.stateListeners]) cb(state, detail);
    }

    onState(cb) {
        this.stateListeners.add(cb);
        return () => this.stateListeners.delete(cb);
    }

    /** Called with {kind, message} for error replies that name no request (id null). */
    onStray(cb) {
        this.stray.add(cb);
        return () => this.stray.delete(cb);
    }

    // --- frames -----------------------------------------------------------------

    onText(text) {
        let msg;
        try {
            msg = JSON.parse(text);
        } catch {
            console.warn('oneos: a text frame that is not JSON', text.slice(0, 200));
            return;
        }
        if (!msg || typeof msg !== 'object') return;
        if (msg.channel === 'term' && msg.event && typeof msg.event.term === 'number') {
            // a terminal's shell ended by itself (exit, Ctrl-D): {"term": N, "end": true, "status": S}
            const t = this.byNumber.get(msg.event.term);
            if (t && msg.event.end) t.ended(msg.event.status);
            return;
        }
        if (typeof msg.channel === 'string') {
            const callbacks = this.channels.get(msg.channel);
            if (callbacks) {
                for (const cb of [...callbacks]) {
                    try {
                        cb(msg.event || {});
                    } catch (err) {
                        console.error('oneos: channel callback failed', msg.channel, err);
                    }
                }
            }
            return;
        }
        if ('id' in msg) {
            const p = msg.id == null ? null : this.pending.get(msg.id);
            if (!p) {
                if (msg.ok === false) {
                    const e = msg.error || {};
                    for (const cb of this.stray) cb({ kind: e.kind || 'EINVAL', message: e.message || 'error' });
                }
                return;
            }
            this.pending.delete(msg.id);
            if (msg.ok) p.resolve(msg.result);
            else {
                const e = msg.error || {};
                p.reject(new OpError(e.kind || 'EIO', e.message || `${p.op} failed`));
            }
        }
    }

    onBinary(bytes) {
        if (!bytes.length) return;
        const n = bytes[0];
        if (n === DEVICE_FRAME) {
            this.onDeviceFrame(bytes);
            return;
        }
        const data = bytes.subarray(1);
        const t = this.byNumber.get(n);
        if (t) {
            t.received(data);
            return;
        }
        // output of a terminal whose term.open answer has not come yet (a reattach's scrollback)
        if (this.heldBytes + data.length > MAX_HELD_FRAMES) return;
        if (!this.held.has(n)) this.held.set(n, []);
        this.held.get(n).push(data.slice());
        this.heldBytes += data.length;
    }

    /** [0xFF][n][channel name, n bytes][JPEG]: the channel's callbacks get {frame: Uint8Array}. */
    onDeviceFrame(bytes) {
        if (bytes.length < 2 || bytes.length < 2 + bytes[1]) return;
        const channel = utf8.decode(bytes.subarray(2, 2 + bytes[1]));
        const callbacks = this.channels.get(channel);
        if (!callbacks) return;
        const frame = bytes.subarray(2 + bytes[1]);
        for (const cb of [...callbacks]) {
            try {
                cb({ frame });
            } catch (err) {
                console.error('oneos: channel callback failed', channel, err);
            }
        }
    }

    sendBinary(n, bytes) {
        if (this.state !== 'open' || !this.ws) return false;
        const frame = new Uint8Array(bytes.length + 1);
        frame[0] = n;
        frame.set(bytes, 1);
        this.ws.send(frame);
        return true;
    }

    // --- requests ---------------------------------------------------------------

    /** Send an operation; resolves with its result, rejects with an OpError. */
    async request(op, args = {}) {
        if (this.state !== 'open') await this.waitForOpen();
        return new Promise((resolve, reject) => {
            const id = this.nextId++;
            this.pending.set(id, { resolve, reject, op });
            try {
                this.ws.send(JSON.stringify({ id, op, args }));
            } catch (err) {
                this.pending.delete(id);
                reject(new OpError('ECONNLOST', 'connection lost'));
            }
        });
    }

    waitForOpen() {
        if (this.stopped) return Promise.reject(new OpError('ENOTCONN', 'not connected'));
        return new Promise((resolve, reject) => {
            const w = {};
            const timer = setTimeout(() => {
                this.waiters = this.waiters.filter((x) => x !== w);
                reject(new OpError('ENOTCONN', 'not connected to the runtime'));
            }, WAIT_FOR_OPEN_MS);
            w.resolve = () => { clearTimeout(timer); resolve(); };
            w.reject = (e) => { clearTimeout(timer); reject(e); };
            this.waiters.push(w);
        });
    }

    // --- channels ---------------------------------------------------------------

    /**
     * Follow *channel*: callback(event) for every event, also after reconnects (the
     * channel is opened again, so its first event may repeat a snapshot). If opening it
     * fails, callback gets {error: MESSAGE, kind: KIND, subscribe: true}. Returns a
     * function that stops following.
     */
    subscribe(channel, callback) {
        let callbacks = this.channels.get(channel);
        const first = !callbacks;
        if (first) {
            callbacks = new Set();
            this.channels.set(channel, callbacks);
        }
        callbacks.add(callback);
        if (first && this.state === 'open') this.openChannel(channel, callbacks);
        return () => {
            const set = this.channels.get(channel);
            if (!set || !set.delete(callback)) return;
            if (set.size === 0) {
                this.channels.delete(channel);
                if (this.state === 'open') this.request('sub.close', { channel }).catch(() => {});
            }
        };
    }

    openChannel(channel, callbacks) {
        this.request('sub.open', { channel }).catch((err) => {
            if (err.kind === 'ECONNLOST' || err.kind === 'ENOTCONN') return; // opened again on reconnect
            for (const cb of [...callbacks]) cb({ error: err.message, kind: err.kind, subscribe: true });
        });
    }

    // --- terminals --------------------------------------------------------------

    /** A shell session: see TerminalSession. */
    terminal(opts) {
        const t = new TerminalSession(this, opts);
        this.terminals.add(t);
        if (this.state === 'open') t.attach();
        return t;
    }
}

/**
 * One terminal: term.open on every (re)connect, with the resume key once it has one.
 * opts: cols, rows, key (a resume key from an earlier page), onData(Uint8Array),
 * onStatus(state, text, number) with state 'opening' | 'open' | 'detached' | 'resuming' | 'lost' |
 * 'failed' | 'ended' | 'closed' (number: this websocket's terminal number, when open),
 * onKey(key) when the key changes, onReset() before a reattach's scrollback arrives.
 */
export class TerminalSession {
    constructor(conn, opts) {
        this.conn = conn;
        this.cols = opts.cols || 80;
        this.rows = opts.rows || 24;
        this.key = opts.key || null;
        this.onData = opts.onData || (() => {});
        this.onStatus = opts.onStatus || (() => {});
        this.onKey = opts.onKey || (() => {});
        this.onReset = opts.onReset || (() => {});
        this.number = null;
        this.closed = false;
        this.opening = false;
        this.encoder = new TextEncoder();
    }

    async attach() {
        if (this.closed || this.opening) return;
        this.opening = true;
        const resuming = Boolean(this.key);
        this.onStatus(resuming ? 'resuming' : 'opening', resuming ? 'reattaching…' : 'starting a shell…');
        if (resuming) this.onReset();
        try {
            let answer;
            try {
                answer = await this.conn.request('term.open', { cols: this.cols, rows: this.rows, resume: this.key });
            } catch (err) {
                if (!resuming || err.kind === 'ECONNLOST' || err.kind === 'ENOTCONN') throw err;
                // the old session is gone (more than 60 s away, or logged out): start a new one
                this.key = null;
                this.onKey(null);
                this.onStatus('lost', `the earlier session ended (${err.message}); starting a new one`);
                answer = await this.conn.request('term.open', { cols: this.cols, rows: this.rows, resume: null });
            }
            if (this.closed) {
                this.conn.request('term.close', { term: answer.term }).catch(() => {});
                return;
            }
            this.number = answer.term;
            if (answer.key !== this.key) {
                this.key = answer.key;
                this.onKey(this.key);
            }
            this.conn.byNumber.set(this.number, this);
            const held = this.conn.held.get(this.number) || [];
            this.conn.held.delete(this.number);
            for (const chunk of held) {
                this.conn.heldBytes -= chunk.length;
                this.received(chunk);
            }
            this.onStatus('open', 'connected', this.number);
            // the window may have been resized while we were away
            this.conn.request('term.resize', { term: this.number, cols: this.cols, rows: this.rows }).catch(() => {});
        } catch (err) {
            if (err.kind !== 'ECONNLOST' && err.kind !== 'ENOTCONN') {
                this.onStatus('failed', `could not open a terminal: ${err.message}`);
            }
        } finally {
            this.opening = false;
        }
    }

    detached() {
        this.number = null;
        this.opening = false;
        if (!this.closed) this.onStatus('detached', 'connection lost: the shell waits 60 s for us');
    }

    received(bytes) {
        this.onData(bytes);
    }

    /** The shell ended on the server's side: nothing to reattach. */
    ended(status) {
        if (this.closed) return;
        this.closed = true;
        this.conn.terminals.delete(this);
        if (this.number != null) this.conn.byNumber.delete(this.number);
        this.number = null;
        this.key = null;
        this.onKey(null);
        this.onStatus('ended', `the shell ended${status == null ? '' : ` (status ${status})`}`);
    }

    /** What the user typed: a string (UTF-8 encoded here) or bytes. */
    send(data) {
        if (this.number == null) return false;
        const bytes = typeof data === 'string' ? this.encoder.encode(data) : data;
        return this.conn.sendBinary(this.number, bytes);
    }

    resize(cols, rows) {
        if (cols === this.cols && rows === this.rows) return;
        this.cols = cols;
        this.rows = rows;
        if (this.number != null) {
            this.conn.request('term.resize', { term: this.number, cols, rows }).catch(() => {});
        }
    }

    close() {
        if (this.closed) return;
        this.closed = true;
        this.conn.terminals.delete(this);
        if (this.number != null) {
            this.conn.byNumber.delete(this.number);
            this.conn.request('term.close', { term: this.number }).catch(() => {});
        }
        this.number = null;
        this.onStatus('closed', 'closed');
    }
}
