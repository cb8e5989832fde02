// A small live line chart on uPlot: a time axis and one or two series.
import uPlot from '../vendor/uplot/uPlot.esm.js';
import { html, useEffect, useRef } from './ui.js';

const COLORS = ['#2f7de1', '#d9822b', '#2e9e5b', '#b0479a'];

/**
 * props:
 *   series: [{label, scale?, unit?}]  (up to two scales: 'y' on the left, 'y2' on the right)
 *   data(): [[t...], [v...], ...]      read at every tick
 *   tick: anything that changes when the data did
 *   window: seconds shown (a rolling x range ending now), or 0: all the data
 *   height: pixels; yMax: the y scale's least upper bound (100 for percentages)
 */
export function Chart({ series, data, tick, window: span = 60, height = 90, yMax = 0, testid = 'chart', label = '' }) {
    const box = useRef(null);
    const plot = useRef(null);

    useEffect(() => {
        const el = box.current;
        const width = Math.max(120, el.clientWidth || 300);
        const scales = { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(yMax, max * 1.1 || 1)] } };
        const pad = (x) => String(x).padStart(2, '0');
        // a rolling chart's x axis says how long ago: -60s ... now, at fixed places
        const xAxis = span
            ? { splits: (u) => [1, 0.75, 0.5, 0.25, 0].map((f) => u.scales.x.max - f * span),
                values: (u, splits) => splits.map((t) => { const ago = Math.round(u.scales.x.max - t); return ago <= 0 ? 'now' : `-${ago}s`; }) }
            : { values: (u, splits) => splits.map((t) => { const d = new Date(t * 1000); return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`; }) };
        const axes = [
            { stroke: '#667', grid: { stroke: '#e4e6eb', width: 1 }, ticks: { show: false }, size: 22, font: '10px system-ui',
                space: 70, ...xAxis },
            { stroke: '#667', grid: { stroke: '#e4e6eb', width: 1 }, ticks: { show: false }, size: 44, font: '10px system-ui',
                values: (u, vals) => vals.map((v) => v + (series[0].unit || '')) },
        ];
        const useY2 = series.some((s) => s.scale === 'y2');
        if (useY2) {
            scales.y2 = { range: (u, min, max) => [0, Math.max(1, max * 1.1)] };
            const s2 = series.find((s) => s.scale === 'y2');
            axes.push({ scale: 'y2', side: 1, stroke: '#667', grid: { show: false }, ticks: { show: false }, size: 52,
                font: '10px system-ui', values: (u, vals) => vals.map((v) => v + (s2.unit || '')) });
        }
        const opts = {
            width,
            height,
            legend: { show: false },
            cursor: { drag: { x: false, y: false } },
            scales,
            axes,
            series: [{}, ...series.map((s, i) => ({
                label: s.label,
                scale: s.scale || 'y',
                stroke: COLORS[i % COLORS.length],
                width: 1.5,
                fill: i === 0 ? 'rgba(47,125,225,0.12)' : undefined,
                spanGaps: false,
                points: { show: false },
            }))],
        };
        const u = new uPlot(opts, data(), el);
        plot.current = u;
        const ro = new ResizeObserver(() => {
            const w = Math.max(120, el.clientWidth);
            if (Math.abs(w - u.width) > 2) u.setSize({ width: w, height });
        });
        ro.observe(el);
        return () => {
            ro.disconnect();
            u.destroy();
            plot.current = null;
        };
    }, []);

    useEffect(() => {
        const u = plot.current;
        if (!u) return;
        const d = data();
        if (span) {
            const now = Date.now() / 1000;
            u.setData(d, false);
            u.setScale('x', { min: now - span, max: now });
        } else {
            u.setData(d, true);
        }
    }, [tick]);

    return html`<div class="chart" ref=${box} data-testid=${testid} role="img"
        aria-label=${label || series.map((s) => s.label).join(', ')}></div>`;
}
