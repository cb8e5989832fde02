// The Pipelines window: the pipes between agents as a graph (agents as nodes, pipes
// as edges with the bytes they carried), and a form to start a pipeline.
import { html, useState, useEffect, useErrors, ErrorBar, formatBytes, basename } from './ui.js';
import { agents, pipes, useLive, ENDED } from './live.js';
import { openWindow } from './wm.js';

const NODE_W = 210;
const NODE_H = 48;
const COL_GAP = 110;
const ROW_GAP = 22;
const PAD = 16;

function agentOf(endpoint) {
    const at = endpoint.lastIndexOf('@');
    return at < 0 ? { id: endpoint, runtime: '' } : { id: endpoint.slice(0, at), runtime: endpoint.slice(at + 1) };
}

/** Place the pipes' endpoints: a band of rows per connected pipeline, a column per stage. */
export function layout(rows) {
    const nodes = new Map(); // endpoint -> {key, depth, comp, x, y}
    const out = new Map();
    const inn = new Map();
    for (const r of rows) {
        for (const k of [r.from, r.to]) if (!nodes.has(k)) nodes.set(k, { key: k, depth: 0, comp: -1 });
        if (!out.has(r.from)) out.set(r.from, []);
        out.get(r.from).push(r.to);
        if (!inn.has(r.to)) inn.set(r.to, []);
        inn.get(r.to).push(r.from);
    }
    // depth: the longest path from a source (bounded, so a cycle cannot loop forever)
    for (let pass = 0; pass < nodes.size; pass++) {
        let changed = false;
        for (const r of rows) {
            const d = nodes.get(r.from).depth + 1;
            if (d > nodes.get(r.to).depth && d < nodes.size) {
                nodes.get(r.to).depth = d;
                changed = true;
            }
        }
        if (!changed) break;
    }
    // connected components, in the order their first pipe came
    let comps = 0;
    for (const r of rows) {
        const start = nodes.get(r.from);
        if (start.comp >= 0) continue;
        const stack = [start.key];
        while (stack.length) {
            const k = stack.pop();
            const n = nodes.get(k);
            if (n.comp >= 0) continue;
            n.comp = comps;
            for (const m of [...(out.get(k) || []), ...(inn.get(k) || [])]) stack.push(m);
        }
        comps += 1;
    }
    let y = PAD;
    let width = 0;
    for (let c = 0; c < comps; c++) {
        const members = [...nodes.values()].filter((n) => n.comp === c);
        const perDepth = new Map();
        for (const n of members) {
            const i = perDepth.get(n.depth) || 0;
            perDepth.set(n.depth, i + 1);
            n.x = PAD + n.depth * (NODE_W + COL_GAP);
            n.y = y + i * (NODE_H + ROW_GAP);
            width = Math.max(width, n.x + NODE_W + PAD);
        }
        const tallest = Math.max(...perDepth.values());
        y += tallest * (NODE_H + ROW_GAP) + ROW_GAP;
    }
    return { nodes, width: Math.max(width, 300), height: Math.max(y, 120) };
}

function rate(mbps) {
    const v = Number(mbps) || 0;
    if (v <= 0) return '';
    return v >= 1 ? `${v.toFixed(1)} MB/s` : `${(v * 1024).toFixed(0)} KB/s`;
}

function Graph({ rows, arrowId, open }) {
    const { nodes, width, height } = layout(rows);
    return html`<svg class="pipe-graph" data-testid="pipe-graph" width=${width} height=${height}
            viewBox=${`0 0 ${width} ${height}`} role="img" aria-label=${`${rows.length} pipe${rows.length === 1 ? '' : 's'}`}>
        <defs><marker id=${arrowId} viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
            <path d="M 0 0 L 10 5 L 0 10 z" class="arrow-head" /></marker></defs>
        ${rows.map((r) => {
            const a = nodes.get(r.from);
            const b = nodes.get(r.to);
            const x1 = a.x + NODE_W;
            const y1 = a.y + NODE_H / 2;
            const x2 = b.x;
            const y2 = b.y + NODE_H / 2;
            const mx = (x1 + x2) / 2;
            const live = !ENDED.includes(r.state);
            return html`<g class=${'edge' + (live ? ' live' : ' ended')} data-edge=${`${r.from}->${r.to}`}
                    data-bytes=${r.bytes} data-state=${r.state}>
                <title>${r.from} → ${r.to}: ${r.bytes} bytes (${r.state})</title>
                <path d=${`M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2 - 2} ${y2}`} marker-end=${`url(#${arrowId})`} />
                <text x=${mx} y=${(y1 + y2) / 2 - 7} text-anchor="middle" class="edge-bytes">${formatBytes(r.bytes)}</text>
                <text x=${mx} y=${(y1 + y2) / 2 + 13} text-anchor="middle" class="edge-rate">${rate(r.mb_per_s)}</text>
            </g>`;
        })}
        ${[...nodes.values()].map((n) => {
            const { id, runtime } = agentOf(n.key);
            const info = agents.byId.get(id);
            const name = info ? info.name || basename(info.program || '') || id : id;
            const state = info ? info.state : 'unknown';
            return html`<g class=${'node state-' + state} data-node=${n.key} data-state=${state} tabindex="0" role="button"
                    aria-label=${`${name} on ${runtime}, ${state}: open its window`}
                    onClick=${() => open(id, name)} onKeyDown=${(e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); open(id, name); } }}
                    transform=${`translate(${n.x} ${n.y})`}>
                <rect width=${NODE_W} height=${NODE_H} rx="6" />
                <text x="10" y="19" class="node-name">${name.length > 20 ? name.slice(0, 19) + '…' : name}</text>
                <text x="10" y="37" class="node-sub">${id} @ ${runtime} · ${state}</text>
            </g>`;
        })}
    </svg>`;
}

export function PipelinesWindow({ win, context }) {
    const { conn } = context;
    useLive(pipes, conn);
    useLive(agents, conn);
    const [text, setText] = useState('');
    const [busy, setBusy] = useState(false);
    const [started, setStarted] = useState([]);
    const [showEnded, setShowEnded] = useState(true);
    const [errors, report, dismiss] = useErrors();

    useEffect(() => {
        conn.request('pipes.list', {}).then((rows) => pipes.set(rows || [], false)).catch(report);
    }, [conn]);

    const open = (id, name) => openWindow('process', { id }, `${name} (${id})`);
    const start = async (ev) => {
        ev.preventDefault();
        if (!text.trim() || busy) return;
        setBusy(true);
        try {
            const infos = await conn.request('proc.pipeline', { text: text.trim() });
            agents.putAll(infos);
            setStarted(infos);
            conn.request('pipes.list', {}).then((rows) => pipes.set(rows || [], false)).catch(() => {});
        } catch (err) {
            report(err);
        }
        setBusy(false);
    };

    let rows = pipes.rows;
    if (!showEnded) rows = rows.filter((r) => !ENDED.includes(r.state));
    return html`<div class="pipelines">
        <form class="toolbar" onSubmit=${start} data-testid="pipeline-form">
            <input type="text" class="grow mono" placeholder="gen.py @rt-1 | wc -c @rt-2" aria-label="Pipeline"
                data-testid="pipeline-text" data-autofocus value=${text} onInput=${(e) => setText(e.target.value)} />
            <button type="submit" class="primary" disabled=${busy} data-testid="pipeline-start">Start</button>
        </form>
        <${ErrorBar} errors=${errors} dismiss=${dismiss} />
        ${pipes.error && html`<div class="errors"><div class="error" data-kind=${pipes.error.kind}>${pipes.error.kind}: ${pipes.error.message}</div></div>`}
        ${started.length > 0 && html`<p class="started" data-testid="pipeline-started">Started:${' '}
            ${started.map((a, i) => html`${i ? ' | ' : ''}<button type="button" class="link" data-agent-link=${a.id}
                onClick=${() => open(a.id, a.name || a.id)}>${a.name || basename(a.program || '') || a.id} (${a.id} @ ${a.runtime})</button>`)}
        </p>`}
        <div class="toolbar">
            <label class="check"><input type="checkbox" checked=${showEnded} onChange=${(e) => setShowEnded(e.target.checked)} />
                show ended</label>
            <span class="muted">${rows.length} pipe${rows.length === 1 ? '' : 's'}${pipes.at ? `, updated ${new Date(pipes.at).toLocaleTimeString()}` : ''}</span>
        </div>
        <div class="graph-wrap">
            ${rows.length ? html`<${Graph} rows=${rows} arrowId=${`arrow-${win.id}`} open=${open} />`
                : html`<p class="muted pad">No pipes. Start a pipeline above: stages separated by |, each with @RUNTIME if it must run there.</p>`}
        </div>
    </div>`;
}
