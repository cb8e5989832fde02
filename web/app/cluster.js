// The Cluster window: every runtime with its role, liveness, load and a CPU chart,
// and the grid's CPU over the last minute.
import { html, formatMB } from './ui.js';
import { runtimes, useLive, HISTORY_S } from './live.js';
import { Chart } from './chart.js';

function Badge({ kind, children, title }) {
    return html`<span class=${'badge badge-' + kind} title=${title || ''}>${children}</span>`;
}

function Meter({ value, max, label }) {
    const pct = max > 0 ? Math.min(100, (value / max) * 100) : 0;
    return html`<span class="meter" role="meter" aria-label=${label} aria-valuemin="0" aria-valuemax=${max || 0}
            aria-valuenow=${Math.round(value || 0)}>
        <span class="meter-fill" style=${{ width: `${pct.toFixed(1)}%` }}></span>
    </span>`;
}

function RuntimeCard({ s, tick }) {
    const alive = s.state === 'alive';
    const h = runtimes.history.get(s.id) || { t: [], cpu: [] };
    const limit = Number(s.memory_limit_mb) || 0;
    const agentsMem = Number(s.agents_memory_mb) || 0;
    return html`<article class=${'runtime' + (alive ? '' : ' dead')} data-runtime=${s.id} data-state=${s.state}
            data-leader=${s.leader && alive ? 'true' : 'false'} data-kernel=${s.kernel ? 'true' : 'false'}
            aria-label=${`Runtime ${s.id}, ${s.state}`}>
        <header class="runtime-head">
            <h3 class="runtime-id">${s.id}</h3>
            ${s.leader && alive && html`<${Badge} kind="leader" title="the kernel leader">leader<//>`}
            ${s.kernel && html`<${Badge} kind="kernel" title="runs the kernel services">kernel<//>`}
            ${s.fs_serving && alive && html`<${Badge} kind="fs" title="serves the file tree">fs<//>`}
            <span class=${'state state-' + s.state} data-testid="runtime-state">${s.state}</span>
        </header>
        <dl class="runtime-facts">
            <div><dt>CPU</dt><dd data-testid="runtime-cpu">${alive ? `${(Number(s.cpu_percent) || 0).toFixed(0)} %` : '-'}</dd></div>
            <div><dt>Agents' memory</dt><dd data-testid="runtime-memory">
                ${alive ? html`${formatMB(agentsMem)} / ${limit ? formatMB(limit) : '∞'}
                    ${limit > 0 && html`<${Meter} value=${agentsMem} max=${limit} label="agents' memory against the limit" />`}` : '-'}
            </dd></div>
            <div><dt>Runtime</dt><dd>${alive ? `${formatMB(s.rss_mb)} rss, host ${formatMB(s.memory_used_mb)} / ${formatMB(s.memory_total_mb)}` : '-'}</dd></div>
            <div><dt>Agents</dt><dd data-testid="runtime-agents">${alive ? s.agents || 0 : '-'}</dd></div>
            <div><dt>Address</dt><dd class="mono">${s.address || '-'}</dd></div>
            ${s.desktop && alive && html`<div><dt>Desktop</dt><dd class="mono"><a href=${s.desktop} target="_blank"
                rel="noopener noreferrer" data-testid="runtime-desktop">${s.desktop}</a></dd></div>`}
            ${s.tags && s.tags.length > 0 && html`<div><dt>Tags</dt><dd class="chips">${s.tags.map((t) => html`<span class="chip">${t}</span>`)}</dd></div>`}
            ${s.interpreters && s.interpreters.length > 0 && html`<div><dt>Interpreters</dt>
                <dd class="chips">${s.interpreters.map((t) => html`<span class="chip">${t}</span>`)}</dd></div>`}
        </dl>
        <${Chart} series=${[{ label: `CPU of ${s.id}`, unit: '%' }]} data=${() => [h.t, h.cpu]} tick=${tick}
            window=${HISTORY_S} height=${70} yMax=${100} testid="runtime-chart" />
    </article>`;
}

export function ClusterWindow({ context }) {
    const tick = useLive(runtimes, context.conn);
    const list = runtimes.list();
    const live = list.filter((s) => s.state === 'alive');
    const leader = live.find((s) => s.leader);
    const g = runtimes.grid;
    return html`<div class="cluster">
        ${runtimes.error && html`<div class="errors" role="alert"><div class="error" data-testid="window-error"
            data-kind=${runtimes.error.kind}><span class="error-kind">${runtimes.error.kind}</span>
            <span class="error-message">${runtimes.error.message}</span></div></div>`}
        <section class="grid-summary" aria-label="The grid">
            <div class="summary-facts">
                <span data-testid="live-count"><strong>${live.length}</strong> live of ${list.length} runtime${list.length === 1 ? '' : 's'}</span>
                <span>leader: <strong data-testid="leader">${leader ? leader.id : 'none'}</strong></span>
                <span>agents: <strong>${live.reduce((n, s) => n + (Number(s.agents) || 0), 0)}</strong></span>
                <span>CPU: <strong>${live.reduce((n, s) => n + (Number(s.cpu_percent) || 0), 0).toFixed(0)} %</strong></span>
            </div>
            <${Chart} series=${[{ label: 'grid CPU (sum)', unit: '%' }, { label: 'agents', scale: 'y2' }]}
                data=${() => [g.t, g.cpu, g.agents]} tick=${tick} window=${HISTORY_S} height=${110} yMax=${100}
                testid="grid-chart" />
            <p class="legend"><span class="swatch s0"></span>CPU % (sum of the runtimes)
                <span class="swatch s1"></span>agents (right axis) — last ${HISTORY_S} s</p>
        </section>
        <div class="runtimes" data-testid="runtime-list">
            ${list.length === 0 && html`<p class="muted">Waiting for the runtimes' statuses…</p>`}
            ${list.map((s) => html`<${RuntimeCard} key=${s.id} s=${s} tick=${tick} />`)}
        </div>
    </div>`;
}
