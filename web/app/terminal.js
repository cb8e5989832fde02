// The Terminal window: a shell session (term.open) in xterm.js. Each window is its own
// session; after a reconnect (or a reload within 60 s) it reattaches with its key and
// the server's scrollback.
import './cspshim.js';
import { Terminal } from '../vendor/xterm/xterm.module.js';
import { FitAddon } from '../vendor/xterm-addon-fit/addon-fit.module.js';
import { html, useEffect, useRef, useState } from './ui.js';

const KEY_PREFIX = 'oneos.term.';

function storedKey(winId) {
    try {
        return sessionStorage.getItem(KEY_PREFIX + winId);
    } catch {
        return null;
    }
}

function storeKey(winId, key) {
    try {
        if (key) sessionStorage.setItem(KEY_PREFIX + winId, key);
        else sessionStorage.removeItem(KEY_PREFIX + winId);
    } catch {
        /* not kept: a reload starts a new shell */
    }
}

/** Forget every terminal's resume key (logout). */
export function forgetTerminalKeys() {
    try {
        for (let i = sessionStorage.length - 1; i >= 0; i--) {
            const k = sessionStorage.key(i);
            if (k && k.startsWith(KEY_PREFIX)) sessionStorage.removeItem(k);
        }
    } catch {
        /* nothing kept */
    }
}

const THEME = {
    background: '#1b1e24',
    foreground: '#d8dee9',
    cursor: '#f0f0f0',
    selectionBackground: '#3b4a63',
};

export function TerminalWindow({ win, context }) {
    const { conn } = context;
    const box = useRef(null);
    const session = useRef(null);
    const term = useRef(null);
    const [status, setStatus] = useState({ state: 'opening', text: 'starting a shell…', number: null });
    const [generation, setGeneration] = useState(0); // bumped by "New shell": a new xterm and session

    useEffect(() => {
        const t = new Terminal({
            cursorBlink: true,
            fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
            fontSize: 14,
            scrollback: 5000,
            theme: THEME,
            allowProposedApi: false,
        });
        const fit = new FitAddon();
        t.loadAddon(fit);
        t.open(box.current);
        term.current = t;
        try {
            fit.fit();
        } catch {
            /* not laid out yet */
        }
        const s = conn.terminal({
            cols: t.cols,
            rows: t.rows,
            key: storedKey(win.id),
            onData: (bytes) => t.write(bytes),
            onReset: () => t.reset(),
            onKey: (key) => storeKey(win.id, key),
            onStatus: (state, text, number = null) => {
                setStatus({ state, text, number });
                if (state === 'lost' || state === 'ended') t.write(`\r\n\x1b[2m[${text}]\x1b[0m\r\n`);
            },
        });
        session.current = s;
        const input = t.onData((data) => s.send(data));
        const binary = t.onBinary((data) => {
            const bytes = new Uint8Array(data.length);
            for (let i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 0xff;
            s.send(bytes);
        });
        let timer = null;
        const ro = new ResizeObserver(() => {
            clearTimeout(timer);
            timer = setTimeout(() => {
                if (!box.current || box.current.offsetParent === null) return; // minimised
                try {
                    fit.fit();
                } catch {
                    return;
                }
                s.resize(t.cols, t.rows);
            }, 80);
        });
        ro.observe(box.current);
        return () => {
            clearTimeout(timer);
            ro.disconnect();
            input.dispose();
            binary.dispose();
            s.close();
            t.dispose();
        };
    }, [conn, generation]);

    // closing the window ends the shell: forget its key (a reload keeps it)
    useEffect(() => {
        win.setGuard(() => {
            storeKey(win.id, null);
            return true;
        });
        return () => win.setGuard(null);
    }, []);

    useEffect(() => {
        if (win.active && win.visible && term.current) term.current.focus();
    }, [win.active, win.visible]);

    return html`<div class="terminal">
        <div class="term-box" ref=${box} data-testid="terminal" data-term-state=${status.state}
            data-term-number=${status.number == null ? '' : String(status.number)}></div>
        <div class=${'term-status term-' + status.state} aria-live="polite">
            <span data-testid="terminal-status">${status.text}</span>
            ${(status.state === 'ended' || status.state === 'failed') && html`<button type="button" class="term-new"
                data-testid="terminal-new" onClick=${() => setGeneration((g) => g + 1)}>New shell</button>`}
        </div>
    </div>`;
}
