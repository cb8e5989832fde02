// The window manager: windows that move, resize, stack, minimise and close, a taskbar
// with the open windows and a launcher per kind, and the layout kept in localStorage.
import { html, Store, useStore, useEffect, useRef, useState, useCallback } from './ui.js';

const MIN_W = 260;
const MIN_H = 160;
const NARROW = '(max-width: 700px)';

/**
 * The kinds of window, registered by main.js:
 *   kind -> {title, component, launch (shown in the launcher), size: [w, h],
 *            key(props) (windows with the same kind and key are one window), singleton}
 */
export const kinds = new Map();

export function registerKind(kind, spec) {
    kinds.set(kind, spec);
}

export const windows = new Store([]); // [{id, kind, title, props, x, y, w, h, z, min}]
const guards = new Map(); // window id -> () => boolean (false: do not close now)
let layoutKey = null;
let topZ = 10;
let counter = 0;
let saveTimer = null;

function newId() {
    counter += 1;
    return `w${Date.now().toString(36)}${counter}`;
}

function keyOf(kind, props) {
    const spec = kinds.get(kind);
    if (!spec) return null;
    if (spec.singleton) return kind;
    return spec.key ? `${kind}:${spec.key(props || {})}` : null;
}

function area() {
    const el = document.querySelector('.desktop-area');
    return el ? { w: el.clientWidth, h: el.clientHeight } : { w: innerWidth, h: innerHeight - 44 };
}

function clampGeometry(g) {
    const a = area();
    const w = Math.max(MIN_W, Math.min(g.w, a.w));
    const h = Math.max(MIN_H, Math.min(g.h, a.h));
    const x = Math.max(0, Math.min(g.x, a.w - Math.min(w, 120)));
    const y = Math.max(0, Math.min(g.y, a.h - 40));
    return { x, y, w, h };
}

export function isNarrow() {
    return matchMedia(NARROW).matches;
}

// --- the operations -----------------------------------------------------------

/** Open a window of *kind* (or bring forward the one with the same key); returns its id. */
export function openWindow(kind, props = {}, title = null) {
    const spec = kinds.get(kind);
    if (!spec) throw new Error(`no window kind ${kind}`);
    const key = keyOf(kind, props);
    const list = windows.get();
    if (key) {
        const same = list.find((w) => keyOf(w.kind, w.props) === key);
        if (same) {
            focusWindow(same.id, true);
            return same.id;
        }
    }
    const [w0, h0] = spec.size || [640, 420];
    const a = area();
    const n = list.length % 8;
    const geometry = clampGeometry({ x: 24 + n * 28 + Math.max(0, (a.w - w0) / 4), y: 16 + n * 26, w: w0, h: h0 });
    topZ += 1;
    const win = {
        id: newId(),
        kind,
        title: title || (typeof spec.title === 'function' ? spec.title(props, list) : spec.title),
        props,
        ...geometry,
        z: topZ,
        min: false,
        prev: null,
    };
    windows.set([...list, win]);
    focusLater(win.id);
    save();
    return win.id;
}

export function focusWindow(id, moveFocus = false) {
    const list = windows.get();
    const win = list.find((w) => w.id === id);
    if (!win) return;
    const top = Math.max(0, ...list.map((w) => w.z));
    if (win.z !== top || win.min) {
        topZ = Math.max(topZ, top) + 1;
        windows.set(list.map((w) => (w.id === id ? { ...w, z: topZ, min: false } : w)));
        save();
    }
    if (moveFocus) focusLater(id);
}

function focusLater(id) {
    requestAnimationFrame(() => {
        const el = document.querySelector(`[data-window-id="${id}"]`);
        if (!el) return;
        if (!el.contains(document.activeElement)) {
            const target = el.querySelector('[data-autofocus]') || el;
            target.focus({ preventScroll: !isNarrow() });
        }
        if (isNarrow()) el.scrollIntoView({ block: 'start' });
    });
}

export function minimiseWindow(id) {
    windows.update((list) => list.map((w) => (w.id === id ? { ...w, min: true } : w)));
    save();
    const next = focusedWindow();
    if (next) focusLater(next.id);
}

/** Close a window; its guard (an editor with changes) may refuse unless *force*. */
export function closeWindow(id, force = false) {
    const guard = guards.get(id);
    if (!force && guard && guard() === false) return false;
    guards.delete(id);
    windows.update((list) => list.filter((w) => w.id !== id));
    save();
    const next = focusedWindow();
    if (next) focusLater(next.id);
    return true;
}

/** Fill the desktop with the window, or give it back its size and place. */
export function toggleMaximise(id) {
    const a = area();
    windows.update((list) => list.map((w) => {
        if (w.id !== id) return w;
        if (w.prev) return { ...w, ...clampGeometry(w.prev), prev: null };
        return { ...w, prev: { x: w.x, y: w.y, w: w.w, h: w.h }, x: 0, y: 0, w: a.w, h: a.h };
    }));
    focusWindow(id);
    save();
}

export function updateWindow(id, changes) {
    windows.update((list) => list.map((w) => (w.id === id ? { ...w, ...changes } : w)));
    save();
}

export function setGuard(id, fn) {
    if (fn) guards.set(id, fn);
    else guards.delete(id);
}

/** The window on top (not minimised), or null. */
export function focusedWindow() {
    let best = null;
    for (const w of windows.get()) if (!w.min && (!best || w.z > best.z)) best = w;
    return best;
}

// --- the layout in localStorage -------------------------------------------------

/** Load *user*'s layout (windows, positions, sizes) from localStorage. */
export function loadLayout(user) {
    layoutKey = `oneos.desktop.layout.${user}`;
    let saved = [];
    try {
        saved = JSON.parse(localStorage.getItem(layoutKey) || '[]');
    } catch {
        saved = [];
    }
    const list = [];
    for (const w of Array.isArray(saved) ? saved : []) {
        if (!w || typeof w !== 'object' || !kinds.has(w.kind) || typeof w.id !== 'string') continue;
        const g = clampGeometry({ x: +w.x || 0, y: +w.y || 0, w: +w.w || 600, h: +w.h || 400 });
        const prev = w.prev && typeof w.prev === 'object' ? w.prev : null;
        list.push({ id: w.id, kind: w.kind, title: String(w.title || kinds.get(w.kind).title), props: w.props || {},
            ...g, z: +w.z || 1, min: Boolean(w.min), prev });
    }
    topZ = Math.max(10, ...list.map((w) => w.z));
    windows.set(list);
}

function save() {
    clearTimeout(saveTimer);
    saveTimer = setTimeout(saveNow, 200);
}

function saveNow() {
    if (!layoutKey) return;
    const list = windows.get().map(({ id, kind, title, props, x, y, w, h, z, min, prev }) => ({ id, kind, title, props, x, y, w, h, z, min, prev }));
    try {
        localStorage.setItem(layoutKey, JSON.stringify(list));
    } catch {
        /* storage full or refused: the layout is not kept */
    }
}

export function forgetWindows() {
    saveNow();
    clearTimeout(saveTimer);
    layoutKey = null;
    guards.clear();
    windows.set([]);
}

addEventListener('beforeunload', () => saveNow());

// the browser window shrank: keep every window reachable
let resizeTimer = null;
addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
        if (isNarrow() || !windows.get().length) return;
        windows.update((list) => list.map((w) => {
            const g = clampGeometry(w);
            return g.x === w.x && g.y === w.y && g.w === w.w && g.h === w.h ? w : { ...w, ...g };
        }));
    }, 150);
});

// --- the components -------------------------------------------------------------

function useNarrow() {
    const [narrow, setNarrow] = useState(isNarrow());
    useEffect(() => {
        const mq = matchMedia(NARROW);
        const on = () => setNarrow(mq.matches);
        mq.addEventListener('change', on);
        return () => mq.removeEventListener('change', on);
    }, []);
    return narrow;
}

/** The windows of the desktop (the area above the taskbar). */
export function WindowArea({ context }) {
    const list = useStore(windows);
    const narrow = useNarrow();
    const top = focusedWindow();
    return html`<main class=${'desktop-area' + (narrow ? ' narrow' : '')} data-testid="desktop">
        ${list.length === 0 && html`<div class="empty-desktop">
            <p>Open a window from the taskbar below.</p></div>`}
        ${list.map((w) => html`<${Window} key=${w.id} win=${w} active=${top && top.id === w.id}
            narrow=${narrow} context=${context} />`)}
    </main>`;
}

function Window({ win, active, narrow, context }) {
    const spec = kinds.get(win.kind);
    const root = useRef(null);
    const titleId = `title-${win.id}`;

    const api = useRef(null);
    if (!api.current) api.current = {};
    Object.assign(api.current, {
        id: win.id,
        active,
        visible: !win.min,
        close: (force) => closeWindow(win.id, force),
        setTitle: (title) => { if (title !== win.title) updateWindow(win.id, { title }); },
        setProps: (props) => updateWindow(win.id, { props: { ...win.props, ...props } }),
        setGuard: (fn) => setGuard(win.id, fn),
    });

    const drag = useCallback((ev, mode) => {
        if (ev.button !== 0 || isNarrow()) return;
        if (mode === 'move' && ev.target.closest('button, input, select, a')) return;
        ev.preventDefault();
        focusWindow(win.id);
        const el = root.current;
        const start = { x: ev.clientX, y: ev.clientY, left: el.offsetLeft, top: el.offsetTop,
            w: el.offsetWidth, h: el.offsetHeight };
        const a = area();
        const target = ev.currentTarget;
        target.setPointerCapture(ev.pointerId);
        el.classList.add(mode === 'move' ? 'moving' : 'resizing');
        const onMove = (e) => {
            const dx = e.clientX - start.x;
            const dy = e.clientY - start.y;
            if (mode === 'move') {
                el.style.left = `${Math.max(-start.w + 80, Math.min(a.w - 80, start.left + dx))}px`;
                el.style.top = `${Math.max(0, Math.min(a.h - 32, start.top + dy))}px`;
            } else {
                el.style.width = `${Math.max(MIN_W, Math.min(a.w - start.left, start.w + dx))}px`;
                el.style.height = `${Math.max(MIN_H, Math.min(a.h - start.top, start.h + dy))}px`;
            }
        };
        const onUp = () => {
            target.removeEventListener('pointermove', onMove);
            target.removeEventListener('pointerup', onUp);
            target.removeEventListener('pointercancel', onUp);
            el.classList.remove('moving', 'resizing');
            const g = { x: el.offsetLeft, y: el.offsetTop, w: el.offsetWidth, h: el.offsetHeight };
            if (g.x !== start.left || g.y !== start.top || g.w !== start.w || g.h !== start.h) {
                updateWindow(win.id, { ...g, prev: null });
            }
        };
        target.addEventListener('pointermove', onMove);
        target.addEventListener('pointerup', onUp);
        target.addEventListener('pointercancel', onUp);
    }, [win.id]);

    // keyboard: Alt+arrows move the focused window, Alt+Shift+arrows resize it
    const onKeyDown = (ev) => {
        if (!ev.altKey || narrow || !['ArrowLeft', 'ArrowRight', 'ArrowUp', 'ArrowDown'].includes(ev.key)) return;
        ev.preventDefault();
        const step = 20;
        const dx = ev.key === 'ArrowLeft' ? -step : ev.key === 'ArrowRight' ? step : 0;
        const dy = ev.key === 'ArrowUp' ? -step : ev.key === 'ArrowDown' ? step : 0;
        const g = ev.shiftKey ? { x: win.x, y: win.y, w: win.w + dx, h: win.h + dy } : { x: win.x + dx, y: win.y + dy, w: win.w, h: win.h };
        updateWindow(win.id, { ...clampGeometry(g), prev: null });
    };

    const style = narrow ? {} : { left: `${win.x}px`, top: `${win.y}px`, width: `${win.w}px`, height: `${win.h}px`, zIndex: String(win.z) };
    const Body = spec.component;
    return html`<section ref=${root} class=${'win' + (active ? ' active' : '') + (win.min ? ' minimised' : '')}
            data-window=${win.kind} data-window-id=${win.id} aria-labelledby=${titleId} tabindex="-1"
            style=${style} onPointerDownCapture=${() => { if (!active) focusWindow(win.id); }} onKeyDown=${onKeyDown}>
        <header class="win-head" onPointerDown=${(e) => drag(e, 'move')}
                onDblClick=${(e) => { if (!e.target.closest('button') && !narrow) toggleMaximise(win.id); }}>
            <h2 id=${titleId} class="win-title">${win.title}</h2>
            <button type="button" class="icon" data-action="minimise" title="Minimise" aria-label=${`Minimise ${win.title}`}
                onClick=${() => minimiseWindow(win.id)}>–</button>
            ${!narrow && html`<button type="button" class="icon" data-action="maximise" title=${win.prev ? 'Restore' : 'Maximise'}
                aria-label=${`${win.prev ? 'Restore' : 'Maximise'} ${win.title}`} aria-pressed=${win.prev ? 'true' : 'false'}
                onClick=${() => toggleMaximise(win.id)}>${win.prev ? '❐' : '□'}</button>`}
            <button type="button" class="icon" data-action="close" title="Close" aria-label=${`Close ${win.title}`}
                onClick=${() => closeWindow(win.id)}>×</button>
        </header>
        <div class="win-body">
            <${Body} win=${api.current} props=${win.props} context=${context} />
        </div>
        <div class="grip" aria-hidden="true" onPointerDown=${(e) => drag(e, 'resize')}></div>
    </section>`;
}

/** The taskbar: launchers, the open windows, the connection, the user. */
export function Taskbar({ conn, session, onLogout }) {
    const list = useStore(windows);
    const top = focusedWindow();
    const [state, setState] = useState([conn.state, conn.detail]);
    useEffect(() => {
        const off = conn.onState((s, d) => setState([s, d]));
        // the socket may have opened between the first render and this effect: show where it is now
        setState([conn.state, conn.detail]);
        return off;
    }, [conn]);
    const launchers = [...kinds.entries()].filter(([, spec]) => spec.launch);
    const taskClick = (w) => {
        if (top && top.id === w.id && !w.min) minimiseWindow(w.id);
        else focusWindow(w.id, true);
    };
    const [connState, detail] = state;
    return html`<nav class="taskbar" aria-label="Taskbar">
        <span class="brand" aria-hidden="true">OneOS</span>
        <div class="launchers" role="group" aria-label="Open a window">
            ${launchers.map(([kind, spec]) => html`<button type="button" class="launch" data-launch=${kind}
                title=${`Open ${spec.launch}`} onClick=${() => openWindow(kind)}>${spec.launch}</button>`)}
        </div>
        <div class="tasks" role="group" aria-label="Open windows">
            ${list.map((w) => html`<button type="button" key=${w.id} data-task=${w.id} data-task-kind=${w.kind}
                class=${'task' + (top && top.id === w.id ? ' current' : '') + (w.min ? ' min' : '')}
                aria-pressed=${top && top.id === w.id ? 'true' : 'false'} title=${w.title}
                onClick=${() => taskClick(w)}>${w.title}</button>`)}
        </div>
        <button type="button" class="conn" data-conn=${connState === 'open' ? 'open' : 'closed'}
            data-conn-detail=${connState} data-testid="conn" title=${`${session.runtime || 'runtime'}: ${detail}`}
            aria-label=${`Connection: ${detail}`} onClick=${() => conn.retryNow()}>
            <span class="dot" aria-hidden="true"></span><span class="conn-text">${connState === 'open' ? session.runtime || 'connected' : detail}</span>
        </button>
        <span class="user" data-testid="user" title="Logged in as">${session.user}</span>
        <button type="button" data-testid="logout" onClick=${onLogout}>Log out</button>
    </nav>`;
}
