// The Devices window: every device of the grid (from the runtimes' statuses, so a dead
// runtime's devices leave at once; the figures from devices.list), a live view of an input
// (a camera's frames, a pin's value, a program's lines) and a way to write to an output.
// Every operation runs as the logged-in user: the devices' runtimes decide who may.
import { html, useState, useEffect, useRef, useErrors, ErrorBar, formatBytes } from './ui.js';
import { runtimes, useLive } from './live.js';

/** How often the figures (readers, values) are asked for while the window is open. */
const LIST_EVERY_MS = 5000;
/** Characters of a text device's output kept in its view. */
const TAIL = 4096;

const address = (d) => `${d.runtime}/${d.name}`;

/** The devices of the live runtimes, as their statuses carry them, by runtime then name. */
function liveDevices() {
    const rows = [];
    for (const s of runtimes.live()) {
        for (const d of s.devices || []) rows.push({ ...d, runtime: s.id });
    }
    return rows.sort((a, b) => a.runtime.localeCompare(b.runtime) || a.name.localeCompare(b.name));
}

function modeText(mode) {
    if (typeof mode !== 'number') return '';
    const chars = 'rwxrwxrwx';
    let s = '';
    for (let i = 0; i < 9; i++) s += mode & (1 << (8 - i)) ? chars[i] : '-';
    return s;
}

/** The last whole line of *text* (or what there is of the last one). */
function lastLine(text) {
    const lines = text.split('\n');
    if (lines.length > 1 && lines[lines.length - 1] === '') lines.pop();
    return lines[lines.length - 1] || '';
}

/**
 * One input's live view: subscribes to device:RT/NAME while shown. A camera's frames are
 * decoded off the page's thread (createImageBitmap) and drawn on a canvas: the CSP
 * (default-src 'self') refuses blob: images. A frame that comes while the previous one is
 * still decoding replaces any other waiting one, so a slow page shows the newest picture and
 * never a backlog. Anything else shows its last line (a pin's value) and the recent text.
 */
function DeviceView({ conn, device, onClose }) {
    const key = address(device);
    const [state, setState] = useState('opening'); // opening | live | ended | failed | waiting
    const [error, setError] = useState(null);
    const [fps, setFps] = useState(0);
    const [text, setText] = useState('');
    const [attempt, setAttempt] = useState(0);
    const canvas = useRef(null);
    const video = device.driver === 'video';

    useEffect(() => {
        let stopped = false;
        let decoding = false;
        let waiting = null; // the newest frame that came while one was decoding
        let drawn = 0;
        let skipped = 0;
        const times = [];
        let tail = '';
        setState('opening');
        setError(null);
        setText('');

        const draw = (bytes) => {
            if (decoding) {
                if (waiting) skipped += 1;
                waiting = bytes;
                return;
            }
            decoding = true;
            createImageBitmap(new Blob([bytes], { type: 'image/jpeg' }))
                .then((bitmap) => {
                    const c = canvas.current;
                    if (!stopped && c) {
                        if (c.width !== bitmap.width || c.height !== bitmap.height) {
                            c.width = bitmap.width;
                            c.height = bitmap.height;
                        }
                        c.getContext('2d').drawImage(bitmap, 0, 0);
                        drawn += 1;
                        c.dataset.frames = String(drawn);
                        c.dataset.skipped = String(skipped);
                        times.push(performance.now());
                    }
                    bitmap.close();
                })
                .catch(() => { /* a frame that does not decode is skipped */ })
                .finally(() => {
                    decoding = false;
                    if (waiting && !stopped) {
                        const next = waiting;
                        waiting = null;
                        draw(next);
                    }
                });
        };

        const off = conn.subscribe(`device:${key}`, (ev) => {
            if (stopped) return;
            if (ev.frame) {
                draw(ev.frame);
                return;
            }
            if (ev.error) {
                // the channel is over (refused, the device failed, its runtime died): stop following it
                setError({ kind: ev.kind || 'EIO', message: ev.error });
                setState('failed');
                off();
                return;
            }
            if (ev.end) {
                setState('ended');
                off();
                return;
            }
            if (ev.open) {
                setState('live');
                return;
            }
            if (typeof ev.data === 'string') {
                tail = ev.resync ? ev.data : (tail + ev.data).slice(-TAIL);
                setText(tail);
            }
        });
        const offState = conn.onState((s) => {
            if (stopped) return;
            if (s === 'closed') setState((old) => (old === 'live' || old === 'opening' ? 'waiting' : old));
        });
        const meter = setInterval(() => {
            const now = performance.now();
            while (times.length && times[0] < now - 2000) times.shift();
            setFps(times.length / 2);
        }, 1000);
        return () => {
            stopped = true;
            off();
            offState();
            clearInterval(meter);
        };
    }, [conn, key, attempt]);

    const over = state === 'failed' || state === 'ended';
    const value = lastLine(text);
    const stateText = {
        opening: 'opening…', live: 'live', ended: 'the device ended its stream', failed: 'stopped',
        waiting: 'connection lost: waiting to reconnect',
    }[state];
    return html`<section class="device-view" data-device-view=${key} data-view-state=${state}
            aria-label=${`${key}, live`}>
        <header class="device-view-head">
            <h3 class="mono">${key}</h3>
            <span class=${'state view-' + state} data-testid="device-view-state">${stateText}</span>
            ${video && html`<span class="muted" data-testid="device-fps">${fps.toFixed(1)} fps</span>`}
            <span class="spacer"></span>
            ${over && html`<button type="button" data-action="retry" onClick=${() => setAttempt((n) => n + 1)}>Retry</button>`}
            <button type="button" class="icon" data-action="close-view" aria-label=${`Stop watching ${key}`}
                title="Stop watching" onClick=${onClose}>×</button>
        </header>
        ${error && html`<div class="error" data-testid="device-error" data-kind=${error.kind} role="alert">
            <span class="error-kind">${error.kind}</span><span class="error-message">${error.message}</span></div>`}
        ${video
            ? html`<div class="device-picture"><canvas ref=${canvas} data-testid="device-preview" data-frames="0"
                role="img" aria-label=${`Live picture of ${key}`}></canvas></div>`
            : html`<div class="device-text">
                <div class="device-value"><span class="muted">value</span>
                    <strong class="mono" data-testid="device-value">${value}</strong></div>
                ${device.driver !== 'gpio' && html`<pre class="device-tail" data-testid="device-tail">${text}</pre>`}
            </div>`}
    </section>`;
}

/** What an output takes: a pin's 0/1 buttons, or a line of text for anything else. */
function OutputControls({ conn, device, info, report, written }) {
    const [line, setLine] = useState('');
    const [busy, setBusy] = useState(false);
    const write = async (data) => {
        setBusy(true);
        try {
            const answer = await conn.request('device.write', { runtime: device.runtime, name: device.name, data });
            written(device, answer);
            return true;
        } catch (err) {
            report(err);
            return false;
        } finally {
            setBusy(false);
        }
    };
    if (device.driver === 'gpio') {
        const on = info && info.value === '1';
        return html`<span class="row-actions">
            <button type="button" data-action="set-1" disabled=${busy} aria-pressed=${on ? 'true' : 'false'}
                onClick=${() => write('1\n')} aria-label=${`Set ${address(device)} to 1`}>On (1)</button>
            <button type="button" data-action="set-0" disabled=${busy} aria-pressed=${info && info.value === '0' ? 'true' : 'false'}
                onClick=${() => write('0\n')} aria-label=${`Set ${address(device)} to 0`}>Off (0)</button>
        </span>`;
    }
    const submit = async (ev) => {
        ev.preventDefault();
        if (await write(`${line}\n`)) setLine('');
    };
    return html`<form class="device-write" onSubmit=${submit}>
        <input type="text" placeholder="a line to write" value=${line} data-testid="device-write-text"
            aria-label=${`A line to write to ${address(device)}`} onInput=${(e) => setLine(e.target.value)} />
        <button type="submit" data-action="write" disabled=${busy}>Write</button>
    </form>`;
}

export function DevicesWindow({ context }) {
    const { conn } = context;
    useLive(runtimes, conn);
    const [errors, report, dismiss] = useErrors();
    const [details, setDetails] = useState({ byKey: new Map(), silent: [] });
    const [watching, setWatching] = useState([]); // the devices with a view open ({runtime, name, driver}), in order
    const [note, setNote] = useState('');
    const rows = liveDevices();
    const holders = new Set(rows.map((d) => d.runtime)).size;
    const signature = rows.map((d) => `${address(d)}:${d.state}`).join(' ');

    const refresh = async () => {
        try {
            const answer = await conn.request('devices.list');
            const byKey = new Map();
            for (const d of answer.devices || []) byKey.set(address(d), d);
            setDetails({ byKey, silent: answer.errors || [] });
        } catch (err) {
            if (err.kind !== 'ECONNLOST' && err.kind !== 'ENOTCONN') report(err);
        }
    };
    // the figures: now, whenever the set of devices changes, and every few seconds
    useEffect(() => {
        refresh();
        const timer = setInterval(refresh, LIST_EVERY_MS);
        return () => clearInterval(timer);
    }, [conn, signature]);

    // a view keeps the device as it was opened: its runtime may die, and the view then says why it stopped
    const toggle = (d) => setWatching((list) => (list.some((w) => address(w) === address(d))
        ? list.filter((w) => address(w) !== address(d))
        : [...list, { runtime: d.runtime, name: d.name, driver: d.driver }]));
    const written = (device, answer) => {
        setNote(`${address(device)}: wrote ${answer && answer.bytes != null ? formatBytes(answer.bytes) : 'it'}`);
        refresh();
    };

    return html`<div class=${watching.length ? 'devices with-views' : 'devices'} data-testid="devices-window">
        <div class="toolbar">
            <span data-testid="device-count"><strong>${rows.length}</strong>${` device${rows.length === 1 ? '' : 's'} on ${
                holders} live runtime${holders === 1 ? '' : 's'}`}</span>
            <span class="spacer"></span>
            ${note && html`<span class="muted" data-testid="device-note">${note}</span>`}
            <button type="button" onClick=${refresh} data-testid="devices-refresh">Refresh</button>
        </div>
        ${runtimes.error && html`<div class="errors"><div class="error" data-testid="window-error"
            data-kind=${runtimes.error.kind}>${runtimes.error.kind}: ${runtimes.error.message}</div></div>`}
        <${ErrorBar} errors=${errors} dismiss=${dismiss} />
        ${details.silent.length > 0 && html`<div class="info" data-testid="devices-silent">
            ${details.silent.map((e) => html`<div>${e.runtime}: ${e.message}</div>`)}</div>`}
        <div class="table-wrap device-table">
            <table class="table" data-testid="devices-table">
                <thead><tr>
                    <th scope="col">Runtime</th><th scope="col">Name</th><th scope="col">Direction</th>
                    <th scope="col">Driver</th><th scope="col">State</th><th scope="col">Owner</th>
                    <th scope="col" class="num">Readers</th><th scope="col">Value</th>
                    <th scope="col"><span class="sr-only">Actions</span></th>
                </tr></thead>
                <tbody>
                    ${rows.length === 0 && html`<tr><td colspan="9" class="muted">No live runtime has a device.</td></tr>`}
                    ${rows.map((d) => {
                        const key = address(d);
                        const info = details.byKey.get(key);
                        const open = watching.some((w) => address(w) === key);
                        const input = d.direction === 'in';
                        const owner = (info && info.owner) || d.owner || '';
                        const mode = info && typeof info.mode === 'number' ? info.mode : d.mode;
                        return html`<tr key=${key} data-device=${key} data-state=${d.state} data-direction=${d.direction}
                                data-driver=${d.driver}>
                            <td class="mono">${d.runtime}</td>
                            <td class="mono">${d.name}</td>
                            <td>${input ? 'input' : 'output'}</td>
                            <td>${d.driver}</td>
                            <td><span class=${'state state-' + (d.state === 'ok' ? 'alive' : 'failed')}
                                data-testid="device-state">${d.state}</span>
                                ${d.reason && html` <span class="reason" data-testid="device-reason">${d.reason}</span>`}</td>
                            <td class="mono" title=${mode != null ? modeText(mode) : ''}>${owner}${mode != null
                                ? html` <span class="muted">${modeText(mode)}</span>` : ''}</td>
                            <td class="num" data-testid="device-readers">${info ? info.readers : '-'}</td>
                            <td class="mono" data-testid="device-row-value">${info && info.value != null ? info.value : ''}</td>
                            <td>${input
                                ? html`<button type="button" data-action=${d.driver === 'video' ? 'preview' : 'watch'}
                                    aria-pressed=${open ? 'true' : 'false'} onClick=${() => toggle(d)}>
                                    ${open ? 'Stop' : d.driver === 'video' ? 'Preview' : 'Watch'}</button>`
                                : html`<${OutputControls} conn=${conn} device=${d} info=${info} report=${report}
                                    written=${written} />`}</td>
                        </tr>`;
                    })}
                </tbody>
            </table>
        </div>
        ${watching.length > 0 && html`<div class="device-views">
            ${watching.map((d) => html`<${DeviceView} key=${address(d)} conn=${conn} device=${d}
                onClose=${() => toggle(d)} />`)}
        </div>`}
    </div>`;
}
