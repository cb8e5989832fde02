// The Files window (browse, upload, download, make, rename, delete, run) and the
// text editor window.
import {
    html, useState, useEffect, useRef, useErrors, ErrorBar, ConfirmDialog, PromptDialog,
    formatBytes, formatTime, formatMode, basename, dirname, joinPath,
} from './ui.js';
import * as api from './api.js';
import { openWindow } from './wm.js';
import { RunDialog } from './processes.js';

function Breadcrumbs({ path, go }) {
    const parts = path.split('/').filter(Boolean);
    const crumbs = [{ name: '/', path: '/' }];
    parts.forEach((p, i) => crumbs.push({ name: p, path: '/' + parts.slice(0, i + 1).join('/') }));
    return html`<nav class="crumbs" aria-label="Path" data-testid="breadcrumbs">
        ${crumbs.map((c, i) => html`${i > 1 ? html`<span class="sep" aria-hidden="true">/</span>` : ''}
            <button type="button" class="crumb" data-crumb=${c.path} aria-current=${i === crumbs.length - 1 ? 'location' : null}
                onClick=${() => go(c.path)}>${c.name}</button>`)}
    </nav>`;
}

export function FilesWindow({ win, props, context }) {
    const { conn, session } = context;
    const [path, setPath] = useState(props.path || `/home/${session.user}`);
    const [entries, setEntries] = useState(null);
    const [errors, report, dismiss, clear] = useErrors();
    const [dialog, setDialog] = useState(null);
    const [uploads, setUploads] = useState([]); // [{id, name, loaded, total, state, error, abort}]
    const [dragging, setDragging] = useState(false);
    const picker = useRef(null);
    const loadSeq = useRef(0);

    const load = async (p = path, fallback = true) => {
        const seq = ++loadSeq.current;
        try {
            const list = await conn.request('fs.list', { path: p });
            if (seq !== loadSeq.current) return;
            list.sort((a, b) => (a.kind === 'dir') !== (b.kind === 'dir') ? (a.kind === 'dir' ? -1 : 1) : a.name.localeCompare(b.name));
            setEntries(list);
            setPath(p);
            win.setProps({ path: p });
            win.setTitle(`Files — ${p}`);
        } catch (err) {
            if (seq !== loadSeq.current) return;
            if (fallback && p !== '/' && (err.kind === 'ENOENT' || err.kind === 'ENOTDIR')) {
                load(dirname(p), p !== `/home/${session.user}`);
                return;
            }
            report(err);
            if (entries === null) setEntries([]);
        }
    };
    useEffect(() => { load(path); }, [conn]);

    const go = (p) => { clear(); load(p, false); };
    const openEntry = (e) => {
        if (e.kind === 'dir') go(e.path);
        else openWindow('editor', { path: e.path });
    };

    const doUpload = (files) => {
        const dir = path;
        for (const file of files) {
            const id = `${Date.now()}-${Math.random().toString(36).slice(2)}`;
            const target = joinPath(dir, file.name);
            const { promise, abort } = api.upload(target, file, (loaded, total) => {
                setUploads((list) => list.map((u) => (u.id === id ? { ...u, loaded, total } : u)));
            });
            setUploads((list) => [...list, { id, name: file.name, loaded: 0, total: file.size, state: 'sending', abort }]);
            promise.then(() => {
                setUploads((list) => list.map((u) => (u.id === id ? { ...u, state: 'done', loaded: u.total } : u)));
                setTimeout(() => setUploads((list) => list.filter((u) => u.id !== id)), 4000);
                if (dir === path) load(dir);
            }, (err) => {
                setUploads((list) => list.map((u) => (u.id === id ? { ...u, state: 'failed', error: err.message } : u)));
            });
        }
    };

    const onDrop = (ev) => {
        ev.preventDefault();
        setDragging(false);
        const files = [...(ev.dataTransfer ? ev.dataTransfer.files : [])];
        if (files.length) doUpload(files);
    };
    const onDragOver = (ev) => {
        if (ev.dataTransfer && [...ev.dataTransfer.types].includes('Files')) {
            ev.preventDefault();
            ev.dataTransfer.dropEffect = 'copy';
            if (!dragging) setDragging(true);
        }
    };

    const mkdir = () => setDialog({ type: 'prompt', title: 'New folder', label: `Name (in ${path})`, okText: 'Create',
        onOk: async (name) => { await conn.request('fs.mkdir', { path: joinPath(path, name) }); load(path); } });
    const newFile = () => setDialog({ type: 'prompt', title: 'New file', label: `Name (in ${path})`, okText: 'Edit',
        onOk: async (name) => { openWindow('editor', { path: joinPath(path, name), isNew: true }); } });
    const rename = (e) => setDialog({ type: 'prompt', title: `Rename ${e.name}`, label: 'New name or path', value: e.name,
        okText: 'Rename', onOk: async (name) => {
            const dst = name.startsWith('/') ? name : joinPath(dirname(e.path), name);
            await conn.request('fs.rename', { src: e.path, dst });
            load(path);
        } });
    const remove = (e) => setDialog({ type: 'confirm', title: `Delete ${e.name}?`, danger: true, okText: 'Delete',
        message: e.kind === 'dir' ? `Delete the folder ${e.path} and everything in it?` : `Delete ${e.path}?`,
        onOk: async () => {
            try {
                await conn.request('fs.remove', { path: e.path, recursive: e.kind === 'dir' });
                load(path);
            } catch (err) {
                report(err);
            }
        } });

    return html`<div class=${'files' + (dragging ? ' dragging' : '')} onDragOver=${onDragOver}
            onDragLeave=${(e) => { if (!e.currentTarget.contains(e.relatedTarget)) setDragging(false); }} onDrop=${onDrop}>
        <div class="toolbar">
            <button type="button" data-testid="files-up" disabled=${path === '/'} onClick=${() => go(dirname(path))}
                aria-label="Up one folder" title="Up">↑</button>
            <${Breadcrumbs} path=${path} go=${go} />
            <span class="spacer"></span>
            <button type="button" data-testid="files-refresh" onClick=${() => load(path)}>Refresh</button>
            <button type="button" data-testid="files-mkdir" onClick=${mkdir}>New folder</button>
            <button type="button" data-testid="files-newfile" onClick=${newFile}>New file</button>
            <button type="button" data-testid="files-upload" onClick=${() => picker.current.click()}>Upload…</button>
            <input type="file" multiple hidden ref=${picker} data-testid="files-picker"
                onChange=${(e) => { doUpload([...e.target.files]); e.target.value = ''; }} />
        </div>
        <${ErrorBar} errors=${errors} dismiss=${dismiss} />
        ${uploads.length > 0 && html`<ul class="uploads" aria-label="Uploads">
            ${uploads.map((u) => html`<li key=${u.id} data-upload=${u.name} data-upload-state=${u.state}>
                <span class="upload-name">${u.name}</span>
                <progress max=${u.total || 1} value=${u.loaded}></progress>
                <span class="muted">${u.state === 'failed' ? u.error : u.state === 'done' ? 'done' : `${formatBytes(u.loaded)} / ${formatBytes(u.total)}`}</span>
                ${u.state === 'sending' && html`<button type="button" class="icon" aria-label=${`Cancel ${u.name}`} onClick=${() => u.abort()}>×</button>`}
                ${u.state === 'failed' && html`<button type="button" class="icon" aria-label="Dismiss"
                    onClick=${() => setUploads((l) => l.filter((x) => x.id !== u.id))}>×</button>`}
            </li>`)}
        </ul>`}
        <div class="table-wrap" data-testid="files-list" data-path-shown=${path}>
            <table class="table">
                <thead><tr><th scope="col">Name</th><th scope="col" class="num">Size</th><th scope="col">Mode</th>
                    <th scope="col">Owner</th><th scope="col">Modified</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
                <tbody>
                    ${(entries || []).map((e) => html`<tr key=${e.path} data-path=${e.path} data-kind=${e.kind}>
                        <td><button type="button" class="link" onClick=${() => openEntry(e)}
                            title=${e.kind === 'dir' ? 'Open the folder' : 'Edit'}>
                            <span class=${'icon-' + e.kind} aria-hidden="true"></span>${e.name}${e.kind === 'dir' ? '/' : ''}</button></td>
                        <td class="num">${e.kind === 'dir' ? '' : formatBytes(e.size)}</td>
                        <td class="mono">${formatMode(e.mode, e.kind)}</td>
                        <td>${e.owner}</td>
                        <td>${formatTime(e.mtime)}</td>
                        <td class="row-actions">
                            ${e.kind !== 'dir' && html`<a class="button" href=${api.downloadUrl(e.path)} download=${e.name}
                                data-action="download" aria-label=${`Download ${e.name}`}>Download</a>
                            <button type="button" data-action="run" aria-label=${`Run ${e.name}`}
                                onClick=${() => setDialog({ type: 'run', program: e.path })}>Run…</button>`}
                            <button type="button" data-action="rename" aria-label=${`Rename ${e.name}`} onClick=${() => rename(e)}>Rename</button>
                            <button type="button" class="danger" data-action="delete" aria-label=${`Delete ${e.name}`}
                                onClick=${() => remove(e)}>Delete</button>
                        </td>
                    </tr>`)}
                </tbody>
            </table>
            ${entries && entries.length === 0 && html`<p class="muted pad">Empty folder. Drop files here to upload them.</p>`}
            ${entries === null && html`<p class="muted pad">Loading…</p>`}
        </div>
        ${dialog && dialog.type === 'prompt' && html`<${PromptDialog} ...${dialog} onClose=${() => setDialog(null)} />`}
        ${dialog && dialog.type === 'confirm' && html`<${ConfirmDialog} ...${dialog} onClose=${() => setDialog(null)} />`}
        ${dialog && dialog.type === 'run' && html`<${RunDialog} conn=${conn} program=${dialog.program} onClose=${() => setDialog(null)} />`}
    </div>`;
}

// --- the editor -------------------------------------------------------------------

export function EditorWindow({ win, props, context }) {
    const { conn } = context;
    const path = props.path;
    const [text, setText] = useState('');
    const [mtime, setMtime] = useState(null);
    const [loaded, setLoaded] = useState(false);
    const [dirty, setDirty] = useState(false);
    const [stale, setStale] = useState(false);
    const [unreadable, setUnreadable] = useState(null);
    const [saving, setSaving] = useState(false);
    const [savedAt, setSavedAt] = useState(null);
    const [confirmClose, setConfirmClose] = useState(false);
    const [errors, report, dismiss, clear] = useErrors();
    const dirtyRef = useRef(false);
    dirtyRef.current = dirty;

    const load = async () => {
        clear();
        setStale(false);
        setUnreadable(null);
        try {
            const r = await conn.request('fs.read', { path });
            setText(r.text);
            setMtime(r.mtime);
            setDirty(false);
        } catch (err) {
            if (err.kind === 'ENOENT' && props.isNew) {
                setText('');
                setMtime(null);
            } else if (err.kind === 'EFBIG' || err.kind === 'EINVAL') {
                setUnreadable(err.message);
            } else {
                report(err);
            }
        }
        setLoaded(true);
    };
    useEffect(() => { load(); }, [path, conn]);

    useEffect(() => {
        win.setTitle(`${dirty ? '• ' : ''}${basename(path)} — ${dirname(path)}`);
    }, [dirty, path]);

    useEffect(() => {
        win.setGuard(() => {
            if (!dirtyRef.current) return true;
            setConfirmClose(true);
            return false;
        });
        return () => win.setGuard(null);
    }, []);

    const save = async () => {
        if (saving || unreadable) return;
        setSaving(true);
        try {
            const r = await conn.request('fs.write', { path, text, mtime });
            setMtime(r.mtime);
            setDirty(false);
            setStale(false);
            setSavedAt(new Date());
            if (props.isNew) win.setProps({ isNew: false });
        } catch (err) {
            if (err.kind === 'ESTALE') setStale(true);
            else report(err);
        }
        setSaving(false);
    };

    const onKeyDown = (ev) => {
        if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === 's') {
            ev.preventDefault();
            save();
        }
    };

    return html`<div class="editor" onKeyDown=${onKeyDown}>
        <div class="toolbar">
            <span class="mono path" title=${path}>${path}</span>
            <span class="spacer"></span>
            <span class="muted" data-testid="editor-state">${!loaded ? 'loading…' : dirty ? 'changed' : savedAt ? `saved ${savedAt.toLocaleTimeString()}` : mtime == null ? 'new file' : 'unchanged'}</span>
            <button type="button" data-testid="editor-reload" onClick=${load}>Reload</button>
            <a class="button" href=${api.downloadUrl(path)} download=${basename(path)}>Download</a>
            <button type="button" class="primary" data-testid="editor-save" disabled=${saving || !loaded || Boolean(unreadable)}
                onClick=${save} title="Save (Ctrl+S)">Save</button>
        </div>
        <${ErrorBar} errors=${errors} dismiss=${dismiss} />
        ${stale && html`<div class="errors" role="alert"><div class="error" data-testid="editor-stale" data-kind="ESTALE">
            <span class="error-message">The file changed since you opened it. Reload it (your changes here are lost),
                or copy your text first.</span>
            <button type="button" data-testid="editor-stale-reload" onClick=${load}>Reload</button>
        </div></div>`}
        ${unreadable ? html`<div class="info pad" data-testid="editor-unreadable">This file cannot be edited here (${unreadable}).
                <a href=${api.downloadUrl(path)} download=${basename(path)}>Download it</a> instead.</div>`
            : html`<textarea class="editor-text" data-testid="editor-text" data-autofocus spellcheck="false" aria-label=${`Contents of ${path}`}
                value=${text} disabled=${!loaded} onInput=${(e) => { setText(e.target.value); setDirty(true); }}></textarea>`}
        ${confirmClose && html`<${ConfirmDialog} title="Discard your changes?" danger okText="Discard"
            message=${`${path} has changes that are not saved.`} onOk=${() => win.close(true)}
            onClose=${() => setConfirmClose(false)} />`}
    </div>`;
}
