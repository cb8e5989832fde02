// The page's view layer: preact + htm (vendored, loaded by relative URL), small shared
// components (error bars, dialogs, charts' formatting helpers) and an observable store.
import { h, render, Fragment } from '../vendor/preact/preact.module.js';
import {
    useState, useEffect, useRef, useMemo, useCallback, useLayoutEffect, useReducer,
} from '../vendor/preact/hooks.module.js';
import htm from '../vendor/htm/htm.module.js';

export const html = htm.bind(h);
export { h, render, Fragment, useState, useEffect, useRef, useMemo, useCallback, useLayoutEffect, useReducer };

/** A value others can watch: get(), set(v), update(fn), subscribe(cb) -> unsubscribe. */
export class Store {
    constructor(value) {
        this.value = value;
        this.listeners = new Set();
    }
    get() { return this.value; }
    set(value) {
        this.value = value;
        for (const cb of [...this.listeners]) cb(value);
    }
    update(fn) { this.set(fn(this.value)); }
    subscribe(cb) {
        this.listeners.add(cb);
        return () => this.listeners.delete(cb);
    }
}

/** Re-render the calling component when *store* changes; returns its value. */
export function useStore(store) {
    const [, force] = useReducer((n) => n + 1, 0);
    const value = store.get();
    const seen = useRef(value);
    seen.current = value;
    useEffect(() => {
        const off = store.subscribe(() => force());
        if (store.get() !== seen.current) force(); // changed between the render and now
        return off;
    }, [store]);
    return value;
}

/** A counter bumped at most once per animation frame when *emitter* says it changed. */
export function useTicker(subscribe, deps = []) {
    const [n, force] = useReducer((x) => x + 1, 0);
    useEffect(() => {
        let frame = 0;
        const off = subscribe(() => {
            if (!frame) frame = requestAnimationFrame(() => { frame = 0; force(); });
        });
        return () => { off(); if (frame) cancelAnimationFrame(frame); };
    }, deps);
    return n;
}

/** Errors shown in the window that asked: [errors, report(err), dismiss(i), clear()]. */
export function useErrors() {
    const [errors, setErrors] = useState([]);
    const report = useCallback((err) => {
        const e = toError(err);
        setErrors((list) => [...list.slice(-4), e]);
        return e;
    }, []);
    const dismiss = useCallback((i) => setErrors((list) => list.filter((_, j) => j !== i)), []);
    const clear = useCallback(() => setErrors([]), []);
    return [errors, report, dismiss, clear];
}

/** {kind, message} from anything thrown: an OpError, an Error, a string. */
export function toError(err) {
    if (err && typeof err === 'object' && 'kind' in err && 'message' in err) {
        return { kind: String(err.kind || 'ERROR'), message: String(err.message) };
    }
    if (err instanceof Error) return { kind: 'ERROR', message: err.message };
    return { kind: 'ERROR', message: String(err) };
}

export function ErrorBar({ errors, dismiss }) {
    if (!errors.length) return null;
    return html`<div class="errors" role="alert">
        ${errors.map((e, i) => html`<div class="error" data-testid="window-error" data-kind=${e.kind}>
            <span class="error-kind">${e.kind}</span>
            <span class="error-message">${e.message}</span>
            <button type="button" class="icon" title="Dismiss" aria-label="Dismiss error"
                onClick=${() => dismiss(i)}>×</button>
        </div>`)}
    </div>`;
}

/**
 * A modal dialog on the native <dialog> element: Escape (its cancel event) and the
 * close button call onClose; focus goes to the first field (or [autofocus]).
 */
export function Modal({ title, onClose, children, testid = 'dialog', wide = false }) {
    const ref = useRef(null);
    useLayoutEffect(() => {
        const d = ref.current;
        const before = document.activeElement;
        if (!d.open) d.showModal();
        const first = d.querySelector('[autofocus], input, select, textarea, button.primary, button');
        if (first) first.focus();
        return () => {
            if (d.open) d.close();
            if (before && before.isConnected && typeof before.focus === 'function') before.focus();
        };
    }, []);
    const cancel = (ev) => { ev.preventDefault(); onClose(); };
    return html`<dialog ref=${ref} class=${'modal' + (wide ? ' wide' : '')} data-testid=${testid}
            aria-label=${title} onCancel=${cancel}>
        <header class="modal-head"><h2>${title}</h2>
            <button type="button" class="icon" aria-label="Close" title="Close (Escape)" onClick=${onClose}>×</button>
        </header>
        <div class="modal-body">${children}</div>
    </dialog>`;
}

export function ConfirmDialog({ title, message, okText = 'OK', danger = false, onOk, onClose }) {
    return html`<${Modal} title=${title} onClose=${onClose} testid="confirm-dialog">
        <p>${message}</p>
        <div class="buttons">
            <button type="button" onClick=${onClose}>Cancel</button>
            <button type="button" autofocus class=${danger ? 'danger primary' : 'primary'} data-testid="confirm-ok"
                onClick=${() => { onClose(); onOk(); }}>${okText}</button>
        </div>
    <//>`;
}

export function PromptDialog({ title, label, value = '', okText = 'OK', onOk, onClose }) {
    const [text, setText] = useState(value);
    const [errors, report, dismiss] = useErrors();
    const [busy, setBusy] = useState(false);
    const submit = async (ev) => {
        ev.preventDefault();
        if (!text.trim()) return;
        setBusy(true);
        try {
            await onOk(text.trim());
            onClose();
        } catch (err) {
            report(err);
            setBusy(false);
        }
    };
    return html`<${Modal} title=${title} onClose=${onClose} testid="prompt-dialog">
        <form onSubmit=${submit}>
            <label class="field">${label}
                <input type="text" autofocus value=${text} data-testid="prompt-input"
                    onInput=${(e) => setText(e.target.value)} />
            </label>
            <${ErrorBar} errors=${errors} dismiss=${dismiss} />
            <div class="buttons">
                <button type="button" onClick=${onClose}>Cancel</button>
                <button type="submit" class="primary" disabled=${busy} data-testid="prompt-ok">${okText}</button>
            </div>
        </form>
    <//>`;
}

// --- formatting ---------------------------------------------------------------

export function formatBytes(n) {
    if (n == null || Number.isNaN(n)) return '-';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = Number(n);
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function formatMB(mb) {
    if (mb == null || Number.isNaN(mb)) return '-';
    return mb >= 1024 ? `${(mb / 1024).toFixed(1)} GB` : `${Math.round(mb)} MB`;
}

export function formatDuration(s) {
    if (s == null || Number.isNaN(s)) return '-';
    s = Math.max(0, Math.floor(s));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
    const hrs = Math.floor(s / 3600);
    if (hrs < 48) return `${hrs}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
    return `${Math.floor(hrs / 24)}d${hrs % 24}h`;
}

export function formatTime(unix) {
    if (!unix) return '-';
    const d = new Date(unix * 1000);
    const now = new Date();
    const pad = (x) => String(x).padStart(2, '0');
    const time = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    if (d.toDateString() === now.toDateString()) return time;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

export function formatMode(mode, kind) {
    const bits = Number(mode) || 0;
    const chars = 'rwxrwxrwx';
    let s = kind === 'dir' ? 'd' : '-';
    for (let i = 0; i < 9; i++) s += bits & (1 << (8 - i)) ? chars[i] : '-';
    return s;
}

/** Split a command line into words: whitespace separates, '...' and "..." quote, \ escapes. */
export function splitArgs(text) {
    const out = [];
    let cur = null;
    let quote = null;
    for (let i = 0; i < text.length; i++) {
        const c = text[i];
        if (quote) {
            if (c === quote) quote = null;
            else if (c === '\\' && quote === '"' && i + 1 < text.length) cur += text[++i];
            else cur += c;
        } else if (c === "'" || c === '"') {
            quote = c;
            cur = cur ?? '';
        } else if (c === '\\' && i + 1 < text.length) {
            cur = (cur ?? '') + text[++i];
        } else if (/\s/.test(c)) {
            if (cur !== null) { out.push(cur); cur = null; }
        } else {
            cur = (cur ?? '') + c;
        }
    }
    if (cur !== null) out.push(cur);
    return out;
}

/** Quote words for display so that splitArgs gives them back. */
export function joinArgs(words) {
    return words.map((w) => (w === '' || /[\s'"\\]/.test(w) ? `'${w.replace(/'/g, `'"'"'`)}'` : w)).join(' ');
}

export function basename(path) {
    const parts = String(path).split('/').filter(Boolean);
    return parts.length ? parts[parts.length - 1] : '/';
}

export function dirname(path) {
    const parts = String(path).split('/').filter(Boolean);
    parts.pop();
    return '/' + parts.join('/');
}

export function joinPath(dir, name) {
    return (dir.endsWith('/') ? dir : dir + '/') + name;
}
