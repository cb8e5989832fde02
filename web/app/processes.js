// The Processes window (the process table) and a window per process: its output
// live, its standard input, its CPU and memory, run it again.
import {
    html, useState, useEffect, useRef, useMemo, useErrors, ErrorBar, Modal,
    formatDuration, formatBytes, splitArgs, joinArgs, basename,
} from './ui.js';
import { agents, runtimes, useLive, ENDED } from './live.js';
import { openWindow } from './wm.js';
import { Chart } from './chart.js';

/** What an ended agent's status was, shell style; '' while it runs. */
export function exitText(a) {
    if (!ENDED.includes(a.state)) return '';
    if (a.state === 'exited') return `exit ${a.exit_code ?? 0}`;
    if (a.state === 'killed') return a.signal ? `signal ${a.signal}` : 'killed';
    return a.reason ? `${a.state}: ${a.reason}` : a.state;
}

function displayName(a) {
    return a.name || basename(a.program || '') || a.id;
}

// the state column sorts the running first, then the paused, then the ended
const STATE_RANK = { running: 0, paused: 1 };

const COLUMNS = [
    { key: 'id', label: 'ID', value: (a) => a.id },
    { key: 'name', label: 'Program', value: (a) => `${displayName(a)} ${(a.args || []).join(' ')}` },
    { key: 'runtime', label: 'Runtime', value: (a) => a.runtime },
    { key: 'user', label: 'User', value: (a) => a.user || '' },
    { key: 'state', label: 'State', value: (a) => `${STATE_RANK[a.state] ?? 3}${a.state}`, text: (a) => a.state },
    { key: 'cpu', label: 'CPU %', value: (a) => Number(a.cpu_percent) || 0, numeric: true },
    { key: 'mem', label: 'Mem MB', value: (a) => Number(a.memory_mb) || 0, numeric: true },
    { key: 'uptime', label: 'Uptime', value: (a) => Number(a.uptime) || 0, numeric: true },
    { key: 'exit', label: 'Exit', value: (a) => exitText(a) },
];

/** Ask for the agent operation *op* and record the answer; errors go to *report*. */
export async function agentOp(conn, op, id, report) {
    try {
        const info = await conn.request(op, { id });
        agents.put(info, false);
        return info;
    } catch (err) {
        report(err);
        return null;
    }
}

function Actions({ a, conn, report }) {
    const ended = ENDED.includes(a.state);
    const stop = (ev) => ev.stopPropagation();
    return html`<span class="row-actions" onClick=${stop} onKeyDown=${stop}>
        ${a.state === 'paused'
            ? html`<button type="button" data-action="resume" disabled=${ended} onClick=${() => agentOp(conn, 'proc.resume', a.id, report)}
                aria-label=${`Resume ${a.id}`}>Resume</button>`
            : html`<button type="button" data-action="pause" disabled=${ended} onClick=${() => agentOp(conn, 'proc.pause', a.id, report)}
                aria-label=${`Pause ${a.id}`}>Pause</button>`}
        <button type="button" class="danger" data-action="kill" disabled=${ended}
            onClick=${() => agentOp(conn, 'proc.kill', a.id, report)} aria-label=${`Kill ${a.id}`}>Kill</button>
    </span>`;
}

export function ProcessesWindow({ context }) {
    const { conn } = context;
    useLive(agents, conn);
    useLive(runtimes, conn);
    const [errors, report, dismiss] = useErrors();
    const [filter, setFilter] = useState('');
    const [sort, setSort] = useState({ key: 'state', dir: 1 });
    const [showEnded, setShowEnded] = useState(true);
    const [running, setRunning] = useState(false);

    const refresh = async () => {
        try {
            agents.putAll(await conn.request('proc.list', { all: true }));
        } catch (err) {
            report(err);
        }
    };
    useEffect(() => { refresh(); }, [conn]);

    let list = [...agents.byId.values()];
    if (!showEnded) list = list.filter((a) => !ENDED.includes(a.state));
    const needle = filter.trim().toLowerCase();
    if (needle) list = list.filter((a) => COLUMNS.some((c) => String((c.text || c.value)(a)).toLowerCase().includes(needle)));
    const col = COLUMNS.find((c) => c.key === sort.key) || COLUMNS[0];
    list.sort((x, y) => {
        const a = col.value(x);
        const b = col.value(y);
        const r = col.numeric ? a - b : String(a).localeCompare(String(b), undefined, { numeric: true });
        return r * sort.dir || x.id.localeCompare(y.id);
    });
    const setSortKey = (key) => setSort((s) => (s.key === key ? { key, dir: -s.dir } : { key, dir: 1 }));
    const open = (a) => openWindow('process', { id: a.id }, `${displayName(a)} (${a.id})`);

    return html`<div class="processes">
        <div class="toolbar">
            <input type="search" placeholder="Filter" aria-label="Filter processes" data-testid="proc-filter" data-autofocus
                value=${filter} onInput=${(e) => setFilter(e.target.value)} />
            <label class="check"><input type="checkbox" checked=${showEnded} data-testid="proc-show-ended"
                onChange=${(e) => setShowEnded(e.target.checked)} /> ended</label>
            <button type="button" onClick=${refresh} data-testid="proc-refresh">Refresh</button>
            <button type="button" onClick=${() => agents.forgetEnded()} data-testid="proc-clear-ended"
                title="Remove the ended processes from this table">Clear ended</button>
            <span class="spacer"></span>
            <button type="button" class="primary" onClick=${() => setRunning(true)} data-testid="proc-run">Run…</button>
        </div>
        ${agents.error && html`<div class="errors"><div class="error" data-kind=${agents.error.kind}>
            ${agents.error.kind}: ${agents.error.message}</div></div>`}
        <${ErrorBar} errors=${errors} dismiss=${dismiss} />
        <div class="table-wrap">
            <table class="table" data-testid="proc-table">
                <thead><tr>
                    ${COLUMNS.map((c) => html`<th scope="col" class=${c.numeric ? 'num' : ''}
                        aria-sort=${sort.key === c.key ? (sort.dir > 0 ? 'ascending' : 'descending') : 'none'}>
                        <button type="button" class="sort" data-sort=${c.key} onClick=${() => setSortKey(c.key)}>
                            ${c.label}${sort.key === c.key ? (sort.dir > 0 ? ' ▲' : ' ▼') : ''}</button></th>`)}
                    <th scope="col"><span class="sr-only">Actions</span></th>
                </tr></thead>
                <tbody>
                    ${list.map((a) => html`<tr key=${a.id} data-agent=${a.id} data-state=${a.state} tabindex="0"
                            class=${'row-' + a.state} onClick=${() => open(a)}
                            onKeyDown=${(e) => { if (e.key === 'Enter' && e.target === e.currentTarget) open(a); }}>
                        <td class="mono">${a.id}</td>
                        <td class="prog" title=${`${a.program} ${joinArgs(a.args || [])}`}>${displayName(a)}
                            <span class="muted"> ${joinArgs(a.args || [])}</span></td>
                        <td>${a.runtime}</td>
                        <td>${a.user || ''}</td>
                        <td><span class=${'state state-' + a.state}>${a.state}</span></td>
                        <td class="num">${ENDED.includes(a.state) ? '' : (Number(a.cpu_percent) || 0).toFixed(0)}</td>
                        <td class="num">${ENDED.includes(a.state) ? '' : (Number(a.memory_mb) || 0).toFixed(0)}</td>
                        <td class="num">${formatDuration(a.uptime)}</td>
                        <td data-testid="exit">${exitText(a)}</td>
                        <td><${Actions} a=${a} conn=${conn} report=${report} /></td>
                    </tr>`)}
                </tbody>
            </table>
            ${list.length === 0 && html`<p class="muted pad">${agents.byId.size ? 'No process matches.' : 'No processes.'}</p>`}
        </div>
        ${running && html`<${RunDialog} conn=${conn} onClose=${() => setRunning(false)} />`}
    </div>`;
}

/** What the page asked proc.run for: the runtime's record names its own copy of a program from the tree. */
function asked(program, args, runtime) {
    return { program, args, runtime };
}

/** Start a program: its path, arguments, where (a live runtime or anywhere). */
export function RunDialog({ conn, program = '', args = [], runtime = null, onClose }) {
    useLive(runtimes, conn);
    const [prog, setProg] = useState(program);
    const [argText, setArgText] = useState(joinArgs(args));
    const [where, setWhere] = useState(runtime || '');
    const [tags, setTags] = useState('');
    const [busy, setBusy] = useState(false);
    const [errors, report, dismiss] = useErrors();
    const live = runtimes.live();
    const submit = async (ev) => {
        ev.preventDefault();
        if (!prog.trim()) return;
        setBusy(true);
        try {
            const info = await conn.request('proc.run', {
                program: prog.trim(),
                args: splitArgs(argText),
                runtime: where || null,
                tags: tags.split(',').map((t) => t.trim()).filter(Boolean),
            });
            agents.put(info, false);
            onClose();
            openWindow('process', { id: info.id, asked: asked(prog.trim(), splitArgs(argText), where || null) },
                `${displayName(info)} (${info.id})`);
        } catch (err) {
            report(err);
            setBusy(false);
        }
    };
    return html`<${Modal} title="Run a program" onClose=${onClose} testid="run-dialog">
        <form onSubmit=${submit} class="form">
            <label class="field">Program
                <input type="text" value=${prog} required data-testid="run-program" autofocus=${!program}
                    placeholder="/home/you/hello.py" onInput=${(e) => setProg(e.target.value)} /></label>
            <label class="field">Arguments
                <input type="text" value=${argText} data-testid="run-args" autofocus=${Boolean(program)}
                    onInput=${(e) => setArgText(e.target.value)} /></label>
            <label class="field">Runtime
                <select value=${where} data-testid="run-runtime" onChange=${(e) => setWhere(e.target.value)}>
                    <option value="">anywhere (the scheduler picks)</option>
                    ${live.map((s) => html`<option value=${s.id}>${s.id}${s.leader ? ' (leader)' : ''}</option>`)}
                    ${where && !live.some((s) => s.id === where) && html`<option value=${where}>${where} (not live)</option>`}
                </select></label>
            <label class="field">Tags <span class="muted">(comma separated, optional)</span>
                <input type="text" value=${tags} data-testid="run-tags" onInput=${(e) => setTags(e.target.value)} /></label>
            <${ErrorBar} errors=${errors} dismiss=${dismiss} />
            <div class="buttons">
                <button type="button" onClick=${onClose}>Cancel</button>
                <button type="submit" class="primary" disabled=${busy} data-testid="run-submit">Run</button>
            </div>
        </form>
    <//>`;
}

// --- one process ------------------------------------------------------------------

const MAX_OUTPUT = 4 * 1024 * 1024;

/** The output of one agent, kept outside preact: appended to a <pre> as it comes. */
class OutputBuffer {
    constructor() {
        this.chunks = []; // [{stream, text}]
        this.size = 0;
        this.dropped = 0;
        this.pre = null;
        this.query = '';
        this.matches = 0;
        this.rebuildPending = false;
        this.onMatches = () => {};
    }

    attach(pre) {
        this.pre = pre;
        this.rebuild();
    }

    add(stream, text) {
        if (!text) return;
        const last = this.chunks[this.chunks.length - 1];
        if (last && last.stream === stream) last.text += text;
        else this.chunks.push({ stream, text });
        this.size += text.length;
        let trimmed = false;
        while (this.size > MAX_OUTPUT && this.chunks.length) {
            const first = this.chunks[0];
            const cut = Math.min(first.text.length, this.size - MAX_OUTPUT + 65536);
            first.text = first.text.slice(cut);
            this.size -= cut;
            this.dropped += cut;
            if (!first.text) this.chunks.shift();
            trimmed = true;
        }
        if (!this.pre) return;
        if (trimmed || this.query) {
            this.scheduleRebuild();
            return;
        }
        const node = this.pre.lastChild;
        if (node && node.dataset && node.dataset.stream === stream && node.firstChild) node.firstChild.appendData(text);
        else this.pre.appendChild(this.span(stream, text));
    }

    note(text) {
        this.add('note', text);
    }

    span(stream, text) {
        const el = document.createElement('span');
        el.className = `out-${stream}`;
        el.dataset.stream = stream;
        el.textContent = text;
        return el;
    }

    setQuery(q) {
        this.query = q;
        this.rebuild();
    }

    scheduleRebuild() {
        if (this.rebuildPending) return;
        this.rebuildPending = true;
        requestAnimationFrame(() => { this.rebuildPending = false; this.rebuild(); });
    }

    rebuild() {
        if (!this.pre) return;
        const frag = document.createDocumentFragment();
        if (this.dropped) frag.appendChild(this.span('note', `[${formatBytes(this.dropped)} of earlier output not kept here]\n`));
        const q = this.query.toLowerCase();
        let matches = 0;
        for (const c of this.chunks) {
            if (!q) {
                frag.appendChild(this.span(c.stream, c.text));
                continue;
            }
            const el = this.span(c.stream, '');
            const lower = c.text.toLowerCase();
            let at = 0;
            for (;;) {
                const i = lower.indexOf(q, at);
                if (i < 0) break;
                if (i > at) el.appendChild(document.createTextNode(c.text.slice(at, i)));
                const mark = document.createElement('mark');
                mark.textContent = c.text.slice(i, i + q.length);
                el.appendChild(mark);
                matches += 1;
                at = i + q.length;
            }
            if (at < c.text.length) el.appendChild(document.createTextNode(c.text.slice(at)));
            frag.appendChild(el);
        }
        this.pre.replaceChildren(frag);
        this.matches = matches;
        this.onMatches(matches);
    }

    text() {
        return this.chunks.filter((c) => c.stream !== 'note').map((c) => c.text).join('');
    }
}

export function ProcessWindow({ win, props, context }) {
    const { conn } = context;
    const id = props.id;
    const tick = useLive(agents, conn);
    useLive(runtimes, conn);
    const [errors, report, dismiss] = useErrors();
    const [follow, setFollow] = useState(true);
    const [query, setQuery] = useState('');
    const [matches, setMatches] = useState(0);
    const [ending, setEnding] = useState(null); // {status} | {error}
    const [stdin, setStdin] = useState('');
    const [editing, setEditing] = useState(false);
    const pre = useRef(null);
    const box = useRef(null);
    const out = useMemo(() => new OutputBuffer(), [id]);
    const followRef = useRef(follow);
    followRef.current = follow;
    const a = agents.byId.get(id);

    useEffect(() => {
        out.onMatches = setMatches;
        out.attach(pre.current);
    }, [out]);

    // the agent's record: from the channel, else ask (an ended agent after a reload)
    useEffect(() => {
        if (agents.byId.has(id)) return;
        conn.request('proc.list', { all: true }).then((list) => {
            agents.putAll(list);
            if (!agents.byId.has(id)) report({ kind: 'ESRCH', message: `no process ${id} (it may have ended long ago)` });
        }).catch(report);
    }, [id, conn]);

    useEffect(() => {
        let seen = false;
        const known = agents.byId.get(id);
        const endedBefore = Boolean(known && ENDED.includes(known.state));
        const off = conn.subscribe(`output:${id}`, (ev) => {
            seen = true;
            if (ev.error) {
                setEnding({ error: ev.error, kind: ev.kind, subscribe: Boolean(ev.subscribe) });
                out.note(`\n[output: ${ev.error}]\n`);
            } else if (ev.end) {
                if (!out.size && endedBefore) out.note('[the program had ended: its output is not kept, only its status]\n');
                setEnding({ status: ev.status });
                out.note(`\n[ended with status ${ev.status}]\n`);
            } else if (typeof ev.data === 'string') {
                out.add(ev.stream === 'stderr' ? 'stderr' : 'stdout', ev.data);
            }
            if (followRef.current && box.current) box.current.scrollTop = box.current.scrollHeight;
        });
        const offState = conn.onState((state) => {
            if (state === 'open' && seen) out.note('\n[reconnected]\n');
        });
        return () => { off(); offState(); };
    }, [id, conn]);

    useEffect(() => {
        if (a) win.setTitle(`${displayName(a)} (${a.id})`);
    }, [a && a.name, a && a.program]);

    useEffect(() => { out.setQuery(query); }, [query]);
    useEffect(() => {
        if (follow && box.current) box.current.scrollTop = box.current.scrollHeight;
    }, [follow]);

    const onScroll = () => {
        const el = box.current;
        const atEnd = el.scrollHeight - el.scrollTop - el.clientHeight < 8;
        if (!atEnd && followRef.current) setFollow(false);
    };

    const download = () => {
        const blob = new Blob([out.text()], { type: 'text/plain;charset=utf-8' });
        const url = URL.createObjectURL(blob);
        const link = document.createElement('a');
        link.href = url;
        link.download = `${a ? displayName(a) : 'output'}-${id}.log`;
        document.body.appendChild(link);
        link.click();
        link.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
    };

    const sendStdin = async (eof) => {
        try {
            await conn.request('proc.stdin', { id, data: eof ? '' : `${stdin}\n`, eof: Boolean(eof) });
            if (!eof) setStdin('');
            else out.note('[stdin closed]\n');
        } catch (err) {
            report(err);
        }
    };

    // the program as it was asked for (a path in the tree) when this page started it, else as the record says
    const again = props.asked || (a ? { program: a.program, args: a.args || [], runtime: a.runtime } : null);
    const runAgain = async () => {
        try {
            const info = await conn.request('proc.run', { program: again.program, args: again.args || [], runtime: a.runtime, tags: [] });
            agents.put(info, false);
            openWindow('process', { id: info.id, asked: { ...again, runtime: a.runtime } }, `${displayName(info)} (${info.id})`);
        } catch (err) {
            report(err);
        }
    };

    const h = agents.history.get(id) || { t: [], cpu: [], mem: [] };
    const ended = a ? ENDED.includes(a.state) : false;
    const status = a ? exitText(a) : '';
    return html`<div class="process" data-testid="process-window" data-agent-window=${id} data-state=${a ? a.state : 'unknown'}>
        <div class="proc-head">
            <div class="proc-info">
                ${a ? html`<span class="mono">${a.program} ${joinArgs(a.args || [])}</span>
                    <span>on <strong>${a.runtime}</strong></span>
                    <span class=${'state state-' + a.state} data-testid="process-state">${a.state}</span>
                    ${status && html`<span data-testid="process-exit">${status}</span>`}
                    <span class="muted">${a.user || ''}</span>` : html`<span class="muted">${id}</span>`}
            </div>
            <div class="proc-buttons">
                ${a && html`<${Actions} a=${a} conn=${conn} report=${report} />`}
                <button type="button" data-action="run-again" disabled=${!a} onClick=${runAgain}
                    title="Run the same program with the same arguments on the same runtime">Run again</button>
                <button type="button" data-action="run-edit" disabled=${!a} onClick=${() => setEditing(true)}
                    title="Change the arguments or the runtime first">Run…</button>
            </div>
        </div>
        <${ErrorBar} errors=${errors} dismiss=${dismiss} />
        ${ending && ending.error && html`<div class="errors" role="alert"><div class="error" data-testid="output-error">
            <span class="error-kind">${ending.kind || 'output'}</span>
            <span class="error-message">${ending.subscribe ? 'Cannot follow its output' : 'The output stream broke'}: ${ending.error}</span></div></div>`}
        ${ending && 'status' in ending && html`<div class="info" data-testid="output-end" data-status=${ending.status}>
            Ended with status ${ending.status}.</div>`}
        <${Chart} series=${[{ label: 'CPU', unit: '%' }, { label: 'memory', scale: 'y2', unit: ' MB' }]}
            data=${() => [h.t, h.cpu, h.mem]} tick=${tick} window=${0} height=${70} testid="process-chart" />
        <div class="toolbar">
            <label class="check"><input type="checkbox" checked=${follow} data-testid="output-follow"
                onChange=${(e) => setFollow(e.target.checked)} /> follow</label>
            <input type="search" placeholder="Search the output" aria-label="Search the output" data-testid="output-search"
                value=${query} onInput=${(e) => setQuery(e.target.value)} />
            ${query && html`<span class="muted" data-testid="output-matches">${matches} match${matches === 1 ? '' : 'es'}</span>`}
            <span class="spacer"></span>
            <button type="button" data-testid="output-download" onClick=${download}>Download</button>
        </div>
        <div class="output" ref=${box} onScroll=${onScroll} tabindex="0" aria-label="Output">
            <pre ref=${pre} data-testid="output" aria-live="off"></pre>
        </div>
        <form class="stdin" onSubmit=${(e) => { e.preventDefault(); sendStdin(false); }}>
            <input type="text" placeholder=${ended ? 'the process has ended' : 'a line for its standard input'} disabled=${ended}
                aria-label="Standard input" data-testid="stdin" value=${stdin} onInput=${(e) => setStdin(e.target.value)} />
            <button type="submit" disabled=${ended} data-testid="stdin-send">Send</button>
            <button type="button" disabled=${ended} data-testid="stdin-eof" onClick=${() => sendStdin(true)}
                title="Close its standard input">EOF</button>
        </form>
        ${editing && a && html`<${RunDialog} conn=${conn} program=${again.program} args=${again.args || []}
            runtime=${a.runtime} onClose=${() => setEditing(false)} />`}
    </div>`;
}
