// The page: check the session, show the login form or the desktop.
import { html, render, useState, useEffect, useRef } from './ui.js';
import * as api from './api.js';
import { Connection } from './ws.js';
import { registerKind, loadLayout, forgetWindows, WindowArea, Taskbar, openWindow, windows } from './wm.js';
import { resetLive } from './live.js';
import { ClusterWindow } from './cluster.js';
import { ProcessesWindow, ProcessWindow } from './processes.js';
import { TerminalWindow, forgetTerminalKeys } from './terminal.js';
import { FilesWindow, EditorWindow } from './files.js';
import { PipelinesWindow } from './pipelines.js';
import { DevicesWindow } from './devices.js';

/** The least n such that no window of *kind* is titled "PREFIX n". */
function freeNumber(list, kind, prefix) {
    const used = new Set(list.filter((w) => w.kind === kind).map((w) => w.title));
    let n = 1;
    while (used.has(`${prefix} ${n}`)) n++;
    return n;
}

registerKind('cluster', { title: 'Cluster', launch: 'Cluster', component: ClusterWindow, singleton: true, size: [760, 520] });
registerKind('processes', { title: 'Processes', launch: 'Processes', component: ProcessesWindow, singleton: true, size: [820, 460] });
registerKind('terminal', { title: (p, list) => `Terminal ${freeNumber(list, 'terminal', 'Terminal')}`, launch: 'Terminal', component: TerminalWindow, size: [720, 440] });
registerKind('files', { title: 'Files', launch: 'Files', component: FilesWindow, size: [760, 480] });
registerKind('pipelines', { title: 'Pipelines', launch: 'Pipelines', component: PipelinesWindow, singleton: true, size: [780, 480] });
registerKind('devices', { title: 'Devices', launch: 'Devices', component: DevicesWindow, singleton: true, size: [860, 560] });
registerKind('process', { title: (p) => `Process ${p.id || ''}`, component: ProcessWindow, key: (p) => p.id, size: [700, 500] });
registerKind('editor', { title: (p) => p.path || 'Editor', component: EditorWindow, key: (p) => p.path, size: [700, 500] });

const root = document.getElementById('app');
root.replaceChildren(); // the "Loading" line

function Login({ onLogin, notice }) {
    const [user, setUser] = useState('');
    const [password, setPassword] = useState('');
    const [error, setError] = useState('');
    const [busy, setBusy] = useState(false);
    const userField = useRef(null);
    useEffect(() => { userField.current && userField.current.focus(); }, []);
    const submit = async (ev) => {
        ev.preventDefault();
        if (busy) return;
        setBusy(true);
        setError('');
        try {
            const session = await api.login(user.trim(), password);
            setPassword('');
            onLogin(session);
        } catch (err) {
            setBusy(false);
            setPassword('');
            if (err instanceof api.HttpError && err.status === 401) setError('Login refused.');
            else if (err instanceof api.HttpError && err.status === 429) setError('Too many logins at once: wait a moment and try again.');
            else if (err instanceof api.HttpError && err.status) setError(`Login failed: ${err.message}`);
            else setError('Login failed: the runtime cannot be reached.');
        }
    };
    return html`<div class="login-screen">
        <form id="login-form" class="login" data-testid="login-form" onSubmit=${submit} aria-labelledby="login-title">
            <h1 id="login-title">OneOS</h1>
            <p class="login-sub">Log in with your OneOS user.</p>
            ${notice && html`<p class="notice" data-testid="login-notice">${notice}</p>`}
            <label class="field">User
                <input id="login-user" name="user" data-testid="login-user" ref=${userField} autocomplete="username"
                    autocapitalize="none" spellcheck="false" required value=${user} onInput=${(e) => setUser(e.target.value)} />
            </label>
            <label class="field">Password
                <input id="login-password" name="password" data-testid="login-password" type="password"
                    autocomplete="current-password" required value=${password} onInput=${(e) => setPassword(e.target.value)} />
            </label>
            <div id="login-error" class="login-error" data-testid="login-error" role="alert" aria-live="assertive">${error}</div>
            <button id="login-submit" data-testid="login-submit" type="submit" class="primary" disabled=${busy}>
                ${busy ? 'Logging in…' : 'Log in'}</button>
        </form>
    </div>`;
}

function Desktop({ session, conn, onLogout }) {
    const context = { session, conn };
    return html`<div class="desktop" data-testid="desktop-root">
        <${WindowArea} context=${context} />
        <${Taskbar} conn=${conn} session=${session} onLogout=${onLogout} />
    </div>`;
}

let conn = null;

function showLogin(notice = '') {
    document.title = 'OneOS — log in';
    render(html`<${Login} onLogin=${startDesktop} notice=${notice} />`, root);
}

function startDesktop(session) {
    document.title = `OneOS — ${session.user}@${session.runtime || ''}`;
    conn = new Connection({
        checkSession: async () => Boolean(await api.getSession()),
        onLoggedOut: () => endDesktop('Your session ended. Log in again.'),
    });
    loadLayout(session.user);
    render(null, root);
    render(html`<${Desktop} session=${session} conn=${conn} onLogout=${logout} />`, root);
    conn.start();
    if (windows.get().length === 0) openWindow('cluster');
}

function endDesktop(notice) {
    if (conn) conn.stop();
    conn = null;
    render(null, root); // unmounts the windows: terminals closed, channels released
    forgetWindows();
    resetLive();
    showLogin(notice);
}

async function logout() {
    forgetTerminalKeys();
    // close terminals and channels while the websocket is still open
    const c = conn;
    render(null, root);
    try {
        await api.logout();
    } catch {
        /* the session is gone anyway */
    }
    if (c) c.stop();
    conn = null;
    forgetWindows();
    resetLive();
    showLogin('You logged out.');
}

async function boot() {
    try {
        const session = await api.getSession();
        if (session) startDesktop(session);
        else showLogin();
    } catch {
        showLogin();
    }
}

boot();
